"""The in-process engine: the model lives in the calling process (the embedded default).

Each device's worker slots and decode slots are OS file locks (engine/devices.py), so the
plan's limit holds across every run process of this host, whatever launched it.
"""

from __future__ import annotations

import gc
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

from opentr_pipeline.engine.devices import DeviceLeases, check_vram, cuda_free_bytes, describe_plan, plan_devices
from opentr_pipeline.engine.isolation import DecodeLimits
from opentr_pipeline.engine.transcription import (
    Transcript,
    TranscriptionOptions,
    load_audio,
    model_location,
    resolve_batch_size,
    transcribe_on,
)
from opentr_pipeline.settings import Settings

log = logging.getLogger("opentr")
OnStart = Callable[[str], None]
OnDone = Callable[[str, "Transcript | Exception"], None]


@dataclass(frozen=True)
class FileToTranscribe:
    key: str
    uri: str  # where it is read from, and what error messages call it


def read_local(uri: str) -> ContextManager[Path]:
    """The default way to reach a file: it is already local."""
    return nullcontext(Path(uri))


@dataclass(frozen=True)
class InProcessEngine:
    settings: Settings
    lock_dir: str

    def transcribe_files(
        self,
        files: list[FileToTranscribe],
        fetch: Callable[[str], ContextManager[Path]] = read_local,
        on_start: OnStart | None = None,
        on_done: OnDone | None = None,
    ) -> dict[str, Transcript | Exception]:
        """Transcribe every file; each result is a Transcript or the exception that file raised.

        Per file: take a decode slot, fetch and decode, take a worker lease, give the decode
        slot back, transcribe. Both kinds of slot are per device and held across processes, so
        a host holds at most 2 x workers decoded files (one being transcribed and one ready per
        worker), however many runs wait, and a download happens only when its file is next.
        `on_done` runs the moment a file is finished, so its output is written before the
        others finish.
        """
        decoding = self.settings.decoding
        plan = plan_devices(self.settings.devices)
        leases = DeviceLeases(self.lock_dir, plan)
        decode_slots = DeviceLeases(self.lock_dir, plan, kind="decode")
        log.info("device plan: %s", describe_plan(plan))
        limits = DecodeLimits.from_settings(self.settings)

        def run_one(item: FileToTranscribe) -> Transcript | Exception:
            if on_start:
                on_start(item.key)
            try:
                with decode_slots.acquire():
                    with fetch(item.uri) as path:
                        audio = load_audio(path, item.uri, limits=limits)
                    held = leases.take()  # before the decode slot goes back: audio is always counted
                try:
                    device = held.lease.device
                    result: Transcript | Exception = transcribe_on(
                        decoding, device, held.lease.worker, audio, TranscriptionOptions.from_settings(decoding, device))
                finally:
                    held.release()
            except Exception as error:  # one file's failure stays that file's
                result = error
            if on_done:
                on_done(item.key, result)
            return result

        for device in plan:
            if device.kind == "cuda":
                check_vram(device, model_location(decoding.whisper_model), resolve_batch_size(decoding.batch_size, device),
                           cuda_free_bytes(device.index), speakers=decoding.voice_prints,
                           multilingual=model_location(decoding.multilingual_model) if decoding.routes_languages else None)
        # faster-whisper's decode_audio runs gc.collect() for every file; in a Dagster process
        # that walks ~180k objects (120-180 ms, pausing the other workers). Freezing what exists
        # now takes it down to ~20 ms (measured by the benchmark).
        gc.freeze()
        threads = 2 * sum(device.workers for device in plan)  # one transcribing, one decoding ahead
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="opentr-worker") as pool:
            results = list(pool.map(run_one, files))
        return {item.key: result for item, result in zip(files, results)}
