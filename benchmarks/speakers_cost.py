"""What who-spoke-when and language detection cost the pipeline: `opentr run` over the same
meetings as transcription alone (speakers and languages off), with speakers, and as it runs by
default (speakers and languages on), side by side in one run (fresh stores and instances each),
as whole commands, with WER for each and DER / WDER / voices right for the runs with speakers.

    .venv/bin/python benchmarks/speakers_cost.py --meetings 4 --speakers 3 --seconds 120
    (--workers N: GPU_SCALE_WORKERS=N; without it, the default plan)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from corpus import fixtures_folder, word_error_rate, write_wav
from meetings import der, meetings_from_fixtures, wder

from opentr_pipeline.engine.speakers import SpeakerTurn
from opentr_pipeline.settings import PROJECT_ROOT

OPENTR = Path(sys.executable).with_name("opentr")


CONFIGURATIONS = {  # name: (OPENTR_DIARIZATION, WHISPER_MULTILINGUAL_MODEL)
    "transcription alone": ("off", "off"),
    "with speakers": ("embedded", "off"),
    "default (speakers and languages)": ("embedded", "bundled-base"),
}


def run(root: Path, meetings, diarization: str, languages: str, workers: int | None) -> tuple[float, list[dict]]:
    for folder in ("uploads", "store", "home"):
        (root / folder).mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "dagster.yaml", root / "home" / "dagster.yaml")
    for number, meeting in enumerate(meetings):
        write_wav(root / "uploads" / f"meeting-{number}.wav", meeting.audio)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_", "WHISPER_", "OPENTR_"))}
    env.update(UPLOAD_URI=str(root / "uploads"), STORAGE_URI=str(root / "store"), DAGSTER_HOME=str(root / "home"),
               OPENTR_DIARIZATION=diarization, WHISPER_MULTILINGUAL_MODEL=languages, OPENTR_FILES_PER_RUN="1")
    if workers:
        env.update(GPU_SCALE_ENABLED="true", GPU_SCALE_WORKERS=str(workers))
    started = time.perf_counter()
    done = subprocess.run([str(OPENTR), "run"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"opentr run ({diarization}) failed:\n{done.stdout}\n{done.stderr}")
    docs = []
    for n in range(len(meetings)):
        doc = json.loads((root / "store" / "transcripts" / f"meeting-{n}.wav.json").read_text())
        record = root / "store" / "speakers" / f"meeting-{n}.wav.json"  # the speakers asset's turns
        doc["turns"] = json.loads(record.read_text())["turns"] if record.exists() else []
        docs.append(doc)
    return seconds, docs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meetings", type=int, default=4)
    parser.add_argument("--speakers", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--workers", type=int, default=None, help="GPU_SCALE_WORKERS (default: the default plan)")
    args = parser.parse_args()
    meetings = meetings_from_fixtures(fixtures_folder(), args.meetings, args.speakers, args.seconds, seed=7)
    audio_s = sum(m.duration_s for m in meetings)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="opentr-speakers-cost-") as folder:
        for number, (name, (diarization, languages)) in enumerate(CONFIGURATIONS.items()):
            rows[name] = run(Path(folder) / str(number), meetings, diarization, languages, args.workers)
    plan = f"GPU_SCALE_WORKERS={args.workers}" if args.workers else "the default plan"
    print(f"{args.meetings} meetings of {args.speakers} voices, {audio_s:.0f} s of audio, {plan}, "
          "opentr run as a whole command (one run)\n")
    print("| configuration | whole command s | x realtime | of transcription alone | WER mean | DER mean | DER worst "
          "| WDER mean | voices right | speakers share of wall |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    alone = rows["transcription alone"][0]
    for name, (seconds, docs) in rows.items():
        wer = statistics.mean(word_error_rate(m.reference, d["text"]) for m, d in zip(meetings, docs))
        head = f"| {name} | {seconds:.1f} | {audio_s / seconds:.1f} | {alone / seconds:.2f} | {wer:.3f}"
        if CONFIGURATIONS[name][0] == "off":
            print(f"{head} | - | - | - | - | - |")
            continue
        ders, wders, right = [], [], 0
        for meeting, doc in zip(meetings, docs):
            found = [SpeakerTurn(start, end, who) for start, end, who in doc["turns"]]
            words = [(w["start"], w["end"], w["speaker"]) for s in doc["segments"] for w in s["words"]]
            ders.append(der(meeting.turns, found, meeting.duration_s))
            wders.append(wder(meeting.turns, words, meeting.duration_s, found))
            right += len(doc["speakers"]) == args.speakers
        share = sum(d["speakers_s"] for d in docs) / sum(d["wall_s"] for d in docs)
        print(f"{head} | {statistics.mean(ders):.3f} | {max(ders):.3f} | {statistics.mean(wders):.3f} | "
              f"{right}/{len(meetings)} | {share:.2f} |")
    print(f"\nthe default pipeline keeps {alone / rows['default (speakers and languages)'][0]:.2f} of transcription "
          "alone's throughput (issue 30's budget: 0.75 or more, aim 0.85)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
