"""The resources: where files live (MediaStore), and the GPU executor that every transcription
goes through (GpuExecutor), a thin adapter over the engine wing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, ContextManager

import dagster as dg

from opentr_pipeline.engine.client import ResidentEngine
from opentr_pipeline.engine.devices import DevicePlan, plan_devices
from opentr_pipeline.engine.in_process import FileToTranscribe, InProcessEngine, OnDone, OnStart, read_local
from opentr_pipeline.engine.isolation import DecodeLimits
from opentr_pipeline.engine.slots import device_slots, total_slots
from opentr_pipeline.engine.transcription import Transcript
from opentr_pipeline.outputs.search import SearchEngine, open_search
from opentr_pipeline.settings import MASK, Settings, mask_url
from opentr_pipeline.storage import Storage


class MediaStore(dg.ConfigurableResource):
    upload_uri: str
    storage_uri: str
    search_uri: str = ""
    search_meaning: bool = True
    max_duration_s: int = 4 * 3600
    max_file_bytes: int = 20 * 2**30
    settle_wait_s: int = 600
    decode_memory_mb: int = 4096
    decode_stall_s: float = 120.0

    @classmethod
    def from_settings(cls, settings: Settings) -> "MediaStore":
        return cls(upload_uri=settings.upload_uri, storage_uri=settings.storage_uri,
                   search_uri=settings.search_uri, search_meaning=settings.search_meaning, max_duration_s=settings.max_duration_s, max_file_bytes=settings.max_file_bytes,
                   settle_wait_s=settings.settle_wait_s, decode_memory_mb=settings.decode_memory_mb,
                   decode_stall_s=settings.decode_stall_s)

    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(self.decode_memory_mb, self.decode_stall_s)

    def outputs(self) -> Storage:
        return Storage(self.storage_uri)

    def search(self) -> SearchEngine:
        return open_search(self.search_uri, self.storage_uri, meaning=self.search_meaning)


class GpuExecutor(dg.ConfigurableResource):
    """Runs transcriptions on the planned devices, `workers` at a time per device.

    With no broker (the embedded default) the model lives in the run process; with
    OPENTR_BROKER_URL set, each file goes to the resident worker of a device.
    """

    # The flat variables of settings.Settings, so the UI's resource page shows what runs.
    settings: dict[str, str] = {}
    lock_dir: str = ""

    @classmethod
    def from_settings(cls, settings: Settings, lock_dir: str | None = None) -> "GpuExecutor":
        shown = settings.to_env()
        # The UI shows this config: a broker password stays out of it; runs read the real URL
        # from their environment, which they inherit from the daemon or `opentr run`.
        shown["OPENTR_BROKER_URL"] = mask_url(shown.get("OPENTR_BROKER_URL", ""))
        return cls(settings=shown, lock_dir=lock_dir or str(Path(settings.dagster_home) / "gpu-leases"))

    @classmethod
    def from_env(cls, environ: dict[str, str], lock_dir: str) -> "GpuExecutor":
        """From variables alone (tests and benchmarks), the process environment aside."""
        return cls.from_settings(Settings.from_env(environ), lock_dir)

    @property
    def config(self) -> Settings:
        values = dict(self.settings)
        if MASK in values.get("OPENTR_BROKER_URL", ""):
            values["OPENTR_BROKER_URL"] = os.environ.get("OPENTR_BROKER_URL", "")
        return Settings.from_env(values)

    def plan(self) -> list[DevicePlan]:
        return plan_devices(self.config.devices)

    def total_workers(self) -> int:
        return total_slots(self.config)

    def device_limits(self) -> dict[str, int]:
        return device_slots(self.config)

    def engine(self) -> InProcessEngine | ResidentEngine:
        settings = self.config
        if settings.engine.resident:
            return ResidentEngine(settings)
        return InProcessEngine(settings, self.lock_dir or ".gpu-leases")

    def transcribe_files(self, files: list[FileToTranscribe],
                         fetch: Callable[[str], ContextManager[Path]] = read_local,
                         on_start: OnStart | None = None,
                         on_done: OnDone | None = None) -> dict[str, Transcript | Exception]:
        return self.engine().transcribe_files(files, fetch, on_start, on_done)
