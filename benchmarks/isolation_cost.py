"""What putting the decoder behind a process boundary costs per file (engine/isolation.py).

Probes and decodes each speech fixture (and the demo clips) in this process and in a child
forked from the fork server, alternately, several rounds, and prints the medians side by side
with the audio's length, so the cost can be set against a file's transcription time.

    .venv/bin/python benchmarks/isolation_cost.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
from pathlib import Path

from opentr_pipeline.engine.isolation import probe_isolated
from opentr_pipeline.engine.media import decode_windows, probe
from opentr_pipeline.engine.transcription import SAMPLE_RATE, WINDOW_S, load_audio

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("OPENTR_FIXTURES", ROOT.parent / "shared" / "fixtures" / "audio"))


def decode_here(path: Path) -> int:
    """load_audio's work in this process: hash, then decode from the same open file."""
    with open(path, "rb") as handle:
        digest = hashlib.sha256()
        while block := handle.read(1 << 20):
            digest.update(block)
        handle.seek(0)
        return sum(w.samples.size for w in decode_windows(handle, path.name, SAMPLE_RATE, round(WINDOW_S * SAMPLE_RATE)))


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    files = sorted(p for p in FIXTURES.iterdir() if p.suffix in {".wav", ".flac", ".mp3"})
    files += sorted(p for p in (ROOT / "resources" / "demo_media").iterdir() if p.suffix != ".json")
    started = time.perf_counter()
    load_audio(files[0])  # the fork server starts once per process: timed apart
    print(f"fork server start (once per process): {1000 * (time.perf_counter() - started):.0f} ms\n")
    rows = {p: {"probe": [], "probe_iso": [], "decode": [], "decode_iso": []} for p in files}
    for _ in range(args.rounds):
        for path in files:
            rows[path]["probe"].append(timed(lambda: probe(path)))
            rows[path]["probe_iso"].append(timed(lambda: probe_isolated(path)))
            rows[path]["decode"].append(timed(lambda: decode_here(path)))
            rows[path]["decode_iso"].append(timed(lambda: load_audio(path)))
    print("| file | audio s | probe ms (here / child) | decode ms (here / child) | added per file ms |")
    print("|---|---|---|---|---|")
    added = []
    for path, times in rows.items():
        median = {k: 1000 * statistics.median(v) for k, v in times.items()}
        extra = median["probe_iso"] - median["probe"] + median["decode_iso"] - median["decode"]
        added.append(extra)
        seconds = probe(path).duration_s
        print(f"| {path.name[:40]} | {seconds:.1f} | {median['probe']:.1f} / {median['probe_iso']:.1f} | "
              f"{median['decode']:.1f} / {median['decode_iso']:.1f} | {extra:.1f} |")
    print(f"\nmedian added per file (probe + decode in a child): {statistics.median(added):.1f} ms "
          f"over {len(files)} files, {args.rounds} rounds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
