"""The pipeline side: `opentr run` as a subprocess on fresh folders, in process or on a
resident worker, timed as a whole command and over its transcripts' own span."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from corpus import CorpusFile, wer_by_file
from plan import (
    PIPELINE_SPAN, PIPELINE_SPEAKERS, PIPELINE_WHOLE, RESIDENT_SPAN, RESIDENT_WHOLE, BenchError, BenchPlan, Measurement,
    _cpu_s,
)

from opentr_pipeline.outputs.throughput import peak_overlap
from opentr_pipeline.settings import PROJECT_ROOT, Settings

def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def pipeline_end_to_end(corpus: list[CorpusFile], plan: BenchPlan, workers: int,
                        work_dir: Path, resident: bool = False, speakers: bool = False) -> list[Measurement]:
    """`opentr run` on fresh folders: the whole command, and the span its transcripts record.

    `resident`: a resident worker with N slots is started first (Redis and `opentr worker`, its
    model loaded once, as under `make dev` or a cluster), and `opentr run` sends it the files.
    `speakers`: with who spoke when, as by default: one row, the whole command, with DER and WDER.
    """
    if speakers:
        root = work_dir / f"speakers-{workers}w-{time.time_ns()}"
        return [speakers_row(corpus, pipeline_end_to_end_on(corpus, plan, workers, root, {}, speakers=True)[1], root)]
    if resident:
        from opentr_pipeline.engine.local import local_engine

        root = work_dir / f"engine-{workers}w-{time.time_ns()}"
        environ = {**os.environ, **plan.pipeline_env(workers), "UPLOAD_URI": str(root / "uploads"),
                   "STORAGE_URI": str(root / "store"), "DAGSTER_HOME": str(root / "home")}
        device = plan.device_for(workers)
        with local_engine(Settings.from_env(environ), root / "engine", [device.label], device.cpu_threads) as broker:
            return pipeline_end_to_end_on(corpus, plan, workers, root, {"OPENTR_BROKER_URL": broker})
    return pipeline_end_to_end_on(corpus, plan, workers, work_dir / f"pipeline-{workers}w-{time.time_ns()}", {})


def pipeline_end_to_end_on(corpus: list[CorpusFile], plan: BenchPlan, workers: int, root: Path,
                           extra_env: dict[str, str], speakers: bool = False) -> list[Measurement]:
    resident = bool(extra_env)
    uploads, store, home = root / "uploads", root / "store", root / "home"
    uploads.mkdir(parents=True)
    for item in corpus:
        shutil.copy(item.path, uploads / item.path.name)
    env = {**os.environ, **plan.pipeline_env(workers, speakers), **extra_env,
           "UPLOAD_URI": str(uploads), "STORAGE_URI": str(store), "DAGSTER_HOME": str(home)}
    log_path = root / "opentr-run.log"
    command = [sys.executable, "-m", "opentr_pipeline.cli", "run"]
    cpu_before = _cpu_s(os.times(), children=True)
    clock = time.perf_counter()
    with open(log_path, "w") as log:
        finished = subprocess.run(command, env=env, cwd=PROJECT_ROOT, stdout=log,
                                  stderr=subprocess.STDOUT, check=False)
    whole_s = time.perf_counter() - clock
    cpu_s = _cpu_s(os.times(), children=True) - cpu_before
    output = log_path.read_text()
    if finished.returncode != 0:
        raise BenchError(f"opentr run exited with {finished.returncode}; its output ends:\n"
                         + "\n".join(output.splitlines()[-25:]))
    docs = [json.loads(p.read_text()) for p in sorted((store / "transcripts").glob("*.json"))]
    if len(docs) != len(corpus):
        raise BenchError(f"opentr run wrote {len(docs)} transcripts for {len(corpus)} files")
    intervals = [(_seconds(d["started_at"]), _seconds(d["finished_at"])) for d in docs]
    audio_s = round(sum(float(d["duration_s"]) for d in docs), 3)
    span = max(end for _, end in intervals) - min(start for start, _ in intervals)
    shared = {
        "cpu_threads_per_worker": plan.device_for(workers).cpu_threads,
        "devices": sorted({d["device"] for d in docs}),
        "workers_used": sorted({int(d["worker"]) for d in docs}),
        "peak_concurrency": peak_overlap(intervals),
        "mean_file_transcription_s": round(sum(float(d["wall_s"]) for d in docs) / len(docs), 3),
        "runs": output.count("\nrun ") + output.startswith("run "),
        "chunks_decoded_again": sum(len(d.get("decoded_again", [])) for d in docs),
    }
    wer = wer_by_file(corpus, {Path(d["source_uri"]).name: d["text"] for d in docs})
    return [
        Measurement(
            configuration=RESIDENT_SPAN if resident else PIPELINE_SPAN, workers=workers, files=len(docs), audio_s=audio_s,
            wall_s=round(span, 3),
            includes="first transcription start to last end (transcripts' started_at/finished_at)",
            details=shared, wer=wer,
        ),
        Measurement(
            configuration=RESIDENT_WHOLE if resident else PIPELINE_WHOLE, workers=workers, files=len(docs), audio_s=audio_s,
            wall_s=round(whole_s, 3),
            includes="the whole `opentr run` subprocess: start-up, Dagster, probing, "
                     + ("transcription on the resident worker (model loaded before), " if resident
                        else "model load, transcription, ") + "subtitles, throughput report",
            details={**shared, "overhead_outside_span_s": round(whole_s - span, 3),
                     "cpu_s": round(cpu_s, 2), "cores_busy": round(cpu_s / whole_s, 2)}, wer=wer,
        ),
    ]


def speakers_row(corpus: list[CorpusFile], whole: Measurement, root: Path) -> Measurement:
    """The whole-command row of a run with speakers, scored against who truly spoke when: DER
    (0.25-s collar) from the speakers asset's turns, WDER over every word, voices counted right."""
    from meetings import der, voice_of, wder

    from opentr_pipeline.engine.speakers import SpeakerTurn

    ders, wders, right, shares = [], [], 0, []
    for item in corpus:
        doc = json.loads((root / "store" / "transcripts" / f"{item.path.name}.json").read_text())
        record = json.loads((root / "store" / "speakers" / f"{item.path.name}.json").read_text())
        truth = [SpeakerTurn(start, end, voice_of(name)) for start, end, name in item.turns]
        found = [SpeakerTurn(start, end, who) for start, end, who in record["turns"]]
        words = [(w["start"], w["end"], w.get("speaker")) for s in doc["segments"] for w in s["words"]]
        ders.append(der(truth, found, item.duration_s))
        wders.append(wder(truth, words, item.duration_s, found))
        right += len(record["speakers"]) == len({t.speaker for t in truth})
        shares.append(doc["speakers_s"] / max(doc["wall_s"], 1e-9))
    return Measurement(
        configuration=PIPELINE_SPEAKERS, workers=whole.workers, files=whole.files, audio_s=whole.audio_s,
        wall_s=whole.wall_s, includes=whole.includes + "; with speakers (OPENTR_DIARIZATION=embedded)",
        details={**whole.details, "der_mean": round(sum(ders) / len(ders), 4), "der_worst": round(max(ders), 4),
                 "wder_mean": round(sum(wders) / len(wders), 4), "voices_right": f"{right}/{len(corpus)}",
                 "speakers_share_of_transcription": round(sum(shares) / len(shares), 3)},
        wer=whole.wer,
    )
