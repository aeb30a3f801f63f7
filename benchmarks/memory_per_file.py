"""Does a process's memory grow per file? Resident memory after each of N transcriptions.

Builds N distinct recordings of about 36 s from the demo clips and transcribes them through the
GPU executor (2 workers, as a run process does), printing the process's resident memory each
time a file finishes. A leak of the decoded audio would add 36 s x 64 kB/s = 2.3 MB per file.

    .venv/bin/python benchmarks/memory_per_file.py 60
"""

from __future__ import annotations

import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
from faster_whisper import decode_audio

from opentr_pipeline.engine.in_process import FileToTranscribe, InProcessEngine
from opentr_pipeline.settings import Settings

DEMO = Path(__file__).resolve().parent.parent / "resources" / "demo_media"


def resident_mib() -> float:
    line = next(line for line in open("/proc/self/status") if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def main(count: int) -> None:
    clips = [decode_audio(str(path), 16000) for path in sorted(DEMO.glob("harvard_*"))]
    folder = Path(tempfile.mkdtemp(prefix="opentr-memory-"))
    files = []
    for index in range(count):
        samples = np.concatenate([clips[(index + j) % 4] for j in range(5)] + [np.zeros(160 * (index + 1), np.float32)])
        path = folder / f"file-{index:03d}.wav"
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(16000)
            out.writeframes((samples * 32767).astype("<i2").tobytes())
        files.append(FileToTranscribe(path.stem, str(path)))
    engine = InProcessEngine(Settings.from_env({"GPU_SCALE_ENABLED": "true", "GPU_SCALE_WORKERS": "2"}), str(folder / "leases"))
    after: list[float] = []
    started = time.perf_counter()
    engine.transcribe_files(files, on_done=lambda key, result: after.append(resident_mib()))
    print(f"{count} files of {len(samples) / 16000:.1f} s in {time.perf_counter() - started:.1f} s")
    print("resident MiB after each file:", " ".join(f"{m:.0f}" for m in after))
    tenth = after[min(10, count - 1)]
    print(f"after file 1: {after[0]:.0f}; after file 11: {tenth:.0f}; after file {count}: {after[-1]:.0f} "
          f"({(after[-1] - tenth) / max(1, count - 11):+.2f} MiB per file since file 11)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 60)
