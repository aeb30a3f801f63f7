"""Which devices take work, how many workers each, and a hard per-device limit across processes.

The plan follows OpenTranscribe's variables (GPU_SCALE_ENABLED, GPU_SCALE_DEVICE_ID,
GPU_SCALE_WORKERS, GPU_SCALE_DEFAULT_WORKER, GPU_DEVICE_ID), except that here the switch
really switches. Without CUDA the same plan runs on the CPU, so every path is testable here.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from opentr_pipeline.settings import MAX_WORKERS_PER_DEVICE, DeviceSettings, SettingsError


@dataclass(frozen=True)
class DevicePlan:
    """One device and the number of transcriptions it may run at once."""

    kind: str  # "cuda" or "cpu"
    index: int
    workers: int
    cpu_threads: int  # CTranslate2 intra-op threads per worker
    per_core: bool = False  # the CPU default: one one-thread worker per core, GPU_SCALE_* unset

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.index}"


def cuda_device_count() -> int:
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count()
    except Exception:  # no CUDA runtime at all
        return 0


CPU_WORKERS_PER_CORE = 4  # past this, CPU "workers" are a typo (1000 on 2 cores), not a plan


def plan_devices(
    settings: DeviceSettings, cuda_count: int | None = None, cpu_count: int | None = None
) -> list[DevicePlan]:
    """Turn the settings into devices and worker counts, or say which variable is wrong."""
    cuda_count = cuda_device_count() if cuda_count is None else cuda_count
    cpu_count = (os.cpu_count() or 1) if cpu_count is None else cpu_count
    if settings.whisper_device == "cuda" and cuda_count == 0:
        raise SettingsError("WHISPER_DEVICE='cuda': no CUDA device is visible on this machine")
    kind = "cuda" if settings.whisper_device != "cpu" and cuda_count > 0 else "cpu"

    workers_by_index: dict[int, int] = {}
    if settings.gpu_scale_enabled:
        workers_by_index[settings.gpu_scale_device_id] = settings.gpu_scale_workers
        if settings.gpu_scale_default_worker:
            index = settings.gpu_device_id
            workers_by_index[index] = workers_by_index.get(index, 0) + 1
    else:
        # No GPU: every core a one-thread worker (`make bench`: 1.65-1.82x one worker holding every
        # thread, for a pile and for a single file alike). A GPU: one worker until GPU_SCALE_* says more.
        workers_by_index[settings.gpu_device_id] = min(cpu_count, MAX_WORKERS_PER_DEVICE) if kind == "cpu" else 1

    if kind == "cuda":
        variables = {settings.gpu_device_id: "GPU_DEVICE_ID"}
        if settings.gpu_scale_enabled:
            variables[settings.gpu_scale_device_id] = "GPU_SCALE_DEVICE_ID"
        for index in workers_by_index:
            if index >= cuda_count:
                raise SettingsError(
                    f"{variables.get(index, 'GPU_DEVICE_ID')}={index}: this machine has "
                    f"{cuda_count} CUDA device(s), numbered 0 to {cuda_count - 1}"
                )
    total = sum(workers_by_index.values())
    if kind == "cpu" and total > CPU_WORKERS_PER_CORE * cpu_count:
        raise SettingsError(f"GPU_SCALE_WORKERS={settings.gpu_scale_workers}: {total} workers on the CPU, "
                            f"which has {cpu_count} core(s); use at most {CPU_WORKERS_PER_CORE * cpu_count} "
                            f"(about {cpu_count} is fastest: more only queue behind each other)")
    threads = max(1, cpu_count // total) if kind == "cpu" else max(1, min(4, cpu_count // total))
    per_core = kind == "cpu" and not settings.gpu_scale_enabled
    return [DevicePlan(kind, index, n, threads, per_core) for index, n in sorted(workers_by_index.items())]


def describe_plan(plan: Sequence[DevicePlan]) -> str:
    parts = [f"{p.label} x{p.workers} worker(s), {p.cpu_threads} thread(s) each" for p in plan]
    why = (" (no GPU: one worker per core, the default; GPU_SCALE_ENABLED=true with GPU_SCALE_WORKERS sets another)"
           if any(p.per_core for p in plan) else "")
    return f"{sum(p.workers for p in plan)} worker(s): " + "; ".join(parts) + why


@dataclass(frozen=True)
class Lease:
    device: DevicePlan
    worker: int


@dataclass
class HeldLease:
    lease: Lease
    fd: int

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


class DeviceLeases:
    """At most `workers` holders per device, across threads and processes.

    Each worker slot is an OS file lock (flock) under `lock_dir`: the kernel releases it when the
    holder's process dies, so a crash never leaves a slot taken. `kind` names a separate set of
    slots of the same sizes (the transcription workers, or the files decoded ahead for them).
    """

    def __init__(self, lock_dir: str | Path, plan: Sequence[DevicePlan], kind: str = "worker"):
        self.lock_dir = Path(lock_dir)
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        self.plan = list(plan)
        self.kind = kind

    def _try(self, device: DevicePlan, worker: int) -> int | None:
        path = self.lock_dir / f"{device.kind}{device.index}-{self.kind}{worker}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EAGAIN, errno.EACCES):
                return None
            raise
        return fd

    def take(self, poll_s: float = 0.05, timeout_s: float | None = None) -> HeldLease:
        """Wait for a free slot on any planned device (first device first); `release()` it."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            for device in self.plan:
                for worker in range(device.workers):
                    fd = self._try(device, worker)
                    if fd is not None:
                        return HeldLease(Lease(device, worker), fd)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no free {self.kind} on {describe_plan(self.plan)} in {timeout_s} s")
            time.sleep(poll_s)

    @contextmanager
    def acquire(self, poll_s: float = 0.05, timeout_s: float | None = None) -> Iterator[Lease]:
        held = self.take(poll_s, timeout_s)
        try:
            yield held.lease
        finally:
            held.release()


