"""Uploads and storage on S3: a moto server on loopback is the endpoint (only the cloud is
replaced), reached through s3fs with AWS_ENDPOINT_URL as MinIO users would set it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dagster as dg
import pytest

from conftest import SPEECH, word_error_rate
from s3_server import moto_s3_server, new_bucket
from test_sensors import SHORT, UploadSensorTicks, added_keys, requested_keys
from opentr_pipeline.settings import Settings
from opentr_pipeline.storage import Storage
from opentr_pipeline.intake.uploads import scan_uploads
from opentr_pipeline.defs.names import REPORT_JOB


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(s3_endpoint) -> str:
    return new_bucket()


@pytest.fixture
def s3_pipeline_env(pipeline_env, bucket, monkeypatch) -> dict[str, str]:
    """Uploads and outputs both in the bucket; the Dagster instance stays on local SQLite."""
    env = {**pipeline_env, "UPLOAD_URI": f"s3://{bucket}/incoming", "STORAGE_URI": f"s3://{bucket}/store"}
    monkeypatch.setenv("UPLOAD_URI", env["UPLOAD_URI"])
    monkeypatch.setenv("STORAGE_URI", env["STORAGE_URI"])
    return env


def put(uri: str, data: bytes = b"not audio; the sensor does not probe") -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    fs.pipe_file(path, data)


def test_endpoint_comes_from_aws_endpoint_url(s3_endpoint, bucket):
    fs = Storage(f"s3://{bucket}").fs
    assert fs.s3.meta.endpoint_url == s3_endpoint, "s3fs must honour AWS_ENDPOINT_URL (MinIO, moto)"


def test_storage_round_trip_with_atomic_writes(bucket):
    store = Storage(f"s3://{bucket}/store")
    uri = store.write_json("notes/a.wav.json", {"text": "first"})
    assert uri == f"s3://{bucket}/store/notes/a.wav.json"
    assert store.exists("notes/a.wav.json") and store.read_json("notes/a.wav.json") == {"text": "first"}

    store.write_json("notes/a.wav.json", {"text": "second, longer than the first"})
    assert store.read_json("notes/a.wav.json")["text"] == "second, longer than the first"
    store.write_many({f"items/k{n}.json": json.dumps({"n": n}).encode() for n in range(20)})
    assert [doc["n"] for doc in store.list_json("items")] == sorted(range(20), key=lambda n: f"k{n}.json")
    assert store.read_json_or_none("notes/missing.json") is None

    # One PUT per write: no temporary objects are ever left beside the outputs.
    names = store.fs.find(f"{bucket}/store")
    assert len(names) == 21 and not [n for n in names if n.endswith(".part") or "/." in n]

    put(f"s3://{bucket}/store/notes/b.wav.json", b'{"text": "written by another process"}')
    assert len(store.list_json("notes")) == 2, "a listing sees objects written by others"

    with store.local_copy(f"s3://{bucket}/store/notes/a.wav.json") as local:
        assert json.loads(Path(local).read_text())["text"].startswith("second")
    assert not Path(local).exists(), "the download is removed after use"
    store.delete("notes/a.wav.json")
    assert not store.exists("notes/a.wav.json")

    # A record of a kind the pipeline reads back is checked against its schema (records.py): one
    # written by another program is named and read as missing, and never stops the others.
    put(f"s3://{bucket}/store/transcripts/foreign.wav.json", b'{"text": "not a transcript"}')
    assert store.read_json_or_none("transcripts/foreign.wav.json") is None
    records, skipped = store.list_records("transcripts")
    assert records == [] and list(skipped) == [f"s3://{bucket}/store/transcripts/foreign.wav.json"]
    assert "partition_key: field required" in skipped[f"s3://{bucket}/store/transcripts/foreign.wav.json"]


def test_scan_uploads_sees_nested_keys_and_skips_partial_names(bucket):
    root = f"s3://{bucket}/incoming"
    for name in ("a.wav", "2024/03/b c.mp3", "deep/er/still/d.flac", "e.mp4.part", ".f.wav",
                 "g/.staging/h.wav", "notes.txt"):
        put(f"{root}/{name}")
    put(f"s3://{bucket}/elsewhere/x.wav")

    listing = scan_uploads(root)
    assert [u.relative_path for u in listing.uploads] == ["2024/03/b c.mp3", "a.wav", "deep/er/still/d.flac"]
    nested = listing.uploads[0]
    assert nested.uri == f"s3://{bucket}/incoming/2024/03/b c.mp3" and nested.size > 0 and nested.mtime > 0
    assert nested.key.startswith("2024__03__b_c.mp3-")
    assert sorted(listing.partial) == [".f.wav", "e.mp4.part", "g/.staging/h.wav"]
    assert listing.not_media == ["notes.txt"]
    assert len(scan_uploads(root).uploads) == 3

    put(f"{root}/later.wav")
    assert "later.wav" in [u.relative_path for u in scan_uploads(root).uploads], "no stale listing"
    assert scan_uploads(f"s3://{bucket}/nothing-here").uploads == []


def test_sensor_on_s3_uploads(s3_pipeline_env):
    # With the watch make dev runs: an S3 listing is a request, made once per tick all the same.
    ticks = UploadSensorTicks(Settings.from_env(), dg.DagsterInstance.get(), watch_s=3.0)
    root = s3_pipeline_env["UPLOAD_URI"]
    put(f"{root}/one.wav")
    put(f"{root}/team/two.mp3")
    put(f"{root}/three.wav.part")

    second = ticks()  # an object store lists only whole objects: taken at first sight
    keys = added_keys(second)
    assert keys[0] == "one.wav" and keys[1].startswith("team__two.mp3-")
    assert requested_keys(second) == [keys]
    source = Storage(s3_pipeline_env["STORAGE_URI"]).read_json(f"sources/{keys[1]}.json")
    assert source["source_uri"] == f"{root}/team/two.mp3"
    started = time.monotonic()
    assert ticks().run_requests == []
    assert time.monotonic() - started < 2.0, "no watch on an object store"

    put(f"{root}/one.wav", b"a new version of the same name")  # a new size (S3 times are to the second)
    again = ticks()
    assert added_keys(again) == [] and [r.partition_key for r in again.run_requests] == ["one.wav"]


def test_pipeline_run_with_uploads_and_storage_on_s3(s3_pipeline_env, fixtures_dir):
    root = s3_pipeline_env["UPLOAD_URI"]
    put(f"{root}/calls/golden.wav", (fixtures_dir / SHORT).read_bytes())
    ticks = UploadSensorTicks(Settings.from_env(), dg.DagsterInstance.get())
    requested = ticks()
    key = added_keys(requested)[0]
    assert all(run.success for run in ticks.run_requested(requested))

    store = Storage(s3_pipeline_env["STORAGE_URI"])
    doc = store.read_json(f"transcripts/{key}.json")
    assert doc["source_uri"] == f"{root}/calls/golden.wav"
    assert word_error_rate(SPEECH[SHORT], doc["text"]) < 0.15, doc["text"]
    assert doc["uri"] == f"{s3_pipeline_env['STORAGE_URI']}/transcripts/{key}.json"
    assert store.read_json(f"media/{key}.json")["sha256"] == doc["sha256"]
    assert store.read_json(f"by_sha256/{doc['sha256']}.json")["partition_key"] == key
    assert store.read_bytes(f"subtitles/{key}.srt").startswith(b"1\n00:00:")

    from opentr_pipeline.definitions import build_defs

    report = build_defs(Settings.from_env()).resolve_job_def(REPORT_JOB)
    assert report.execute_in_process(instance=ticks.instance).success
    assert store.exists("reports/throughput.parquet") and "x realtime" in store.read_bytes("reports/throughput.md").decode().lower()


def test_a_doubled_slash_is_another_object_with_its_own_key(bucket):
    """`incoming//a.wav` and `incoming/a.wav` are two S3 objects: two partitions, each read back."""
    root = f"s3://{bucket}/incoming"
    put(f"{root}/a.wav", b"one")
    put(f"{root}//a.wav", b"two")
    listing = scan_uploads(root)
    assert sorted(u.relative_path for u in listing.uploads) == ["/a.wav", "a.wav"]
    keys = {u.relative_path: u.key for u in listing.uploads}
    assert keys["a.wav"] == "a.wav" and keys["/a.wav"] != "a.wav"
    store = Storage(f"s3://{bucket}/store")
    from opentr_pipeline.intake.uploads import register_sources, source_uri

    register_sources(store, listing.uploads)
    for upload in listing.uploads:
        with store.local_copy(source_uri(store, root, upload.key)) as path:
            assert path.read_bytes() == (b"two" if upload.relative_path == "/a.wav" else b"one")
