"""`opentr run` and `opentr report` as a user runs them: a subprocess on temporary folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from conftest import DEMO_MEDIA, read_json, word_error_rate
from opentr_pipeline.defs.names import LAUNCHED_BY

pytestmark = pytest.mark.slow
OPENTR = Path(sys.executable).with_name("opentr")


def opentr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(OPENTR), *args], capture_output=True, text=True, timeout=600, env=os.environ.copy())


def test_run_transcribes_reports_failures_and_does_no_work_twice(pipeline_env, demo_texts):
    uploads = Path(pipeline_env["UPLOAD_URI"])
    store = Path(pipeline_env["STORAGE_URI"])
    for name in demo_texts:
        target = uploads / "demo" / name if name.endswith(".flac") else uploads / name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(DEMO_MEDIA / name, target)
    (uploads / "broken.mp3").write_text("not audio at all")
    (uploads / "readme.txt").write_text("ignored: not a media file name")

    first = opentr("run")
    assert first.returncode == 1, first.stdout + first.stderr
    assert "broken.mp3" in first.stdout and "not a readable media file" in first.stdout
    assert "device plan: 1 worker(s): cpu:0" in first.stdout
    assert "readme.txt" in first.stdout  # said to be skipped
    transcripts = {p.name: read_json(p) for p in (store / "transcripts").glob("*.json")}
    assert len(transcripts) == 4
    for doc in transcripts.values():
        name = Path(doc["source_uri"]).name
        assert word_error_rate(demo_texts[name], doc["text"]) < 0.2, (name, doc["text"])
    nested = [d for d in transcripts.values() if "/demo/" in d["source_uri"]][0]
    assert "/" not in nested["partition_key"] and nested["partition_key"].startswith("demo__")

    # The runs are in the instance the UI reads.
    instance = dg.DagsterInstance.get()
    assert len(instance.get_materialized_partitions(dg.AssetKey("subtitles"))) == 4
    assert instance.get_latest_materialization_event(dg.AssetKey("throughput_report")) is not None

    second = opentr("run")
    assert "0 new; 1 to process" in second.stdout, second.stdout
    for path in (store / "transcripts").glob("*.json"):
        assert read_json(path)["started_at"] == transcripts[path.name]["started_at"], "transcribed twice"

    # The user replaces the bad upload with a real recording (a copy of one already done):
    # the next run finishes clean, reusing the first transcript instead of a worker.
    shutil.copy(DEMO_MEDIA / "harvard_02.mp3", uploads / "broken.mp3")
    third = opentr("run")
    assert third.returncode == 0, third.stdout + third.stderr
    assert "1 of 1 file(s) done" in third.stdout
    assert read_json(store / "transcripts" / "broken.mp3.json")["reused_from"] == "harvard_02.mp3"

    report = opentr("report")
    assert report.returncode == 0
    assert "**4 files**" in report.stdout and "x realtime" in report.stdout  # the copy did no work


def test_runs_with_fewer_files_than_workers_keep_every_worker_busy(pipeline_env, demo_texts, monkeypatch):
    """One file per run and two workers: runs go side by side, so both workers transcribe at once
    (one run after another would never overlap), and never more than two."""
    import pandas as pd

    from opentr_pipeline.outputs.throughput import peak_concurrency

    monkeypatch.setenv("GPU_SCALE_ENABLED", "true")
    monkeypatch.setenv("GPU_SCALE_WORKERS", "2")
    monkeypatch.setenv("OPENTR_FILES_PER_RUN", "1")
    uploads = Path(pipeline_env["UPLOAD_URI"])
    for name in demo_texts:
        shutil.copy(DEMO_MEDIA / name, uploads / name)
    result = opentr("run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(demo_texts)} runs, 3 at a time" in result.stdout
    docs = [read_json(p) for p in (Path(pipeline_env["STORAGE_URI"]) / "transcripts").glob("*.json")]
    assert len(docs) == len(demo_texts)
    frame = pd.DataFrame(docs).assign(started_at=lambda f: pd.to_datetime(f["started_at"]),
                                      finished_at=lambda f: pd.to_datetime(f["finished_at"]))
    assert peak_concurrency(frame) == 2
    runs = dg.DagsterInstance.get().get_run_records(
        dg.RunsFilter(tags={LAUNCHED_BY: "opentr run"}, statuses=[dg.DagsterRunStatus.SUCCESS]))
    assert len(runs) == len(demo_texts)


def test_bad_setting_fails_at_start_naming_the_variable(pipeline_env, monkeypatch):
    monkeypatch.setenv("GPU_SCALE_WORKERS", "0")
    result = opentr("run")
    assert result.returncode == 2
    assert "GPU_SCALE_WORKERS='0'" in result.stderr
    monkeypatch.setenv("GPU_SCALE_WORKERS", "1")
    monkeypatch.setenv("WHISPER_MODEL", "/no/such/model")
    result = opentr("run")
    assert result.returncode == 2 and "WHISPER_MODEL='/no/such/model'" in result.stderr
