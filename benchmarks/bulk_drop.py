"""A pile of long recordings dropped at once under a real `make dev`, against the best plain
script at the same quality on the same files, in one run.

Builds --files conversations of --seconds each with their reference text (corpus.py), then:

- plain faster-whisper, batched and sequential, --workers threads sharing one model (plain.py):
  x realtime and word error rate of each;
- `opentr dev` as `make dev` starts it (OPENTR_BROKER_URL=embedded: a private Redis and a
  resident worker with GPU_SCALE_WORKERS=--workers), every file copied into the upload folder at
  once, timed from the first copy to the last transcript, and the WER of what it wrote.

Prints the rows side by side and the ratio of the pipeline (drop to last transcript) to the
fastest plain script whose worst-file WER is as good (plan.SAME_QUALITY).

    .venv/bin/python benchmarks/bulk_drop.py --files 8 --seconds 120 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from corpus import build_corpus, fixtures_folder, speech_clips, wer_by_file
from plain import raw_faster_whisper
from plan import Measurement, make_plan
from report import best_plain_of_same_quality, format_table

from opentr_pipeline.settings import PROJECT_ROOT, Settings

sys.path.insert(0, str(PROJECT_ROOT / "tests"))
from dev_server import DevServer, wait_for  # noqa: E402

PIPELINE_DROP = "pipeline under make dev (first copy -> last transcript)"


def pipeline_drop(corpus, workers: int, root: Path, env_plan: dict[str, str]) -> Measurement:
    uploads, store, home = root / "uploads", root / "store", root / "home"
    uploads.mkdir(parents=True)
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_", "WHISPER_", "OPENTR_"))}
    env.update(env_plan, OPENTR_BROKER_URL="embedded", UPLOAD_URI=str(uploads), STORAGE_URI=str(store),
               DAGSTER_HOME=str(home))
    with DevServer(PROJECT_ROOT, env, root / "dev.log") as server:
        # A pile lands on a `make dev` that is already up: the start-up of its processes (imports,
        # the first sensor tick) is not charged to the pile.
        wait_for(lambda: {"SKIPPED", "SUCCESS"} & set(server.sensor_tick_statuses("upload_sensor", limit=1)),
                 120, "the upload sensor's first tick", interval=0.5)
        started, dropped_at = time.perf_counter(), time.time()
        for item in corpus:
            shutil.copyfile(item.path, uploads / item.path.name)
        done = lambda: len(list((store / "transcripts").glob("*.json"))) >= len(corpus)  # noqa: E731
        wait_for(done, 1800, f"{len(corpus)} transcripts", interval=0.2)
        wall = time.perf_counter() - started
    docs = [json.loads(p.read_text()) for p in (store / "transcripts").glob("*.json")]
    # Where the wall time went: before the first transcription began (sensor, run launch,
    # probing), the transcriptions' own span, and how much audio the chunk guard decoded again.
    first = min(datetime.fromisoformat(d["started_at"]).timestamp() for d in docs)
    last = max(datetime.fromisoformat(d["finished_at"]).timestamp() for d in docs)
    split = {"chunks_decoded_again": sum(len(d.get("decoded_again", [])) for d in docs),
             "audio_s_decoded_again": round(sum(end - start for d in docs for start, end in d.get("decoded_again", [])), 1),
             "drop_to_first_transcription_s": round(first - dropped_at, 1),
             "transcription_span_s": round(last - first, 1),
             # Slot-seconds in that span with no file in hand: waits between files, and the tail.
             "slots_idle_s": round(workers * (last - first) - sum(d["wall_s"] for d in docs), 1),
             "mean_file_transcription_s": round(sum(d["wall_s"] for d in docs) / len(docs), 2),
             **first_run_timeline(home, dropped_at, first)}
    print(f"pipeline: {split}", flush=True)
    return Measurement(PIPELINE_DROP, workers, len(docs), round(sum(c.duration_s for c in corpus), 3), round(wall, 3),
                       "first copy into the upload folder to the last transcript written, under a running opentr dev",
                       details=split,
                       wer=wer_by_file(corpus, {Path(d["source_uri"]).name: d["text"] for d in docs}))


def first_run_timeline(home: Path, dropped_at: float, first_transcription: float) -> dict[str, float]:
    """Seconds from the drop to each step of the first run's way to its first transcription:
    the sensor's request (the run is created), the run's process start, the transcript step's
    start (after media_file probed the run's files)."""
    import dagster as dg

    from opentr_pipeline.defs.names import TRANSCRIBE_JOB

    os.environ["DAGSTER_HOME"] = str(home)
    instance = dg.DagsterInstance.get()
    try:
        records = [r for r in instance.get_run_records(dg.RunsFilter(job_name=TRANSCRIBE_JOB)) if r.start_time]
        if not records:
            return {}
        run = min(records, key=lambda r: r.create_timestamp)
        steps = {entry.step_key: entry.timestamp for entry in
                 instance.all_logs(run.dagster_run.run_id, of_type=dg.DagsterEventType.STEP_START)}
        created = run.create_timestamp.timestamp()
        return {"drop_to_run_created_s": round(created - dropped_at, 1),
                "run_created_to_process_start_s": round(run.start_time - created, 1),
                "process_start_to_transcript_step_s": round(steps.get("transcript", run.start_time) - run.start_time, 1),
                "transcript_step_to_first_transcription_s":
                    round(first_transcription - steps.get("transcript", run.start_time), 1)}
    finally:
        instance.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="bench-results/bulk_drop.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="opentr-bulk-"))
    try:
        corpus = build_corpus(speech_clips(fixtures_folder()), work / "corpus", args.files, args.seconds)
        print(f"{len(corpus)} conversations, {sum(c.duration_s for c in corpus):.0f} s of audio", flush=True)
        plan = make_plan(Settings.from_env(), "cpu", None, None)
        rows = []
        for sequential, vad in ((False, True), (True, True), (True, False)):
            rows.append(raw_faster_whisper(corpus, plan, args.workers, sequential=sequential, vad=vad))
            print(f"{rows[-1].configuration}: {rows[-1].x_realtime:.1f}x, WER worst {rows[-1].wer_worst:.3f}", flush=True)
        rows.append(pipeline_drop(corpus, args.workers, work / "dev", plan.pipeline_env(args.workers)))
        print(f"{rows[-1].configuration}: {rows[-1].x_realtime:.1f}x, WER worst {rows[-1].wer_worst:.3f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(format_table(rows))
    pipeline = rows[-1]
    yardstick = best_plain_of_same_quality(rows, pipeline)
    ratio = pipeline.x_realtime / yardstick.x_realtime if yardstick else None
    if yardstick:
        print(f"\n{PIPELINE_DROP} / {yardstick.configuration}: {ratio:.2f} (target 0.95)")
    else:
        best = min(rows[:-1], key=lambda m: (m.wer_worst, -m.x_realtime))
        print(f"\nno plain script reached the pipeline's words (worst-file WER {pipeline.wer_worst:.3f}); against the "
              f"most accurate, {best.configuration} (worst {best.wer_worst:.3f}): "
              f"{pipeline.x_realtime / best.x_realtime:.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": [r.to_dict() for r in rows], "ratio_to_best_plain_same_quality": ratio},
                              indent=2) + "\n")
    print(f"figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
