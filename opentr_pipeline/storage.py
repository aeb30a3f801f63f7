"""Where inputs come from and outputs go: a local folder or an S3 prefix, through fsspec.

Outputs are written atomically (a temporary name, then a rename; on S3 a single PUT), so a
crash mid-write never leaves a half file that a later run would trust.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import fsspec


class Storage:
    def __init__(self, root_uri: str):
        self.root_uri = root_uri.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.root_uri)
        self.is_local = "file" in self.fs.protocol  # a str or a tuple of names

    def uri(self, relative: str) -> str:
        return f"{self.root_uri}/{relative}"

    def _path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def exists(self, relative: str) -> bool:
        return self.fs.exists(self._path(relative))

    def read_bytes(self, relative: str) -> bytes:
        return self.fs.cat_file(self._path(relative))

    def read_json(self, relative: str) -> dict:
        return json.loads(self.read_bytes(relative))

    def read_json_or_none(self, relative: str) -> dict | None:
        try:
            return self.read_json(relative)
        except FileNotFoundError:
            return None

    def write_bytes(self, relative: str, data: bytes) -> str:
        path = self._path(relative)
        if self.is_local:
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=folder, prefix=".", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temporary, path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        else:
            self.fs.pipe_file(path, data)  # one PUT: readers see the old object or the new one
        return self.uri(relative)

    def write_many(self, files: Mapping[str, bytes]) -> None:
        """Write many small files with the same atomic semantics, concurrently.

        Each local write waits for its fsync, so a thousand serial writes take seconds; in a pool
        they overlap. On S3, s3fs sends the PUTs concurrently in one call.
        """
        if not files:
            return
        if self.is_local:
            with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
                list(pool.map(lambda item: self.write_bytes(*item), files.items()))
        else:
            self.fs.pipe({self._path(relative): data for relative, data in files.items()})

    def write_text(self, relative: str, text: str) -> str:
        return self.write_bytes(relative, text.encode("utf-8"))

    def write_json(self, relative: str, value: dict) -> str:
        return self.write_text(relative, json.dumps(value, indent=2, ensure_ascii=False))

    def delete(self, relative: str) -> None:
        try:
            self.fs.rm_file(self._path(relative))
        except FileNotFoundError:
            pass

    def list_json(self, folder: str) -> list[dict]:
        # s3fs caches directory listings per process; other processes may have written since.
        self.fs.invalidate_cache(self._path(folder))
        try:
            paths = self.fs.glob(self._path(f"{folder}/*.json"))
        except FileNotFoundError:
            return []
        return [json.loads(self.fs.cat_file(p)) for p in sorted(paths)]

    @contextmanager
    def local_copy(self, uri: str) -> Iterator[Path]:
        """A local path for any URI: the file itself when local, else a temporary download."""
        fs, path = fsspec.core.url_to_fs(uri)
        if "file" in fs.protocol:
            yield Path(path)
            return
        suffix = Path(path).suffix
        folder = Path(tempfile.gettempdir()) / "opentr-downloads"
        folder.mkdir(exist_ok=True)
        local = folder / f"{uuid.uuid4().hex}{suffix}"
        try:
            fs.get_file(path, str(local))
            yield local
        finally:
            local.unlink(missing_ok=True)
