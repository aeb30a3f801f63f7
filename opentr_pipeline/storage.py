"""Where inputs come from and outputs go: a local folder or an S3 prefix, through fsspec.

Outputs are written atomically (a temporary name, then a rename; on S3 a single PUT), so a
crash mid-write never leaves a half file that a later run would trust. Network and storage
hiccups (connection refused or reset, timeouts, S3 5xx and throttling) are retried with backoff
for up to `retry_s` seconds; anything else (a missing file, a denied permission) fails at once.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping, TypeVar

import fsspec

from opentr_pipeline.records import damage

log = logging.getLogger("opentr")
T = TypeVar("T")
RETRY_S = 60.0  # how long a storage outage may last before the file's work fails (and is rerun)
_TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT,
                     errno.EPIPE, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EAGAIN}
_TRANSIENT_NAMES = {  # botocore, aiohttp, urllib3 and fsspec types, matched by name: no imports
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "HTTPClientError", "ResponseParserError", "IncompleteRead", "ClientPayloadError",
    "ClientConnectorError", "ClientOSError", "ServerDisconnectedError", "FSTimeoutError",
}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "RequestTimeout", "InternalError", "ServiceUnavailable"}


def is_transient(error: BaseException) -> bool:
    """A network or service hiccup that may pass, judged along the exception's whole chain."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return False
        if isinstance(error, (ConnectionError, TimeoutError)) or type(error).__name__ in _TRANSIENT_NAMES:
            return True
        if isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS:
            return True
        response = getattr(error, "response", None)
        if isinstance(response, dict):  # botocore ClientError
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if status >= 500 or response.get("Error", {}).get("Code") in _TRANSIENT_CODES:
                return True
        error = error.__cause__ or error.__context__
    return False


class StorageFull(OSError):
    """No space left where outputs go: named, transient (space can be freed), never a file's fault."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def info_mtime(info: dict) -> float:
    value = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or 0
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def info_change(info: dict) -> str:
    """What moves when an object's bytes may have changed though its size and mtime did not
    (`cp` then `touch -r`): a local file's inode and status-change time, which no tool sets
    back, or an object's ETag."""
    if info.get("ino") is not None and info.get("created") is not None:  # fsspec's local files
        return f"{info['ino']}:{info['created']!r}"
    return str(info.get("ETag") or info.get("etag") or "").strip('"')


def info_version(info: dict) -> list:
    """[size, mtime, change]: one version of a file, as a listing or a look at it gives it."""
    return [int(info.get("size") or 0), info_mtime(info), info_change(info)]


def with_retries(action: Callable[[], T], what: str, retry_s: float = RETRY_S) -> T:
    """Run `action`; on a transient error wait 0.5, 1, 2 ... 8 s and try again, for `retry_s`."""
    deadline = time.monotonic() + retry_s
    delay = 0.5
    while True:
        try:
            return action()
        except Exception as error:
            if not is_transient(error) or time.monotonic() + delay > deadline:
                raise
            log.warning("%s: %s; retrying in %.1f s", what, error, delay)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)


_DOWNLOADS: Path | None = None


def private_download_dir() -> Path:
    """This process's own folder for downloaded sources (mode 0700). A SIGKILLed process cannot
    clean up after itself, so the next process to make its folder removes those of dead pids."""
    global _DOWNLOADS
    if _DOWNLOADS is None or not _DOWNLOADS.is_dir():
        base = Path(tempfile.gettempdir())
        for stale in base.glob("opentr-downloads-*"):
            pid = stale.name.rsplit("-", 2)[-2]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(stale, ignore_errors=True)
        _DOWNLOADS = Path(tempfile.mkdtemp(prefix=f"opentr-downloads-{os.getpid()}-", dir=base))
    return _DOWNLOADS


def parse_record(relative: str, raw: bytes) -> tuple[dict | None, str | None]:
    """A record's bytes as a dict, or the reason they are none (records.py)."""
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        return None, f"not valid JSON, cut short or overwritten ({error})"
    reason = damage(relative, value)
    return (None, reason) if reason else (value, None)


