"""The upload area: list media files under UPLOAD_URI and map partition keys to sources.

Each registered key gets a small record in storage (`sources/<key>.json`) with the source URI,
so a key always maps back to its object even when the key had to be shortened.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

import fsspec

from opentr_pipeline.core.keys import key_for_path, storage_name
from opentr_pipeline.core.media import MEDIA_SUFFIXES
from opentr_pipeline.storage import Storage

PARTIAL_SUFFIXES = {".part", ".tmp", ".crdownload", ".partial", ".download"}


@dataclass(frozen=True)
class Upload:
    key: str
    relative_path: str
    uri: str
    size: int
    mtime: float

    def record(self) -> dict:
        return {"partition_key": self.key, "relative_path": self.relative_path,
                "source_uri": self.uri, "size": self.size, "mtime": self.mtime}


def _mtime(info: dict) -> float:
    value = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or 0
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def is_partial(relative_path: str) -> bool:
    path = PurePosixPath(relative_path)
    return path.suffix.lower() in PARTIAL_SUFFIXES or any(p.startswith(".") for p in path.parts)


def is_media_name(relative_path: str) -> bool:
    return PurePosixPath(relative_path).suffix.lower() in MEDIA_SUFFIXES


def list_uploads(upload_uri: str) -> tuple[list[Upload], list[str]]:
    """Every file under the upload area (nested folders too): media uploads, and skipped names."""
    fs, root = fsspec.core.url_to_fs(upload_uri)
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return [], []
    protocol = upload_uri.split("://", 1)[0] + "://" if "://" in upload_uri else ""
    uploads, skipped = [], []
    for path, info in sorted(found.items()):
        if info.get("type") != "file":
            continue
        relative = path[len(root.rstrip("/")) + 1 :] if path.startswith(root.rstrip("/")) else path
        if is_partial(relative) or not is_media_name(relative):
            skipped.append(relative)
            continue
        uri = f"{protocol}{path}" if protocol else path
        uploads.append(Upload(key_for_path(relative), relative, uri, int(info.get("size") or 0), _mtime(info)))
    return uploads, skipped


def register_source(storage: Storage, upload: Upload) -> None:
    storage.write_json(f"sources/{storage_name(upload.key)}.json", upload.record())


def source_uri(storage: Storage, upload_uri: str, key: str) -> str:
    """The object behind a key: its source record, or for a key typed by hand, a relative path."""
    record = storage.read_json_or_none(f"sources/{storage_name(key)}.json")
    if record:
        return record["source_uri"]
    return f"{upload_uri.rstrip('/')}/{key.lstrip('/')}"
