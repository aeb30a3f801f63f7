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
from opentr_pipeline.settings import DecodingSettings, Settings

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
    """Runs transcriptions on the planned devices, `workers` at a time per device.

    With no broker (the embedded default) the model lives in the run process; with
    OPENTR_BROKER_URL set, each file goes to the resident worker of a device (workers.py).
    """

    # The flat variables of settings.Settings, so the UI's resource page shows what runs.
    settings: dict[str, str] = {}
    lock_dir: str = ""

    @classmethod
    def from_settings(cls, settings: Settings, lock_dir: str | None = None) -> "GpuExecutor":
        return cls(settings=settings.to_env(),
                   lock_dir=lock_dir or str(Path(settings.dagster_home) / "gpu-leases"))

    @classmethod
    def from_env(cls, environ: dict[str, str], lock_dir: str) -> "GpuExecutor":
        """From variables alone (tests and benchmarks), the process environment aside."""
        return cls.from_settings(Settings.from_env(environ), lock_dir)

    @property
    def config(self) -> Settings:
        return Settings.from_env(self.settings)

    def plan(self) -> list[DevicePlan]:
        return plan_devices(self.config.devices)

    def total_workers(self) -> int:
        """Slots the `gpu` pool admits: the live resident workers' if any, else this host's plan."""
        engine = self.config.engine
        if engine.resident:
            from opentr_pipeline.workers import live_engines

            slots = sum(live["slots"] for live in live_engines(engine))
            if slots:
                return slots
        return sum(device.workers for device in self.plan())

    def options(self) -> TranscriptionOptions:
        decoding = self.config.decoding
        return TranscriptionOptions(beam_size=decoding.beam_size, batch_size=decoding.batch_size,
                                    vad_filter=decoding.vad_filter, language=decoding.language)

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
        settings = self.config
        if settings.engine.resident:
            from opentr_pipeline.workers import submit_files

            return submit_files(settings, files, on_start, on_done)
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
                    result: Transcript | Exception = transcribe_on(
                        settings.decoding, held.lease.device, held.lease.worker, audio, options)
                finally:
                    held.release()
            except Exception as error:  # one file's failure stays that file's
                result = error
            if on_done:
                on_done(item.key, result)
            return result

        for device in plan:
            if device.kind == "cuda":
                check_vram(device, model_location(settings.decoding.whisper_model), options.batch_size,
                           cuda_free_bytes(device.index))
        # faster-whisper's decode_audio runs gc.collect() for every file; in a Dagster process
        # that walks ~180k objects (120-180 ms, pausing the other workers). Freezing what exists
        # now takes it down to ~20 ms (measured by the benchmark).
        gc.freeze()
        threads = 2 * sum(device.workers for device in plan)  # one transcribing, one decoding ahead
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="opentr-worker") as pool:
            results = list(pool.map(run_one, files))
        return {item.key: result for item, result in zip(files, results)}



def transcribe_on(decoding: DecodingSettings, device: DevicePlan, worker: int, audio: DecodedAudio,
                  options: TranscriptionOptions) -> Transcript:
    """Transcribe with this process's model for the device; out of memory halves the batch, down to 1."""
    compute_type = resolve_compute_type(decoding.whisper_compute_type, device.kind)
    model = MODELS.get(decoding.whisper_model, device, compute_type)
    while True:
        try:
            return transcribe(
                model, audio, options,
                model_name=decoding.whisper_model, compute_type=compute_type,
                device=device.label, worker=worker,
            )
        except RuntimeError as error:
            if is_missing_cuda_library(error):
                raise RuntimeError(f"{device.label}: {error}. {CUDA_LIBRARY_HINT}") from None
            if not is_out_of_memory(error):
                raise
            if options.batch_size <= 1:
                raise RuntimeError(
                    f"{device.label} ran out of memory even at batch size 1; "
                    f"lower GPU_SCALE_WORKERS or use a smaller model ({error})"
                ) from None
            smaller = max(1, options.batch_size // 2)
            log.warning("%s out of memory at batch %d; retrying at batch %d",
                        device.label, options.batch_size, smaller)
            options = replace(options, batch_size=smaller)
