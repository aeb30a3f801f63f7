"""The S3 endpoint goes away and comes back: a real moto server on loopback is stopped and started
again on the same port (its objects live on in this process), during listing, reading, writing
and a whole pipeline run. Storage hiccups are retried with backoff; bad media is not."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import dagster as dg
import pytest
from moto.server import ThreadedMotoServer

from conftest import SPEECH, materialize_keys, word_error_rate
from s3_server import moto_s3_server, new_bucket
from opentr_pipeline.storage import Storage, is_transient
from opentr_pipeline.intake.uploads import register_sources, scan_uploads

SHORT = "librispeech_test-clean_61-70968-0002.wav"
OTHER = "librispeech_test-clean_2830-3980-0043.wav"


@pytest.fixture
def endpoint():
    with moto_s3_server() as url:
        yield url


@contextmanager
def outage(endpoint: str, after_s: float, for_s: float):
    """Stop the server behind `endpoint` after `after_s` seconds, start it again `for_s` later."""
    import s3_server

    port = int(endpoint.rsplit(":", 1)[1])
    server = s3_server.running_server(port)
    events: dict[str, float] = {}

    def blink() -> None:
        time.sleep(after_s)
        server.stop()
        events["down"] = time.monotonic()
        time.sleep(for_s)
        replacement = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        replacement.start()
        s3_server.replace_server(port, replacement)
        events["up"] = time.monotonic()

    thread = threading.Thread(target=blink, daemon=True)
    thread.start()
    yield events
    thread.join(timeout=for_s + after_s + 30)


def test_reads_writes_and_listings_ride_out_an_outage(endpoint):
    bucket = new_bucket()
    store = Storage(f"s3://{bucket}/store", retry_s=30)
    store.write_json("docs/a.json", {"n": 1})
    with outage(endpoint, after_s=0.2, for_s=3):
        time.sleep(0.5)  # the server is down now
        store.write_json("docs/b.json", {"n": 2})  # retried until it is back
        assert store.read_json("docs/a.json") == {"n": 1}
        assert [d["n"] for d in store.list_json("docs")] == [1, 2]
    with outage(endpoint, after_s=0.2, for_s=3):
        time.sleep(0.5)
        assert len(scan_uploads(f"s3://{bucket}/store").not_media) == 2  # the sensor's listing
    assert scan_uploads(f"s3://{bucket}/store").not_media == ["docs/a.json", "docs/b.json"]


def test_an_outage_longer_than_the_retries_fails_cleanly_and_writes_nothing(endpoint):
    bucket = new_bucket()
    store = Storage(f"s3://{bucket}/store", retry_s=2)
    with outage(endpoint, after_s=0.1, for_s=15):
        time.sleep(0.4)
        started = time.monotonic()
        with pytest.raises(Exception) as failed:
            store.write_json("late.json", {"n": 3})
        print(f"gave up after {time.monotonic() - started:.1f} s")
        assert is_transient(failed.value), f"a storage outage must read as transient: {failed.value!r}"
    assert not store.exists("late.json"), "no partial object"
    store.write_json("late.json", {"n": 3})  # back: the same write goes through
    assert store.read_json("late.json") == {"n": 3}


def test_a_pipeline_run_converges_through_an_outage(endpoint, pipeline_env, monkeypatch, fixtures_dir):
    bucket = new_bucket()
    uploads, outputs = f"s3://{bucket}/incoming", f"s3://{bucket}/store"
    monkeypatch.setenv("UPLOAD_URI", uploads)
    monkeypatch.setenv("STORAGE_URI", outputs)
    store = Storage(outputs)
    for name in (SHORT, OTHER):
        store.fs.pipe_file(f"{bucket}/incoming/{name}", (fixtures_dir / name).read_bytes())
    listing = scan_uploads(uploads)
    register_sources(store, listing.uploads)
    keys = [u.key for u in listing.uploads]
    with outage(endpoint, after_s=1.0, for_s=4) as events:
        result = materialize_keys(keys, raise_on_error=False)
    assert "down" in events and "up" in events, "the outage happened during the run"
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert sorted(keys) == sorted([SHORT, OTHER])  # safe names are their own keys
    for name in keys:
        doc = store.read_json(f"transcripts/{name}.json")
        assert word_error_rate(SPEECH[name], doc["text"]) < 0.15
    assert set(keys) <= dg.DagsterInstance.get().get_materialized_partitions(dg.AssetKey("subtitles"))


def test_bad_media_is_not_transient():
    from opentr_pipeline.engine.media import MediaError

    assert not is_transient(MediaError("x.mp3: not a readable media file"))
    assert not is_transient(FileNotFoundError("gone"))
    assert is_transient(ConnectionRefusedError(111, "Connection refused"))
