"""The throughput report's own cost at scale: synthetic transcript records (known intervals in
work periods separated by idle gaps, as a year of use would leave them), through the report's
functions; prints seconds and peak memory for each step.

    .venv/bin/python benchmarks/report_scale.py 100000
"""

from __future__ import annotations

import argparse
import resource
import time
from datetime import datetime, timedelta, timezone


def records(count: int, per_period: int = 100, workers: int = 4) -> list[dict]:
    """`count` transcripts of 60 s audio taking 2 s each, `workers` side by side, in periods of
    `per_period` files a day apart (idle in between)."""
    origin = datetime(2025, 1, 1, tzinfo=timezone.utc)
    docs = []
    for number in range(count):
        period, within = divmod(number, per_period)
        start = origin + timedelta(days=period, seconds=2 * (within // workers))
        docs.append({"partition_key": f"f{number}.wav", "device": f"cuda:{number % 2}", "worker": within % workers,
                     "duration_s": 60.0, "wall_s": 2.0, "x_realtime": 30.0,
                     "started_at": start.isoformat(), "finished_at": (start + timedelta(seconds=2)).isoformat(),
                     "model": "large-v3", "compute_type": "float16", "host": "gpu-1"})
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("count", type=int, nargs="?", default=100_000)
    count = parser.parse_args().count
    from opentr_pipeline.outputs.throughput import markdown_summary, timeline_png, transcripts_frame

    docs = records(count)
    steps = {}
    clock = time.perf_counter()
    frame = transcripts_frame(docs)
    steps["frame"] = time.perf_counter() - clock
    clock = time.perf_counter()
    summary = markdown_summary(frame, {"gpu-1/cuda:0": 4, "gpu-1/cuda:1": 4})
    steps["summary (busy, periods, devices)"] = time.perf_counter() - clock
    clock = time.perf_counter()
    png = timeline_png(frame)
    steps["timeline png"] = time.perf_counter() - clock
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{count} transcripts: " + ", ".join(f"{k} {v:.2f} s" for k, v in steps.items())
          + f"; peak RSS {peak:.0f} MiB; summary {len(summary)} chars, png {len(png) // 1024} KiB")
    print(summary.splitlines()[0])


if __name__ == "__main__":
    main()
