"""Whether an upload is whole: taken as soon as it is, never while it is still being written.

An object store shows an object only once its upload is complete, so an S3 object is whole when
listed. A local folder shows a file from its first byte. A file there is whole when no process on
this host holds it open for writing and it has not changed for SETTLE_S; where this host cannot
see every writer (another user's processes, a network share written from elsewhere) it must also
have been left alone for UNSEEN_WRITER_SETTLE_S. A copy that stalls mid-way still holds the file
open, so it is not taken however long its size keeps still.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

SETTLE_S = 1.0
UNSEEN_WRITER_SETTLE_S = 15.0
# Filesystems whose writers may sit on other hosts, out of this host's sight.
SHARED_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs", "fuse.rclone", "afs", "ceph",
                      "glusterfs", "fuse.glusterfs", "lustre", "beegfs", "gpfs", "fuse.s3fs", "fuse.gcsfuse"}
_WRITE_MODES = {os.O_WRONLY, os.O_RDWR}


@dataclass(frozen=True)
class Writers:
    """The files under a folder that processes on this host hold open for writing."""

    paths: frozenset[str]
    complete: bool  # every writer could be seen: all processes readable, a local filesystem

    def settle_s(self) -> float:
        return SETTLE_S if self.complete else UNSEEN_WRITER_SETTLE_S


def filesystem_type(path: str) -> str:
    """The type of the filesystem holding `path`, from /proc/self/mounts (longest mount point)."""
    real, best, kind = os.path.realpath(path), "", ""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best, kind = mount, fields[2]
    return kind


def open_for_writing(folder: str, proc: Path = Path("/proc")) -> Writers:
    """Every file under `folder` that a process on this host has open for writing, by real path."""
    root = os.path.realpath(folder).rstrip("/") + "/"
    found: set[str] = set()
    complete = filesystem_type(folder) not in SHARED_FILESYSTEMS
    for entry in proc.iterdir() if proc.is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            descriptors = list((entry / "fd").iterdir())
        except PermissionError:
            complete = False  # another user's process: it might be writing, unseen
            continue
        except OSError:  # the process ended meanwhile
            continue
        for fd in descriptors:
            try:
                target = os.readlink(fd)
                if not target.startswith(root):
                    continue
                flags = next(int(line.split()[1], 8) for line in (entry / "fdinfo" / fd.name).read_text().splitlines()
                             if line.startswith("flags:"))
            except (OSError, StopIteration, ValueError):
                continue
            if (flags & os.O_ACCMODE) in _WRITE_MODES:
                found.add(target)
    return Writers(frozenset(found), complete)


def is_whole(path: str, size: int, mtime: float, now: float, writers: Writers | None) -> bool:
    """Whether the file at `path`, listed with `size` and `mtime`, is whole; `writers` None: an
    object store. A file that moved since it was listed is not: the listing is not its last state."""
    if writers is None:
        return True
    if os.path.realpath(path) in writers.paths or now - mtime < writers.settle_s():
        return False
    try:
        now_stat = os.stat(path)
    except OSError:
        return False
    return now_stat.st_size == size and abs(now_stat.st_mtime - mtime) < 1e-6


def time_to_settle(mtimes: list[float], now: float, writers: Writers | None) -> float:
    """How long until the youngest of the files with these mtimes is old enough, at most SETTLE_S:
    a tick may wait that long rather than leave a just-finished copy to the next tick."""
    if writers is None or not writers.complete:
        return 0.0
    waits = [SETTLE_S - (now - mtime) for mtime in mtimes if 0 <= now - mtime < SETTLE_S]
    return max(waits, default=0.0)



class StillBeingWritten(RuntimeError):
    """A file that did not become whole in the time allowed: taken again on a later attempt."""


def wait_until_whole(path: str, limit_s: float, on_wait: Callable[[str], None] = lambda _: None,
                     poll_s: float = 0.25) -> None:
    """Return once the local file at `path` is whole; every path into the pipeline (the sensor's
    runs, reruns, backfills, `opentr run`) passes here before a file is probed, so no partial
    copy is ever probed or transcribed. Names the file through `on_wait` once if it must wait."""
    deadline, told = time.monotonic() + limit_s, False
    while True:
        stat = os.stat(path)  # a file gone meanwhile: FileNotFoundError, named by the caller
        if is_whole(path, stat.st_size, stat.st_mtime, time.time(), open_for_writing(os.path.dirname(path))):
            return
        if time.monotonic() > deadline:
            raise StillBeingWritten(f"{path}: still being written after {limit_s:.0f} s "
                                    "(a process holds it open, or it keeps changing); taken again later")
        if not told:
            on_wait(f"{path}: still being written; waiting until it is whole")
            told = True
        time.sleep(poll_s)