class Storage:
    def __init__(self, root_uri: str, retry_s: float = RETRY_S):
        self.root_uri = root_uri.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.root_uri)
        self.is_local = "file" in self.fs.protocol  # a str or a tuple of names
        self.retry_s = retry_s
        self.damaged: dict[str, str] = {}  # uri -> why: records read as missing, for callers to show

    def _damaged(self, relative: str, reason: str) -> None:
        uri = self.uri(relative)
        if self.damaged.get(uri) != reason:
            log.warning("%s: a damaged record, read as missing: %s", uri, reason)
        self.damaged[uri] = reason

    def _retrying(self, action: Callable[[], T], what: str) -> T:
        return action() if self.is_local else with_retries(action, what, self.retry_s)

    def uri(self, relative: str) -> str:
        return f"{self.root_uri}/{relative}"

    def _path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def exists(self, relative: str) -> bool:
        return self._retrying(lambda: self.fs.exists(self._path(relative)), f"checking {self.uri(relative)}")

    def read_bytes(self, relative: str) -> bytes:
        return self._retrying(lambda: self.fs.cat_file(self._path(relative)), f"reading {self.uri(relative)}")

    def read_json(self, relative: str) -> dict:
        return json.loads(self.read_bytes(relative))

    def read_json_or_none(self, relative: str) -> dict | None:
        """The record at `relative`, checked against its kind's schema; None when it is missing or
        damaged (named in the log and in `damaged`): a damaged record is done again, not trusted."""
        try:
            raw = self.read_bytes(relative)
        except FileNotFoundError:
            return None
        value, reason = parse_record(relative, raw)
        if reason:
            self._damaged(relative, reason)
        return value

    def _put_local(self, relative: str, data: bytes, exclusive: bool = False) -> bool:
        """A complete temporary file, then one rename (or, exclusive, one hard link, which fails
        if the name exists): readers never see a part. False: exclusive and already there."""
        path = self._path(relative)
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        # Created 0666 less the umask, as other tools make files (mkstemp's 0600 kept
        # another service account, a web server or an indexer, from reading the outputs).
        temporary = os.path.join(folder, f".{uuid.uuid4().hex}.part")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            if not exclusive:
                os.replace(temporary, path)
                return True
            try:
                os.link(temporary, path)
            except FileExistsError:
                return False
            return True
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(error.errno, f"{self.uri(relative)}: no space left where outputs go "
                                  f"(STORAGE_URI {self.root_uri}); free some and run again: what "
                                  "finished stays finished") from None
            raise
        finally:
            Path(temporary).unlink(missing_ok=True)

    def write_bytes(self, relative: str, data: bytes) -> str:
        if self.is_local:
            self._put_local(relative, data)
        else:  # one PUT: readers see the old object or the new one, never a part
            self._retrying(lambda: self.fs.pipe_file(self._path(relative), data), f"writing {self.uri(relative)}")
        return self.uri(relative)

    def create_json(self, relative: str, value: dict) -> bool:
        """Write `value` only if nothing is at `relative` yet; True if this call made it. Of any
        number of processes or hosts racing for one name, exactly one gets True: a claim.
        Local: a hard link; S3: a conditional PUT (`If-None-Match: *`)."""
        data = json.dumps(value, indent=2).encode()
        if self.is_local:
            return self._put_local(relative, data, exclusive=True)

        def put() -> bool:
            try:
                self.fs.pipe_file(self._path(relative), data, mode="create")
            except FileExistsError:
                return False
            return True

        return self._retrying(put, f"creating {self.uri(relative)}")

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
            batch = {self._path(relative): data for relative, data in files.items()}
            self._retrying(lambda: self.fs.pipe(batch), f"writing {len(files)} file(s) under {self.root_uri}")

    def write_text(self, relative: str, text: str) -> str:
        return self.write_bytes(relative, text.encode("utf-8"))

    def write_json(self, relative: str, value: dict) -> str:
        try:
            data = json.dumps(value, indent=2, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # a file name that is not UTF-8: keep it as \udcXX escapes
            data = json.dumps(value, indent=2).encode()
        return self.write_bytes(relative, data)

    def delete(self, relative: str) -> None:
        def remove() -> None:
            try:
                self.fs.rm_file(self._path(relative))
            except FileNotFoundError:
                pass

        self._retrying(remove, f"removing {self.uri(relative)}")

    def list_records(self, folder: str) -> tuple[list[dict], dict[str, str]]:
        """Every record in `folder` that fits its schema, and the others (uri -> why), skipped."""
        def read_all() -> dict[str, bytes]:
            # s3fs caches directory listings per process; other processes may have written since.
            self.fs.invalidate_cache(self._path(folder))
            try:
                paths = self.fs.glob(self._path(f"{folder}/*.json"))
            except FileNotFoundError:
                return {}
            return {p: self.fs.cat_file(p) for p in sorted(paths)}

        records, skipped = [], {}
        for path, raw in self._retrying(read_all, f"reading {self.uri(folder)}").items():
            relative = f"{folder}/{path.rsplit('/', 1)[-1]}"
            value, reason = parse_record(relative, raw)
            if reason:
                self._damaged(relative, reason)
                skipped[self.uri(relative)] = reason
            else:
                records.append(value)
        return records, skipped

    def list_json(self, folder: str) -> list[dict]:
        return self.list_records(folder)[0]

    def version_of(self, uri: str) -> list:
        """The object's version now ([size, mtime, change], as in a listing)."""
        fs, path = fsspec.core.url_to_fs(uri)
        if "file" not in fs.protocol:
            fs.invalidate_cache(path)
        return info_version(with_retries(lambda: fs.info(path), f"looking at {uri}", self.retry_s))

    def size_of(self, uri: str) -> int:
        """The size of any URI's object, before anything downloads it."""
        fs, path = fsspec.core.url_to_fs(uri)
        return int(with_retries(lambda: fs.size(path), f"looking at {uri}", self.retry_s))

    @contextmanager
    def local_copy(self, uri: str) -> Iterator[Path]:
        """A local path for any URI: the file itself when local, else a download into this
        process's private folder, removed as soon as the caller is done with it."""
        fs, path = fsspec.core.url_to_fs(uri)
        if "file" in fs.protocol:
            yield Path(path)
            return
        local = private_download_dir() / f"{uuid.uuid4().hex}{Path(path).suffix}"
        try:
            with_retries(lambda: fs.get_file(path, str(local)), f"downloading {uri}", self.retry_s)
            yield local
        finally:
            local.unlink(missing_ok=True)


# -- confinement: sources are read only from inside the upload area --------------------------


class SourceError(ValueError):
    """A key whose source lies outside UPLOAD_URI: never read, never retried."""


def is_under(upload_uri: str, uri: str) -> bool:
    """Whether `uri` names something inside the upload area (symbolic links followed)."""
    root = upload_uri.rstrip("/")
    if "://" in root:
        rest = uri[len(root) + 1 :] if uri.startswith(root + "/") else None
        return rest is not None and not {".", ".."} & set(rest.split("/"))
    if "://" in uri:
        return False
    return os.path.realpath(uri).startswith(os.path.realpath(root) + os.sep)
