"""Intake that never stops for one odd name, sources read only from under UPLOAD_URI, size and
duration limits at probe, and records that name the bytes really transcribed. Real files, real
SQLite instance, real model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import materialize_keys, read_json
from opentr_pipeline.engine.media import MediaError, probe
from opentr_pipeline.storage import Storage
from opentr_pipeline.intake.uploads import SourceError, register_sources, scan_uploads, source_uri

SHORT = "librispeech_test-clean_61-70968-0002.wav"  # 2.6 s
OTHER = "librispeech_test-clean_2830-3980-0043.wav"


def test_odd_names_are_each_taken_with_a_key_of_their_own(tmp_path):
    names = [b"caf\xe9.wav", b"caf\xe8.wav", b'say "hi".mp3', b"it's.mp3", b"two  spaces.mp3",
             b"new\nline.mp3", "réunion été.mp3".encode(), b"a b.mp3", b"a_b.mp3"]
    root = os.fsencode(tmp_path)
    for name in names:
        with open(os.path.join(root, name), "wb") as handle:
            handle.write(b"x")
    listing = scan_uploads(str(tmp_path))
    assert not listing.skipped
    assert sorted(os.fsencode(u.relative_path) for u in listing.uploads) == sorted(names)
    assert len({u.key for u in listing.uploads}) == len(names), "two files share a key"
    store = Storage(str(tmp_path / "store"))
    register_sources(store, listing.uploads)  # a name that is not UTF-8 survives the JSON record
    for upload in listing.uploads:
        assert source_uri(store, str(tmp_path), upload.key) == upload.uri
        assert os.path.exists(upload.uri)


def test_a_key_or_record_pointing_outside_the_uploads_is_refused(tmp_path):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    (tmp_path / "secret.wav").write_bytes(b"x")
    (uploads / "escape.wav").symlink_to(tmp_path / "secret.wav")
    store = Storage(str(tmp_path / "store"))
    for typed in ("../secret.wav", "escape.wav"):
        with pytest.raises(SourceError, match="not under UPLOAD_URI"):
            source_uri(store, str(uploads), typed)
    for forged in (str(tmp_path / "secret.wav"), "https://example.invalid/a.wav", f"{uploads}/../secret.wav"):
        store.write_json("sources/forged.json", {"source_uri": forged})
        with pytest.raises(SourceError, match="not under UPLOAD_URI"):
            source_uri(store, str(uploads), "forged")
    assert source_uri(store, "s3://b/up", "a.wav") == "s3://b/up/a.wav"
    with pytest.raises(SourceError):
        source_uri(store, "s3://b/up", "../other/a.wav")


def test_size_and_duration_limits_are_named_at_probe(fixtures_dir):
    with pytest.raises(MediaError, match=r"over the limit .*OPENTR_MAX_DURATION_S"):
        probe(fixtures_dir / SHORT, max_duration_s=1)
    with pytest.raises(MediaError, match=r"over the limit .*OPENTR_MAX_FILE_BYTES"):
        probe(fixtures_dir / SHORT, max_bytes=1000)
    assert probe(fixtures_dir / SHORT, max_duration_s=60, max_bytes=10**9).duration_s > 2


def test_limits_fail_the_file_alone_in_the_pipeline(pipeline_env, fixtures_dir, monkeypatch):
    monkeypatch.setenv("OPENTR_MAX_DURATION_S", "2")  # SHORT is 2.6 s, OTHER 1.8 s
    uploads = Path(pipeline_env["UPLOAD_URI"])
    shutil.copy(fixtures_dir / SHORT, uploads / "long.wav")
    shutil.copy(fixtures_dir / OTHER, uploads / "short.wav")
    result = materialize_keys(["long.wav", "short.wav"], raise_on_error=False)
    assert not result.success
    failure = read_json(Path(pipeline_env["STORAGE_URI"]) / "failures/media_file/long.wav.json")
    assert "long.wav" in failure["reason"] and "OPENTR_MAX_DURATION_S" in failure["reason"] and failure["permanent"]
    assert (Path(pipeline_env["STORAGE_URI"]) / "media/short.wav.json").is_file(), "the other file was probed"


def test_a_file_replaced_after_probing_is_not_recorded_under_its_old_hash(pipeline_env, fixtures_dir):
    uploads, store = Path(pipeline_env["UPLOAD_URI"]), Path(pipeline_env["STORAGE_URI"])
    shutil.copy(fixtures_dir / SHORT, uploads / "talk.wav")
    assert materialize_keys(["talk.wav"], selection=["media_file"]).success
    probed = read_json(store / "media/talk.wav.json")["sha256"]
    replacement = uploads / "incoming.tmp"
    shutil.copy(fixtures_dir / OTHER, replacement)
    os.replace(replacement, uploads / "talk.wav")  # another recording under the same name

    result = materialize_keys(["talk.wav"], selection=["transcript"], raise_on_error=False)
    assert not result.success
    failure = read_json(store / "failures/transcript/talk.wav.json")
    assert "changed since it was probed" in failure["reason"] and not failure["permanent"]
    assert not (store / "transcripts/talk.wav.json").exists()
    assert not (store / f"by_sha256/{probed}.json").exists()

    assert materialize_keys(["talk.wav"]).success  # probed again, then transcribed: consistent
    doc = read_json(store / "transcripts/talk.wav.json")
    assert doc["sha256"] == read_json(store / "media/talk.wav.json")["sha256"] != probed
    assert "experience" in doc["text"].lower()
    assert not list((store / "inflight").glob("*.json")), json.dumps(os.listdir(store / "inflight"))


def test_downloads_left_by_a_killed_process_are_removed(tmp_path, monkeypatch):
    import subprocess
    import sys
    import tempfile

    import opentr_pipeline.storage as storage

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(storage, "_DOWNLOADS", None)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that no longer runs
    left = tmp_path / f"opentr-downloads-{child.pid}-abc123"
    left.mkdir()
    (left / "half.mp3").write_bytes(b"x")
    mine = storage.private_download_dir()
    assert not left.exists()
    assert mine.name.startswith(f"opentr-downloads-{os.getpid()}-") and oct(mine.stat().st_mode)[-3:] == "700"
