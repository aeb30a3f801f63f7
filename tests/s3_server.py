"""A real S3 endpoint for tests: moto's server on loopback, spoken to over HTTP the way s3fs's
own test suite does. Nothing is mocked inside the pipeline; only the cloud is replaced."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import Iterator

import pytest

AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


_SERVERS: dict[int, object] = {}  # port -> the server now answering there (outage tests restart it)


def running_server(port: int):
    return _SERVERS[port]


def replace_server(port: int, server) -> None:
    _SERVERS[port] = server


def _forget_s3_clients() -> None:
    """fsspec keeps one S3FileSystem per argument set for the life of the process; the endpoint
    comes from the environment, so a cached one could still point at an earlier server."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@contextmanager
def moto_s3_server() -> Iterator[str]:
    """Start moto on 127.0.0.1 with a free port, point the AWS variables at it, stop it after."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    _SERVERS[port] = server
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**AWS_TEST_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
            patch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_CONFIG_FILE", os.devnull)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        _forget_s3_clients()
        try:
            yield endpoint
        finally:
            _forget_s3_clients()
            _SERVERS.pop(port).stop()


def new_bucket() -> str:
    """A fresh bucket on the current endpoint, so tests sharing one server never see each other."""
    import s3fs

    name = f"opentr-test-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(name)
    return name
