"""Untrusted media is opened where a crash costs one file, never the process that asked.

FFmpeg (through PyAV) parses whatever users upload, and native code can segfault, abort or
allocate without end (an 8-channel WAV once took PyAV's planar resampler down, and every file
of its run with it). So probing and decoding run in a child process per file, as browsers and
media servers put their decoders behind a process boundary:

- each process that opens media starts one small fork server (`python -m
  opentr_pipeline.engine.isolation`, PyAV and NumPy imported once); every file is a fork of it,
  a few milliseconds, not an interpreter start. The server is single-threaded, so forking it is
  safe, unlike forking a Dagster run or a Celery worker full of threads; multiprocessing's own
  forkserver re-imports the caller's `__main__` in every child, which a script without a main
  guard turns into a crash;
- a signal in the child is a result: MediaError naming the file and the signal (permanent: the
  same bytes crash the same way), except SIGKILL, which comes from outside (the OOM killer, a
  person) and says nothing of the file;
- the child's address space is capped (a runaway allocation ends in MemoryError, named), and a
  child that sends nothing for `stall_s` is killed and its file named;
- a long recording still streams: the child decodes a window and the socket holds it until the
  caller takes it, so memory holds about one window on each side;
- the caller gone (killed, Ctrl-C), its server sees the control socket close and exits, and its
  children die with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import os
import pickle
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Iterator

import numpy as np

from opentr_pipeline.engine.media import Decoded, MediaError, MediaInfo, has_media_signature
from opentr_pipeline.settings import Settings


@dataclass(frozen=True)
class DecodeLimits:
    memory_mb: int = 4096  # address space a child may add to what it starts with
    stall_s: float = 120.0  # longest wait for a child's next window or answer

    @classmethod
    def from_settings(cls, settings: Settings) -> "DecodeLimits":
        return cls(settings.decode_memory_mb, settings.decode_stall_s)


class DecoderUnavailable(RuntimeError):
    """The fork server itself failed (not the file): transient, the file is tried again."""


# --- the caller's side -----------------------------------------------------------------------


class _Server:
    """This process's fork server: started on first use, started again if it dies."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.process: subprocess.Popen | None = None
        self.control: socket.socket | None = None

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "opentr_pipeline.engine.isolation", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env, close_fds=True)
        self.control = ours

    def request(self, payload: bytes, fds: list[int]) -> None:
        with self.lock:
            for attempt in range(2):
                if self.process is None or self.process.poll() is not None:
                    if self.control is not None:
                        self.control.close()
                    self._start()
                try:
                    socket.send_fds(self.control, [payload], fds)
                    return
                except OSError as error:
                    if attempt:
                        raise DecoderUnavailable(f"the decode server cannot be reached ({error})") from None
                    self.process = None


_SERVER = _Server()


