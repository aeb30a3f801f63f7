"""How the upload sensor's tick time and its stored state grow with the number of uploads.

Makes N small files under a temporary upload folder, evaluates the real upload sensor against
a real SQLite instance tick after tick as the daemon would (partitions added, state carried),
and prints, per N: the first tick (all files new, waiting), the tick that requests them all,
a quiet tick (nothing new), and the bytes of the cursor Dagster stores with every tick.

    .venv/bin/python benchmarks/sensor_scale.py 500 10000 100000
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def measure(count: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="opentr-sensor-scale-"))
    try:
        uploads, home = root / "uploads", root / "home"
        for folder in (uploads, home):
            folder.mkdir()
        shutil.copy(PROJECT_ROOT / "dagster.yaml", home)
        for index in range(count):
            (uploads / f"batch{index // 1000:03d}").mkdir(exist_ok=True)
            (uploads / f"batch{index // 1000:03d}" / f"call {index:06d}.mp3").write_bytes(b"x" * 64)
        os.environ.update({"UPLOAD_URI": str(uploads), "STORAGE_URI": str(root / "store"),
                           "DAGSTER_HOME": str(home)})
        import dagster as dg

        from opentr_pipeline.definitions import build_defs
        from opentr_pipeline.settings import Settings

        instance = dg.DagsterInstance.get()
        repository = build_defs(Settings.from_env()).get_repository_def()
        sensor = repository.get_sensor_def("upload_sensor")
        cursor, figures = None, {"files": count, "cursor bytes": 0, "ticks": 0, "runs": 0, "slowest": 0.0}

        def tick() -> tuple[float, int]:
            nonlocal cursor
            context = dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(),
                                              cursor=cursor, repository_def=repository)
            started = time.perf_counter()
            data = sensor.evaluate_tick(context)
            seconds = time.perf_counter() - started
            for request in data.dynamic_partitions_requests or []:
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            cursor = data.cursor
            figures["cursor bytes"] = max(figures["cursor bytes"], len(cursor or ""))
            return seconds, len(data.run_requests or [])

        figures["first tick"], _ = tick()  # every file seen once: waiting
        while True:  # ticks until every file is requested
            seconds, runs = tick()
            figures["ticks"] += 1
            figures["runs"] += runs
            figures["slowest"] = max(figures["slowest"], seconds)
            if not runs:
                break
        figures["quiet tick"], _ = tick()
        (uploads / "late arrival.mp3").write_bytes(b"x" * 64)
        first, _ = tick()
        second, runs = tick()
        figures["one more file"] = first + second
        assert runs == 1, "the late file was requested"
        instance.dispose()
        return figures
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(counts: list[int]) -> None:
    print("| files | first look s | ticks to request all | slowest tick s | runs | quiet tick s "
          "| one more file, 2 ticks s | largest cursor bytes |")
    print("|---|---|---|---|---|---|---|---|")
    for count in counts:
        f = measure(count)
        print(f"| {count} | {f['first tick']:.2f} | {f['ticks'] - 1} | {f['slowest']:.2f} | {f['runs']} | "
              f"{f['quiet tick']:.2f} | {f['one more file']:.2f} | {f['cursor bytes']} |", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [500, 10_000])
