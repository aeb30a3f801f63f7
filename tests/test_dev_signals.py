"""`opentr dev` as a process manager or a container stops it: SIGTERM to its main process alone,
or Ctrl-C (SIGINT to the terminal's process group). Either way every process it started (Redis,
the resident worker, dagster dev, the webserver, the daemon, the code server) must be gone, and
the UI must stop answering. SIGTERM used to end the main process only and leave the rest serving.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT
from dev_server import DevServer, wait_for

pytestmark = pytest.mark.slow


def descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    living = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            living.add(pid)
    return living


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_dev_stops_everything_it_started(tmp_path: Path, how: str):
    for folder in ("uploads", "store", "home"):
        (tmp_path / folder).mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", tmp_path / "home" / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_", "WHISPER_", "OPENTR_"))}
    env.update(UPLOAD_URI=str(tmp_path / "uploads"), STORAGE_URI=str(tmp_path / "store"),
               DAGSTER_HOME=str(tmp_path / "home"), OPENTR_BROKER_URL="embedded", PYTHONUNBUFFERED="1")
    dev = DevServer(PROJECT_ROOT, env, tmp_path / "dev.log").start(timeout=180)
    try:
        started = descendants(dev.process.pid)
        names = {Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120] for pid in alive(started)}
        assert any(b"redis-server" in n for n in names) and any(b"worker" in n for n in names), names
        if how == "sigterm":
            dev.process.send_signal(signal.SIGTERM)  # the main process alone, as systemd or docker stop do
        else:
            os.killpg(os.getpgid(dev.process.pid), signal.SIGINT)
        code = dev.process.wait(timeout=90)
        wait_for(lambda: not alive(started), 30, "every process opentr dev started to stop", interval=0.5)
        assert not answers(dev.url), "the UI still answers"
        log = dev.log_tail(20000)
        assert "Traceback" not in log, log
        if how == "sigterm":
            assert code in (0, 143, -signal.SIGTERM), (code, log)
    finally:
        dev.stop()