def _run(job: str, args: tuple, name: str, limits: DecodeLimits, media_fd: int | None = None) -> Iterator[tuple[str, Any]]:
    """One child for one job; yield its messages until its last, however it ends."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    payload = pickle.dumps((job, args, name, limits.memory_mb * 2**20))
    try:
        _SERVER.request(payload, [theirs.fileno()] + ([media_fd] if media_fd is not None else []))
    finally:
        theirs.close()
    channel = Connection(ours.detach())
    child_pid = None
    try:
        while True:
            if not channel.poll(limits.stall_s):
                if child_pid:
                    _kill(child_pid)
                raise MediaError(f"{name}: the decoder made no progress for {limits.stall_s:.0f} s "
                                 "(OPENTR_DECODE_STALL_S) and was stopped")
            try:
                kind, value = channel.recv()
            except EOFError:  # the server died with the child unreaped
                raise DecoderUnavailable(f"{name}: the decode server went away; tried again on the next attempt") from None
            if kind == "pid":
                child_pid = value
            elif kind == "exit":
                raise _crash_error(name, *value, limits)
            elif kind == "media":
                raise MediaError(value)
            elif kind == "window":  # its samples follow as raw bytes, read straight into their array
                notes, size = value
                yield kind, Decoded(_read_samples(channel, size), notes)
            else:
                yield kind, value
                if kind in ("done", "end"):
                    child_pid = None
                    return
    finally:
        if child_pid:  # the caller stopped early (closed generator): the child is of no more use
            _kill(child_pid)
        channel.close()


def _read_samples(channel: Connection, size: int) -> np.ndarray:
    """`size` float32 samples straight from the socket into their array: no pickle, no buffer
    (Connection.recv_bytes would hold a 10-min window, 38 MB, two more times on the way)."""
    samples = np.empty(size, np.float32)
    view, got = memoryview(samples).cast("B"), 0
    with socket.socket(fileno=os.dup(channel.fileno())) as raw:
        while got < len(view):
            read = raw.recv_into(view[got:])
            if not read:
                raise EOFError
            got += read
    return samples


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _crash_error(name: str, exitcode: int, peak_bytes: int, limits: DecodeLimits) -> Exception:
    # Native code that meets the memory cap often crashes rather than failing cleanly, so the
    # peak is said beside the signal: the reader can tell a runaway allocation from a bad parse.
    memory = (f"; its peak memory {peak_bytes / 2**20:.0f} MiB, its limit {limits.memory_mb} MiB "
              "above its start (OPENTR_DECODE_MEMORY_MB)")
    if exitcode < 0:
        number = -exitcode
        try:
            signame = signal.Signals(number).name
        except ValueError:
            signame = "unknown"
        if number == signal.SIGKILL:  # the OOM killer or a person: nothing known of the file
            return RuntimeError(f"{name}: the decoder was killed from outside (signal 9, SIGKILL: out of memory "
                                "on this machine, or stopped by hand); tried again on the next attempt")
        return MediaError(f"{name}: the decoder crashed on it: signal {number} ({signame}){memory}")
    return MediaError(f"{name}: the decoder exited with status {exitcode} without an answer{memory}")


def probe_isolated(path, name: str | None = None, max_bytes: int | None = None,
                   max_duration_s: float | None = None, limits: DecodeLimits = DecodeLimits()) -> MediaInfo:
    """media.probe in a child process."""
    name = name or str(path)
    for _, info in _run("probe", (str(path), name, max_bytes, max_duration_s), name, limits):
        return info
    raise DecoderUnavailable(f"{name}: the decoder ended without an answer")


def unreadable_reason_isolated(path, name: str | None = None, limits: DecodeLimits = DecodeLimits()) -> str | None:
    """media.unreadable_reason in a child process; a crash is a reason too. The common containers
    are known by their first bytes here, with no child at all."""
    name = name or str(path)
    try:
        with open(path, "rb") as handle:
            if has_media_signature(handle.read(16)):
                return None
    except OSError:
        return None  # gone or unreadable now: the run says so
    try:
        for _, reason in _run("look", (str(path), name), name, limits):
            return reason
    except MediaError as error:
        return str(error)
    except RuntimeError:
        return None  # killed from outside, or no server: no verdict on the file
    return None


def decode_windows_isolated(handle, name: str, rate: int = 16000, window_samples: int | None = None,
                            limits: DecodeLimits = DecodeLimits()) -> Iterator[Decoded]:
    """media.decode_windows of an open file, in a child process, window by window. The child
    gets the open file itself, so it decodes the very bytes the caller hashed."""
    for kind, window in _run("decode", (rate, window_samples), name, limits, media_fd=handle.fileno()):
        if kind == "window":
            yield window


# --- the server's side -----------------------------------------------------------------------


def _die_with(signal_number: int) -> None:
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal_number)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _limit_memory(extra_bytes: int) -> None:
    try:
        with open("/proc/self/status") as status:
            now = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        return
    resource.setrlimit(resource.RLIMIT_AS, (now + extra_bytes, now + extra_bytes))


def _child(channel: Connection, job: str, args: tuple, name: str, memory_bytes: int, media_fd: int | None) -> None:
    """A forked child's whole life: one job, every outcome sent as data."""
    from opentr_pipeline.engine.media import decode_windows, probe, unreadable_reason

    _limit_memory(memory_bytes)
    try:
        if job == "probe":
            channel.send(("done", probe(*args)))
        elif job == "look":
            channel.send(("done", unreadable_reason(*args)))
        else:
            rate, window_samples = args
            raw = socket.socket(fileno=os.dup(channel.fileno()))  # the samples go raw (_read_samples)
            with os.fdopen(media_fd, "rb") as handle:
                handle.seek(0)
                for window in decode_windows(handle, name, rate, window_samples):
                    # Raw bytes, not a pickle: the caller reads them into the array it keeps, so
                    # a 10-min window (38 MB) is not held twice there while it is unpickled.
                    samples = np.ascontiguousarray(window.samples, np.float32)
                    channel.send(("window", (window.notes, samples.size)))
                    raw.sendall(memoryview(samples).cast("B"))
            channel.send(("end", None))
    except MediaError as error:
        channel.send(("media", str(error)))
    except MemoryError:
        channel.send(("media", f"{name}: decoding it needs more memory than the decoder's limit "
                               f"({memory_bytes // 2**20} MiB, OPENTR_DECODE_MEMORY_MB)"))
    except Exception as error:  # PyAV raises many types; the file is the story
        channel.send(("media", f"{name}: could not decode audio ({type(error).__name__}: {error})"))


def _fork_one(payload: bytes, fds: list[int], not_the_childs: list[socket.socket]) -> tuple[int, socket.socket]:
    job, args, name, memory_bytes = pickle.loads(payload)
    result = socket.socket(fileno=fds[0])
    media_fd = fds[1] if len(fds) > 1 else None
    pid = os.fork()
    if pid == 0:  # the child: from here on, only os._exit
        code = 0
        try:
            _die_with(signal.SIGKILL)
            for other in not_the_childs:  # the server's control socket, other children's channels
                other.close()
            channel = Connection(os.dup(result.fileno()))
            channel.send(("pid", os.getpid()))
            _child(channel, job, args, name, memory_bytes, media_fd)
        except BaseException:  # the caller gone (broken pipe), or worse: nothing to tell anyone
            code = 1
        os._exit(code)
    if media_fd is not None:
        os.close(media_fd)
    return pid, result


def serve(control_fd: int) -> None:
    """Fork a child per request; when one exits, tell its caller how, on the child's own socket.
    Ends when the control socket closes (the caller's process is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    _die_with(signal.SIGTERM)
    control = socket.socket(fileno=control_fd)
    children: dict[int, socket.socket] = {}
    while True:
        ready, _, _ = select.select([control], [], [], 0.02 if children else None)
        if ready:
            try:
                payload, fds, _, _ = socket.recv_fds(control, 1 << 16, 4)
            except OSError:
                payload = b""
            if not payload:
                break
            pid, result = _fork_one(payload, fds, [control, *children.values()])
            children[pid] = result
        while children:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
            if pid == 0:
                break
            result = children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            try:
                if code != 0:
                    Connection(os.dup(result.fileno())).send(("exit", (code, usage.ru_maxrss * 1024)))
            except OSError:
                pass  # the caller stopped listening
            result.close()
    for pid in children:
        _kill(pid)


if __name__ == "__main__":
    import av  # noqa: F401  imported once here, so a child starts with it

    serve(int(sys.argv[1]))
