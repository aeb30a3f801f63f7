"""The GPU executor resource: every transcription runs through here.

It owns the device plan, one shared model per process and device, and the per-device lease
that caps concurrent transcriptions at the plan's worker count across runs and processes.
"""

from __future__ import annotations

import gc
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, ContextManager

import dagster as dg

from opentr_pipeline.core.devices import (
    DeviceLeases,
    DevicePlan,
    check_vram,
    cuda_free_bytes,
    describe_plan,
    plan_devices,
)
from opentr_pipeline.core.transcription import (
    ModelCache,
    Transcript,
    DecodedAudio,
    TranscriptionOptions,
    load_audio,
    model_location,
    resolve_compute_type,
    transcribe,
)
from opentr_pipeline.settings import BUNDLED_MODEL, Settings

log = logging.getLogger("opentr")
MODELS = ModelCache()  # process-wide: a run step loads each model once, whatever it transcribes


def is_out_of_memory(error: Exception) -> bool:
    return "out of memory" in str(error).lower()


# CTranslate2 opens cuBLAS at the first transcription, not at model load, and its message
# ("Library libcublas.so.12 is not found or cannot be loaded") does not say what to install.
CUDA_LIBRARY_HINT = (
    "CTranslate2 4.x needs CUDA 12's cuBLAS (a CUDA 13 PyTorch does not bring it): "
    "pip install nvidia-cublas-cu12 and put its lib folder on LD_LIBRARY_PATH "
    "(README, 'On a GPU host'), or set WHISPER_DEVICE=cpu"
)


def is_missing_cuda_library(error: Exception) -> bool:
    text = str(error)
    return "Library lib" in text and ("not found" in text or "cannot be loaded" in text)


@dataclass(frozen=True)
class FileToTranscribe:
    key: str
    uri: str  # where it is read from, and what error messages call it


def read_local(uri: str) -> ContextManager[Path]:
    """The default way to reach a file: it is already local."""
    return nullcontext(Path(uri))


class GpuExecutor(dg.ConfigurableResource):
    """Runs transcriptions on the planned devices, `workers` at a time per device."""

    gpu_scale_enabled: bool = False
    gpu_scale_device_id: int = 0
    gpu_scale_workers: int = 1
    gpu_scale_default_worker: bool = False
    gpu_device_id: int = 0
    whisper_device: str = "auto"
    whisper_model: str = BUNDLED_MODEL
    whisper_compute_type: str = "auto"
    beam_size: int = 5
    batch_size: int = 8
    vad_filter: bool = True
    language: str = ""
    lock_dir: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> "GpuExecutor":
        return cls(
            gpu_scale_enabled=settings.gpu_scale_enabled,
            gpu_scale_device_id=settings.gpu_scale_device_id,
            gpu_scale_workers=settings.gpu_scale_workers,
            gpu_scale_default_worker=settings.gpu_scale_default_worker,
            gpu_device_id=settings.gpu_device_id,
            whisper_device=settings.whisper_device,
            whisper_model=settings.whisper_model,
            whisper_compute_type=settings.whisper_compute_type,
            beam_size=settings.beam_size,
            batch_size=settings.batch_size,
            vad_filter=settings.vad_filter,
            language=settings.language or "",
            lock_dir=str(Path(settings.dagster_home) / "gpu-leases"),
        )

    def plan(self) -> list[DevicePlan]:
        return plan_devices(self)

    def total_workers(self) -> int:
        return sum(device.workers for device in self.plan())

    def options(self) -> TranscriptionOptions:
        return TranscriptionOptions(
            beam_size=self.beam_size,
            batch_size=self.batch_size,
            vad_filter=self.vad_filter,
            language=self.language or None,
        )

    def transcribe_files(
        self,
        files: list[FileToTranscribe],
        fetch: Callable[[str], ContextManager[Path]] = read_local,
        on_start: Callable[[str], None] | None = None,
        on_done: Callable[[str, Transcript | Exception], None] | None = None,
    ) -> dict[str, Transcript | Exception]:
        """Transcribe every file; each result is a Transcript or the exception that file raised.

        Per file: take a decode slot, fetch and decode, take a worker lease, give the decode
        slot back, transcribe. Both kinds of slot are per device and held across processes, so
        a host holds at most 2 x workers decoded files (one being transcribed and one ready per
        worker), however many runs wait, and a download happens only when its file is next.
        `on_done` runs the moment a file is finished, so its output is written before the
        others finish.
        """
        plan = self.plan()
        lock_dir = self.lock_dir or ".gpu-leases"
        leases = DeviceLeases(lock_dir, plan)
        decode_slots = DeviceLeases(lock_dir, plan, kind="decode")
        options = self.options()
        log.info("device plan: %s", describe_plan(plan))

        def run_one(item: FileToTranscribe) -> Transcript | Exception:
            if on_start:
                on_start(item.key)
            try:
                with decode_slots.acquire():
                    with fetch(item.uri) as path:
                        audio = load_audio(path, item.uri)
                    held = leases.take()  # before the decode slot goes back: audio is always counted
                try:
                    result: Transcript | Exception = self._transcribe_on(held.lease, audio, options)
                finally:
                    held.release()
            except Exception as error:  # one file's failure stays that file's
                result = error
            if on_done:
                on_done(item.key, result)
            return result

        for device in plan:
            if device.kind == "cuda":
                check_vram(device, model_location(self.whisper_model), self.batch_size,
                           cuda_free_bytes(device.index))
        # faster-whisper's decode_audio runs gc.collect() for every file; in a Dagster process
        # that walks ~180k objects (120-180 ms, pausing the other workers). Freezing what exists
        # now takes it down to ~20 ms (measured by the benchmark).
        gc.freeze()
        threads = 2 * sum(device.workers for device in plan)  # one transcribing, one decoding ahead
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="opentr-worker") as pool:
            results = list(pool.map(run_one, files))
        return {item.key: result for item, result in zip(files, results)}

    def _transcribe_on(self, lease, audio: DecodedAudio, options: TranscriptionOptions) -> Transcript:
        """Transcribe on the leased device; out of memory retries with half the batch, down to 1."""
        compute_type = resolve_compute_type(self.whisper_compute_type, lease.device.kind)
        model = MODELS.get(self.whisper_model, lease.device, compute_type)
        while True:
            try:
                return transcribe(
                    model, audio, options,
                    model_name=self.whisper_model, compute_type=compute_type,
                    device=lease.device.label, worker=lease.worker,
                )
            except RuntimeError as error:
                if is_missing_cuda_library(error):
                    raise RuntimeError(f"{lease.device.label}: {error}. {CUDA_LIBRARY_HINT}") from None
                if not is_out_of_memory(error):
                    raise
                if options.batch_size <= 1:
                    raise RuntimeError(
                        f"{lease.device.label} ran out of memory even at batch size 1; "
                        f"lower GPU_SCALE_WORKERS or use a smaller model ({error})"
                    ) from None
                smaller = max(1, options.batch_size // 2)
                log.warning("%s out of memory at batch %d; retrying at batch %d",
                            lease.device.label, options.batch_size, smaller)
                options = replace(options, batch_size=smaller)
