"""The upload area: list media files under UPLOAD_URI and map partition keys to sources.

UPLOAD_URI is a local folder or `s3://bucket/prefix`, read through fsspec; nested folders
count. On S3, s3fs (through botocore) honours the usual AWS variables, AWS_ENDPOINT_URL
included, so MinIO and other S3-compatible stores work without extra settings.

Each registered key gets a small record in storage (`sources/<key>.json`) with the source URI,
so a key always maps back to its object even when the key had to be shortened.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Iterable

import fsspec

from opentr_pipeline.intake.keys import key_for_path, key_path
from opentr_pipeline.storage import SourceError, Storage, info_version, is_under, with_retries

MEDIA_SUFFIXES = {
    ".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".oga", ".opus", ".wma", ".aiff", ".aif",
    ".webm", ".mp4", ".m4v", ".mkv", ".mov", ".avi", ".mpeg", ".mpg", ".ts", ".3gp", ".amr",
}
PARTIAL_SUFFIXES = {".part", ".tmp", ".crdownload", ".partial", ".download"}


@dataclass(frozen=True)
class Upload:
    key: str
    relative_path: str
    uri: str
    size: int
    mtime: float
    change: str = ""  # storage.info_change: moves on a rewrite that puts size and mtime back

    @property
    def version(self) -> list:
        return [self.size, self.mtime, self.change]

    def record(self) -> dict:
        return {"partition_key": self.key, "relative_path": self.relative_path,
                "source_uri": self.uri, "size": self.size, "mtime": self.mtime, "change": self.change}


def same_version(stored: list | dict | None, upload: "Upload | list") -> bool:
    """Whether a stored version ([size, mtime, change] or a source record) is this upload's (or
    this version's). One stored before the change token existed compares on size and mtime alone."""
    version = upload.version if isinstance(upload, Upload) else list(upload)
    if isinstance(stored, dict):
        stored = [stored.get("size"), stored.get("mtime"), stored.get("change")]
    if not stored:
        return False
    if len(stored) < 3 or stored[2] is None:
        return list(stored[:2]) == version[:2]
    return list(stored) == version


@dataclass
class UploadListing:
    """One look at the upload area: media files, and the names that are not (yet) media."""

    uploads: list[Upload] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)  # still being written: temporary names
    not_media: list[str] = field(default_factory=list)  # finished files with a non-media name
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it cannot be taken


def _link_target(path: str) -> str:
    try:
        return repr(os.readlink(path))
    except OSError:
        return "somewhere unreadable"


SPECIAL_FILES = [  # (test, what it is, why it is not opened)
    (stat.S_ISFIFO, "a named pipe (FIFO)", "reading one blocks until something writes to it"),
    (stat.S_ISSOCK, "a socket", "it holds no recording"),
    (stat.S_ISCHR, "a character device", "it holds no recording, and reading one may never end"),
    (stat.S_ISBLK, "a block device", "it is a whole disk or partition, not a recording"),
]


def special_file_reason(mode: int | None) -> str | None:
    """Why a name in a local upload folder that is no regular file is left alone, never opened."""
    for test, what, why in SPECIAL_FILES:
        if mode is not None and test(mode):
            return f"{what}, not a regular file: not opened ({why})"
    return None


def is_partial(relative_path: str) -> bool:
    path = PurePosixPath(relative_path)
    return path.suffix.lower() in PARTIAL_SUFFIXES or any(p.startswith(".") for p in path.parts)


def is_media_name(relative_path: str) -> bool:
    return PurePosixPath(relative_path).suffix.lower() in MEDIA_SUFFIXES


def scan_uploads(upload_uri: str) -> UploadListing:
    """Every file under the upload area, nested folders too, sorted by path.

    The listing is always fresh: fsspec keeps filesystem objects (and s3fs their directory
    listings) for the life of the process, and the sensor lists the same prefix every tick.
    """
    fs, root = fsspec.core.url_to_fs(upload_uri)
    root = root.rstrip("/")

    def find() -> dict:
        fs.invalidate_cache(root)
        return fs.find(root, detail=True)

    try:
        found = with_retries(find, f"listing {upload_uri}")
    except FileNotFoundError:
        return UploadListing()
    protocol = upload_uri.split("://", 1)[0] + "://" if "://" in upload_uri else ""
    listing = UploadListing()
    taken: dict[str, str] = {}  # key -> the path that has it: two objects never share a key
    for path, info in sorted(found.items()):
        relative = path[len(root) + 1 :] if path.startswith(root + "/") else path
        if info.get("islink"):  # fsspec lists a local link as "other" and does not follow it
            listing.skipped[relative] = (f"a symbolic link (to {_link_target(path)}), not followed: a link can "
                                         "lead out of the upload area; move or copy the file itself in")
            continue
        if not protocol and info.get("type") == "other":  # fsspec's word for FIFOs, sockets, devices
            listing.skipped[relative] = special_file_reason(info.get("mode")) or "not a regular file: not opened"
            continue
        if info.get("type") != "file" or path.endswith("/"):
            continue  # S3 "folder" marker objects
        if not protocol and not os.access(path, os.R_OK):
            listing.skipped[relative] = ("not readable by this user (permission denied): make it readable "
                                         "(chmod a+r) and it is taken")
            continue
        if is_partial(relative):
            listing.partial.append(relative)
        elif not is_media_name(relative):
            listing.not_media.append(relative)
        else:
            try:  # one odd name is reported, never allowed to stop the listing
                upload = Upload(key_for_path(relative), relative, f"{protocol}{path}", *info_version(info))
            except Exception as error:
                listing.skipped[relative] = f"cannot be read as an upload ({error})"
                continue
            if upload.key in taken:
                listing.skipped[relative] = f"its partition key {upload.key} is taken by {taken[upload.key]!r}"
                continue
            taken[upload.key] = relative
            listing.uploads.append(upload)
    return listing


def source_path(key: str) -> str:
    return key_path("sources", key)


def register_sources(storage: Storage, uploads: Iterable[Upload]) -> None:
    """Many source records at once: a thousand new uploads must not mean a thousand serial writes.

    ASCII JSON: a name that is not valid UTF-8 survives as `\\udcXX` escapes and reads back
    to the same bytes."""
    storage.write_many({source_path(u.key): json.dumps(u.record(), indent=2).encode() for u in uploads})


def source_uri(storage: Storage, upload_uri: str, key: str) -> str:
    """The object behind a key: its source record, or for a key typed by hand, a relative path.

    Either way it must lie under UPLOAD_URI: a typed key or an edited record cannot make the
    pipeline read another file or a URL."""
    record = storage.read_json_or_none(source_path(key))
    uri = record["source_uri"] if record else f"{upload_uri.rstrip('/')}/{key}"
    if not is_under(upload_uri, uri):
        raise SourceError(f"{key}: its source {uri!r} is not under UPLOAD_URI ({upload_uri}); not read")
    return uri
