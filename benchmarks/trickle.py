"""A trickle of uploads under a real `opentr dev`: the model in each run process, against a
resident worker, side by side in one run of this script.

For each engine: fresh folders, `opentr dev` started as `make dev` starts it (the resident side
with OPENTR_BROKER_URL=embedded: a private Redis and one resident worker), then one distinct file
(a demo clip plus its own length of silence, so none is reused) dropped every --interval seconds
for --duration seconds. Prints, per engine:

- drop -> transcript: seconds from the start of the file's copy into the upload folder to its
  transcript (a copy, not a rename: the file's modification time is the copy's, as for a person);
- run start cost: seconds from a run's launch (its process starting) to its first transcription,
  and from its creation (the sensor's request, queued) to that transcription;
- model loads: distinct `engine` ids among the transcripts (one per process that loaded a model).

    .venv/bin/python benchmarks/trickle.py --interval 10 --duration 180
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import wave
from datetime import datetime
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT / "tests"))

from dev_server import DevServer  # noqa: E402

DEMO = PROJECT_ROOT / "resources" / "demo_media"
ENGINES = {"in-process": {}, "resident": {"OPENTR_BROKER_URL": "embedded"}}


def write_clip(source: Path, target: Path, pad_s: float) -> None:
    from faster_whisper import decode_audio

    samples = np.concatenate([decode_audio(str(source)), np.zeros(int(16000 * pad_s), np.float32)])
    with wave.open(str(target), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def run_start_costs(home: Path, docs: dict[str, dict], dropped: dict[str, float]) -> tuple[list[float], ...]:
    """Per transcribe run: its process start -> first transcription, its creation -> that, the
    drop of its first file -> its creation (the sensor's share), and its creation -> its start
    (the queue's)."""
    import dagster as dg

    from opentr_pipeline.defs.names import RANGE_START, TRANSCRIBE_JOB

    os.environ["DAGSTER_HOME"] = str(home)
    instance = dg.DagsterInstance.get()
    from_launch, from_request, to_request, queued = [], [], [], []
    for record in instance.get_run_records(dg.RunsFilter(job_name=TRANSCRIBE_JOB)):
        tags = record.dagster_run.tags
        key = tags.get("dagster/partition") or tags.get(RANGE_START)
        doc = docs.get(key)
        if not doc or record.start_time is None:
            continue
        first = seconds(doc["started_at"])
        if first < record.start_time:
            continue  # transcribed by an earlier run
        from_launch.append(first - record.start_time)
        from_request.append(first - record.create_timestamp.timestamp())
        queued.append(record.start_time - record.create_timestamp.timestamp())
        if key in dropped:
            to_request.append(record.create_timestamp.timestamp() - dropped[key])
    instance.dispose()
    return from_launch, from_request, to_request, queued


def trickle(engine: str, root: Path, interval: float, duration: float) -> dict:
    uploads, store, home = root / "uploads", root / "store", root / "home"
    uploads.mkdir(parents=True)
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_", "WHISPER_", "OPENTR_"))}
    env.update(ENGINES[engine], UPLOAD_URI=str(uploads), STORAGE_URI=str(store), DAGSTER_HOME=str(home))
    clips = sorted(p for p in DEMO.iterdir() if p.suffix in (".ogg", ".mp3", ".wav", ".flac", ".opus"))
    count = int(duration // interval)
    staging = root / "staging"
    staging.mkdir()
    names = []
    for i in range(count):
        name = f"drop{i:03}.wav"
        write_clip(clips[i % len(clips)], staging / name, 0.5 + i / 10)
        names.append(name)
    dropped: dict[str, float] = {}
    seen: dict[str, float] = {}
    clock = time.perf_counter()
    with DevServer(PROJECT_ROOT, env, root / "dev.log"):
        started_s = time.perf_counter() - clock
        print(f"{engine}: opentr dev up in {started_s:.1f} s; dropping {count} files, one every {interval:.0f} s",
              flush=True)
        next_drop = time.monotonic()
        deadline = time.monotonic() + duration + 300
        while len(seen) < count and time.monotonic() < deadline:
            if len(dropped) < count and time.monotonic() >= next_drop:
                name = names[len(dropped)]
                dropped[name] = time.time()
                shutil.copyfile(staging / name, uploads / name)  # as a person copies a file in
                next_drop += interval
            for name in dropped:
                if name not in seen and (store / "transcripts" / f"{name}.json").exists():
                    seen[name] = time.time()
            time.sleep(0.1)
    docs = {}
    for path in (store / "transcripts").glob("*.json"):
        doc = json.loads(path.read_text())
        docs[doc["partition_key"]] = doc
    from_launch, from_request, to_request, queued = run_start_costs(home, docs, dropped)
    latency = [seen[n] - dropped[n] for n in seen]
    return {
        "engine": engine, "files": count, "transcribed": len(seen), "dev_start_s": round(started_s, 1),
        "drop_to_transcript_s": summary(latency),
        "run_launch_to_first_transcription_s": summary(from_launch),
        "run_request_to_first_transcription_s": summary(from_request),
        "drop_to_run_request_s": summary(to_request),
        "run_request_to_run_start_s": summary(queued),
        "runs": len(from_launch),
        "model_loads": len({doc.get("engine") for doc in docs.values()}),
        "audio_s": round(sum(d["duration_s"] for d in docs.values()), 1),
        "mean_x_realtime": round(statistics.mean(d["x_realtime"] for d in docs.values()), 1) if docs else 0,
    }


def summary(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    return {"median": round(statistics.median(ordered), 1), "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 1),
            "max": round(ordered[-1], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=10)
    parser.add_argument("--duration", type=float, default=180)
    parser.add_argument("--out", default="bench-results/trickle.json")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help=f"which of {', '.join(ENGINES)} to measure, comma-separated (default: both)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="opentr-trickle-"))
    results = []
    try:
        for engine in args.engines.split(","):
            results.append(trickle(engine, work / engine, args.interval, args.duration))
            print(json.dumps(results[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    rows = [("figure", *[r["engine"] for r in results])]
    for label, key in (("drop -> transcript, median s", ("drop_to_transcript_s", "median")),
                       ("drop -> transcript, p90 s", ("drop_to_transcript_s", "p90")),
                       ("run launch -> first transcription, median s", ("run_launch_to_first_transcription_s", "median")),
                       ("run request -> first transcription, median s", ("run_request_to_first_transcription_s", "median")),
                       ("drop -> run request (sensor), median s", ("drop_to_run_request_s", "median")),
                       ("run request -> run start (queue), median s", ("run_request_to_run_start_s", "median")),
                       ("model loads", ("model_loads",)), ("runs", ("runs",)),
                       ("files transcribed", ("transcribed",)), ("opentr dev start s", ("dev_start_s",))):
        values = []
        for r in results:
            value = r[key[0]]
            values.append(str(value.get(key[1], "-") if len(key) > 1 else value))
        rows.append((label, *values))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"interval_s": args.interval, "duration_s": args.duration, "results": results}, indent=2))
    print(f"\nfigures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
