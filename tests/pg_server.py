"""A real PostgreSQL for tests: Debian's server (scripts/install-test-deps.sh installs it),
initialised in a temporary folder, on loopback and a free port, stopped and deleted after."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


def postgres_bin() -> Path | None:
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / "initdb").exists():
            return folder
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def postgres_server(database: str = "opentr", keep: Path | None = None) -> Iterator[str]:
    """Yields postgresql://opentr@127.0.0.1:PORT/DATABASE; as root the server runs as `postgres`.
    With `keep`, its data lives there and outlives it (a benchmark's second run starts on it)."""
    folder = postgres_bin()
    if folder is None:
        pytest.skip("PostgreSQL is not installed: run scripts/install-test-deps.sh as root")
    user = "postgres" if os.geteuid() == 0 else None
    data = keep or Path(tempfile.mkdtemp(prefix="opentr-test-pg-"))
    fresh = not (data / "data").exists()
    data.mkdir(parents=True, exist_ok=True)
    if user:
        entry = pwd.getpwnam(user)
        os.chown(data, entry.pw_uid, entry.pw_gid)
    port = free_port()
    if fresh:
        subprocess.run([str(folder / "initdb"), "-D", str(data / "data"), "-U", "opentr", "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, stdout=subprocess.DEVNULL, user=user, cwd=data)
    log = open(data / "postgres.log", "wb")
    server = subprocess.Popen([str(folder / "postgres"), "-D", str(data / "data"), "-p", str(port), "-c",
                               "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={data}", "-c", "fsync=off"],
                              stdout=log, stderr=subprocess.STDOUT, user=user, cwd=data)
    import psycopg2

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                connection = psycopg2.connect(host="127.0.0.1", port=port, user="opentr", dbname="postgres")
                break
            except psycopg2.OperationalError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start: {(data / 'postgres.log').read_text()[-2000:]}")
                time.sleep(0.2)
        connection.autocommit = True
        cursor = connection.cursor()
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if cursor.fetchone() is None:
            cursor.execute(f"CREATE DATABASE {database}")
        connection.close()
        yield f"postgresql://opentr@127.0.0.1:{port}/{database}"
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        if keep is None:
            shutil.rmtree(data, ignore_errors=True)
