"""The storage resource: where uploads are read and outputs are written."""

from __future__ import annotations

import dagster as dg

from opentr_pipeline.settings import Settings
from opentr_pipeline.storage import Storage


class MediaStore(dg.ConfigurableResource):
    upload_uri: str
    storage_uri: str
    max_duration_s: int = 4 * 3600
    max_file_bytes: int = 20 * 2**30

    @classmethod
    def from_settings(cls, settings: Settings) -> "MediaStore":
        return cls(upload_uri=settings.upload_uri, storage_uri=settings.storage_uri,
                   max_duration_s=settings.max_duration_s, max_file_bytes=settings.max_file_bytes)

    def outputs(self) -> Storage:
        return Storage(self.storage_uri)
