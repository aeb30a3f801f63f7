"""A real `dagster dev` (webserver and daemon) on a temporary home and port, driven over HTTP.

Started from Python in its own session so that SIGINT reaches the whole process group (the
webserver, the daemon, the code server and any run processes): a shell `&` job ignores SIGINT.
Every wait is bounded, and a server that will not stop is killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")

LOCATION = "opentr_pipeline"
REPOSITORY = "__repository__"  # the name Dagster gives the repository of a Definitions object


SENSOR_TICKS = """
query ($selector: SensorSelector!, $limit: Int!) {
  sensorOrError(sensorSelector: $selector) { ... on Sensor { sensorState { ticks(limit: $limit) { status } } } }
}
"""


class DevServerError(RuntimeError):
    """The server did not start, or GraphQL answered with an error."""


def dev_home(root: Path, drop: tuple[str, ...] = ("GPU_", "WHISPER_", "OPENTR_"), **variables: str) -> dict[str, str]:
    """Upload, store and home folders under `root` (the project's dagster.yaml in the home) and
    the environment for a server on them: this process's, less the variables starting with
    `drop`, plus `variables`."""
    for folder in ("uploads", "store", "home"):
        (root / folder).mkdir()
    shutil.copy(Path(__file__).resolve().parent.parent / "dagster.yaml", root / "home" / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(UPLOAD_URI=str(root / "uploads"), STORAGE_URI=str(root / "store"), DAGSTER_HOME=str(root / "home"),
               PYTHONUNBUFFERED="1", OPENTR_SEARCH_PORT="0", **variables)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 1.0) -> T:
    """Poll until `check` returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class DevServer:
    """One `dagster dev` process group; its output goes to `log_path` for post-mortems."""

    def __init__(self, project_root: Path, env: dict[str, str], log_path: Path, port: int | None = None):
        self.project_root = project_root
        self.env = env
        self.log_path = log_path
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> "DevServer":
        # What `make dev` runs: opentr sets the gpu pool limit from the plan, then execs dagster dev.
        opentr = self.project_root / ".venv" / "bin" / "opentr"
        command = [str(opentr), "dev", "-p", str(self.port), "-h", "127.0.0.1"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=self.project_root, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        try:
            wait_for(self._serving, timeout, f"dagster dev at {self.url}/server_info", interval=0.5)
            wait_for(self._location_loaded, timeout, f"code location {LOCATION} to load", interval=0.5)
        except TimeoutError as error:
            self.stop()
            raise DevServerError(f"{error}\n--- end of {self.log_path} ---\n{self.log_tail()}") from None
        except Exception:
            self.stop()
            raise
        return self

    def _serving(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise DevServerError(f"dagster dev exited with {self.process.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/server_info", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def _location_loaded(self) -> bool:
        data = self.graphql("""
            query { workspaceOrError { ... on Workspace { locationEntries {
                name loadStatus
                locationOrLoadError { __typename ... on PythonError { message } }
            } } } }
        """)
        for entry in data["workspaceOrError"]["locationEntries"]:
            if entry["name"] != LOCATION or entry["loadStatus"] != "LOADED":
                continue
            loaded = entry["locationOrLoadError"]
            if loaded["__typename"] == "PythonError":
                raise DevServerError(f"code location failed to load: {loaded['message']}")
            return True
        return False

    def stop(self, timeout: float = 60) -> None:
        """SIGINT to the group, as Ctrl-C would; SIGKILL whatever is left after `timeout`."""
        if self.process is None or self.process.poll() is not None:
            return
        group = os.getpgid(self.process.pid)
        os.killpg(group, signal.SIGINT)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            self.process.wait(timeout=10)
        # The daemon may leave run processes behind in the same group; none may outlive the test.
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "DevServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def log_tail(self, characters: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except FileNotFoundError:
            return ""

    def graphql(self, query: str, variables: dict[str, Any] | None = None, timeout: float = 60) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as error:
            raise DevServerError(f"GraphQL HTTP {error.code}: {error.read()[:2000]!r}") from None
        if answer.get("errors"):
            raise DevServerError(f"GraphQL errors: {answer['errors']}")
        return answer["data"]

    def sensor_tick_statuses(self, sensor: str, limit: int = 50) -> list[str]:
        """The statuses of the sensor's latest ticks, newest first (STARTED: the one going on)."""
        found = self.graphql(SENSOR_TICKS, {"selector": {**self.repository_selector, "sensorName": sensor},
                                            "limit": limit})["sensorOrError"]
        return [tick["status"] for tick in (found.get("sensorState") or {}).get("ticks", [])]

    @property
    def repository_selector(self) -> dict[str, str]:
        return {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}
