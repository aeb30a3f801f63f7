"""500 short files dropped at once under a real `opentr dev` (what `make dev` runs), some bad.

Builds N distinct short recordings from the demo clips (each with its own length of trailing
silence, so no two share a hash and none is reused), plus a few text files named `.mp3`,
renames them all into the upload folder at once, and waits until every file has a transcript or
a named failure. Meanwhile it samples the memory of every run process. Prints and writes
(bench-results/intake.json): time to settle, transcripts, failures and their reasons, the peak
number of concurrent transcriptions against the worker limit, runs, and run-process memory
(the peak of each run process; benchmarks/memory_per_file.py follows one process file by file).

    .venv/bin/python benchmarks/intake_500.py --files 500 --bad 5 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT / "tests"))

from dev_server import DevServer, wait_for  # noqa: E402

DEMO = PROJECT_ROOT / "resources" / "demo_media"


def build_corpus(folder: Path, count: int) -> float:
    """`count` distinct 16 kHz mono WAVs made from the demo clips; returns their total seconds."""
    from faster_whisper import decode_audio

    clips = [decode_audio(str(path), 16000) for path in sorted(DEMO.glob("harvard_*"))]
    total = 0.0
    for index in range(count):
        samples = np.concatenate([clips[index % len(clips)], np.zeros(160 * (index // len(clips) + 1), np.float32)])
        with wave.open(str(folder / f"clip-{index:04d}.wav"), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(16000)
            out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
        total += len(samples) / 16000
    return total


class RunMemory(threading.Thread):
    """Samples the resident memory of every run process in a group (the code server starts each
    run in a process of its own, spawned by multiprocessing)."""

    def __init__(self, group: int):
        super().__init__(daemon=True)
        self.group = group
        self.samples: dict[int, list[tuple[float, int]]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    if os.getpgid(int(entry.name)) != self.group:
                        continue
                    if b"spawn_main" not in (entry / "cmdline").read_bytes():
                        continue
                    rss = next(int(line.split()[1]) for line in (entry / "status").read_text().splitlines()
                               if line.startswith("VmRSS:"))
                except (OSError, StopIteration, ProcessLookupError):
                    continue
                self.samples.setdefault(int(entry.name), []).append((time.monotonic(), rss * 1024))
            time.sleep(0.5)

    def summary(self) -> dict:
        peaks = [max(rss for _, rss in samples) for samples in self.samples.values() if len(samples) >= 8]
        mib = 2**20
        return {"run_processes": len(peaks),
                "peak_rss_mib_min": round(min(peaks) / mib, 1) if peaks else None,
                "peak_rss_mib_median": round(float(np.median(peaks)) / mib, 1) if peaks else None,
                "peak_rss_mib_max": round(max(peaks) / mib, 1) if peaks else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--bad", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", default="bench-results/intake.json")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="opentr-intake-"))
    staging, uploads, store, home = (root / name for name in ("staging", "uploads", "store", "home"))
    for folder in (staging, uploads, store, home):
        folder.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home)
    audio_s = build_corpus(staging, args.files)
    for index in range(args.bad):
        (staging / f"bad-{index}.mp3").write_text("not audio at all\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_", "WHISPER_", "OPENTR_"))}
    env.update({"UPLOAD_URI": str(uploads), "STORAGE_URI": str(store), "DAGSTER_HOME": str(home),
                "GPU_SCALE_ENABLED": "true", "GPU_SCALE_WORKERS": str(args.workers), "PYTHONUNBUFFERED": "1"})
    expected = args.files + args.bad
    try:
        with DevServer(PROJECT_ROOT, env, log_path=root / "dagster-dev.log") as server:
            memory = RunMemory(os.getpgid(server.process.pid))
            memory.start()
            dropped = time.monotonic()
            for path in sorted(staging.iterdir()):
                os.rename(path, uploads / path.name)

            def settled() -> bool:
                done = len(list((store / "transcripts").glob("*.json"))) if (store / "transcripts").exists() else 0
                failed = {p.stem for p in store.glob("failures/*/*.json")}
                permanent = [p for p in store.glob("failures/*/*.json") if json.loads(p.read_text()).get("permanent")]
                print(f"\r{time.monotonic() - dropped:6.0f} s: {done} transcribed, {len(failed)} failed",
                      end="", flush=True)
                return done + len(permanent) >= expected

            wait_for(settled, args.timeout, f"{expected} files to settle", interval=5)
            elapsed = time.monotonic() - dropped
            memory.stop.set()
            runs = server.graphql('query { runsOrError { ... on Runs { results { status } } } }')
            statuses = [r["status"] for r in runs["runsOrError"]["results"]]
        print()
        from opentr_pipeline.outputs.throughput import summarize_devices, transcripts_frame
        from opentr_pipeline.storage import Storage

        frame = transcripts_frame(Storage(str(store)).list_json("transcripts"))
        devices = summarize_devices(frame)
        reasons = sorted({json.loads(p.read_text())["reason"].split(": ", 1)[1][:60]
                          for p in store.glob("failures/*/*.json")})
        figures = {
            "files": args.files, "bad": args.bad, "workers": args.workers, "audio_s": round(audio_s, 1),
            "settled_s": round(elapsed, 1), "x_realtime_overall": round(audio_s / elapsed, 1),
            "transcripts": len(frame), "failures": len(list(store.glob("failures/*/*.json"))),
            "failure_reasons": reasons,
            "peak_concurrency": {d.device: d.peak_concurrency for d in devices},
            "runs": {status: statuses.count(status) for status in sorted(set(statuses))},
            "memory": memory.summary(),
        }
        print(json.dumps(figures, indent=2))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(figures, indent=2))
        ok = figures["transcripts"] == args.files and all(p <= args.workers for p in figures["peak_concurrency"].values())
        return 0 if ok else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