# Approximate float16 weight sizes of the faster-whisper models, for the VRAM check before a
# download has happened (a local folder is measured instead).
# Matched in this order: "large-v3-turbo" is a turbo, "distil-large-v3" a distil.
MODEL_BYTES = {
    "distil-large": 1.51e9, "distil-medium": 0.79e9, "distil-small": 0.34e9, "turbo": 1.62e9,
    "large": 3.09e9, "medium": 1.53e9, "small": 484e6, "base": 145e6, "tiny": 75e6,
}
GIB = 1024**3
# The speaker model beside Whisper (engine/voices.py, on by default): torch's CUDA context (about
# 0.4 GB) and CAM++ at a batch of 64 windows, once per process; the GPU proof measures the peak.
VOICE_MODEL_BYTES = 0.6e9


def model_bytes(name_or_path: str) -> float:
    path = Path(name_or_path)
    if (path / "model.bin").is_file():
        return float((path / "model.bin").stat().st_size)
    lowered = name_or_path.lower()
    for stem in MODEL_BYTES:
        if stem in lowered:
            return MODEL_BYTES[stem]
    return MODEL_BYTES["large"]  # unknown: assume the largest, refuse rather than crash


def worker_bytes(weights: float, batch_size: int) -> float:
    """Activations, beam state and CUDA workspace of one concurrent transcription.

    Estimated as half the weights (at least 300 MB) per batch of 8 segments, which matches the
    peak usage faster-whisper reports for batched decoding within a margin that errs high.
    """
    return max(300e6, 0.5 * weights) * max(1, batch_size) / 8


def workers_that_fit(free: float, weights: float, batch_size: int) -> int:
    return max(0, int((free - weights) // worker_bytes(weights, batch_size)))


class DeviceMemoryError(RuntimeError):
    """The planned workers do not fit in the device's free memory."""


RUN_PROCESS_NOTE = ("every run process holds a model of its own: OPENTR_RUNS_AT_ONCE=1 keeps `opentr run` "
                    "to one, and a resident worker (OPENTR_BROKER_URL) holds one for all runs")
WORKER_NOTE = "this resident worker holds one model for all its slots"


def check_vram(device: DevicePlan, model: str, batch_size: int, free_bytes: float,
               note: str = RUN_PROCESS_NOTE, speakers: bool = False, multilingual: str | None = None) -> None:
    """Refuse, with the number that would fit, before CTranslate2 runs out of memory mid-batch.
    With `speakers`, the speaker model sits beside Whisper in the same memory; so does the
    `multilingual` model that speech not in English goes to."""
    weights = model_bytes(model) + (VOICE_MODEL_BYTES if speakers else 0.0) + (model_bytes(multilingual) if multilingual else 0.0)
    per_worker = worker_bytes(max(model_bytes(model), model_bytes(multilingual) if multilingual else 0.0), batch_size)
    need = weights + device.workers * per_worker
    if need <= free_bytes:
        return
    fit = max(0, int((free_bytes - weights) // per_worker))
    advice = f"set GPU_SCALE_WORKERS={fit}" if fit else "use a smaller model or free the GPU"
    beside = [what for what, there in (("the speaker model", speakers), (multilingual and Path(multilingual).name, multilingual)) if there]
    raise DeviceMemoryError(
        f"{device.label}: {device.workers} worker(s) of {Path(model).name} need about "
        f"{need / GIB:.1f} GiB ({weights / GIB:.1f} GiB weights{' and ' + ' and '.join(beside) if beside else ''} + "
        f"{per_worker / GIB:.2f} GiB per worker at batch {batch_size}), "
        f"but only {free_bytes / GIB:.1f} GiB is free: at most {fit} worker(s) fit; {advice} "
        f"({note})"
    )


def cuda_free_bytes(index: int) -> float:
    import torch

    free, _total = torch.cuda.mem_get_info(index)
    return float(free)
