"""Issue 16, item 8: a file claimed by one run is not transcribed by another at the same time.

The claim is an exclusive create on the real storage (a hard link on a local folder, a
conditional PUT on a real S3 endpoint), raced by real processes and threads; who holds a claim
is judged against a real Dagster instance and real processes."""

from __future__ import annotations

import multiprocessing
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pytest

from opentr_pipeline.defs.claims import claim, holder_is_gone, in_flight_path, mark_started, release, was_in_hand
from opentr_pipeline.storage import Storage


def _race(root: str, run_id: str, start_at: float) -> bool:
    while time.time() < start_at:
        pass
    return Storage(root).create_json("inflight/a.json", {"run_id": run_id})


def test_of_processes_racing_for_a_local_name_exactly_one_wins(tmp_path):
    start_at = time.time() + 2.0  # all spawned and spinning by then
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        won = pool.starmap(_race, [(str(tmp_path), f"run-{n}", start_at) for n in range(8)])
    assert sum(won) == 1, won
    assert Storage(str(tmp_path)).read_json("inflight/a.json")["run_id"] == f"run-{won.index(True)}"
    assert not [p for p in (tmp_path / "inflight").iterdir() if p.name != "a.json"], "a temporary file left"


def test_of_threads_racing_for_an_s3_name_exactly_one_wins(s3_bucket):
    store = Storage(f"{s3_bucket}/out")
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda n: store.create_json("inflight/a.json", {"run_id": f"run-{n}"}), range(8)))
    assert sum(won) == 1, won
    assert store.read_json("inflight/a.json")["run_id"] == f"run-{won.index(True)}"
    store.delete("inflight/a.json")
    assert store.create_json("inflight/a.json", {"run_id": "later"}), "a released name can be claimed again"


def finished_run_id(instance: dg.DagsterInstance) -> str:
    @dg.asset
    def nothing() -> None:
        return None

    return dg.materialize([nothing], instance=instance).run_id


def test_a_live_holder_keeps_its_claim_and_a_gone_one_loses_it(tmp_path):
    store = Storage(str(tmp_path))
    instance = dg.DagsterInstance.ephemeral()
    assert claim(store, instance, "transcript", "a", "run-1") is None
    held = claim(store, instance, "transcript", "a", "run-2")
    assert held is not None and held["run_id"] == "run-1", "a live holder (this process) keeps the file"
    assert not was_in_hand(held), "claimed for later, not yet in hand: no suspect if its run dies"
    mark_started(store, "transcript", "a", "run-1")
    assert was_in_hand(store.read_json(in_flight_path("a")))
    release(store, "a", "run-2")
    assert store.exists(in_flight_path("a")), "another run's claim is left alone"
    release(store, "a", "run-1")
    assert not store.exists(in_flight_path("a"))

    # Its process on this host died: stale, taken over.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.write_json(in_flight_path("b"), {"run_id": "run-9", "host": socket.gethostname(), "pid": dead.pid,
                                           "since": time.time() - 5, "state": "started"})
    assert claim(store, instance, "transcript", "b", "run-2") is None
    assert store.read_json(in_flight_path("b"))["run_id"] == "run-2"

    # Its run finished (a record a crash left behind): stale, whatever host it names.
    store.write_json(in_flight_path("c"), {"run_id": finished_run_id(instance), "host": "elsewhere", "pid": 1,
                                           "since": time.time(), "state": "started"})
    assert claim(store, instance, "transcript", "c", "run-2") is None

    # Another host's run this instance does not know: trusted until the redelivery bound.
    foreign = {"run_id": "run-of-another-home", "host": "elsewhere", "pid": 1, "since": time.time()}
    assert not holder_is_gone(foreign, instance)
    assert holder_is_gone({**foreign, "since": time.time() - 7 * 3600}, instance)


@pytest.fixture
def s3_bucket():
    from s3_server import moto_s3_server
    import s3fs

    with moto_s3_server():
        s3fs.S3FileSystem().mkdir("claims")
        yield "s3://claims"
