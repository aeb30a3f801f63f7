"""Memory of one long recording: peak resident memory, decoded in windows against whole.

Builds a conversation of the given length from the fixtures (benchmarks/corpus.py, with its
reference text), encodes it as stereo Opus (a long meeting recording is small on disk and
large decoded), and measures each way in a fresh process: the peak resident memory above what
the process held before the file was opened (interpreter, libraries and the loaded model),
the time, and, when transcribing, the word error rate.

    .venv/bin/python benchmarks/memory_long_file.py --minutes 30              # decode and transcribe
    .venv/bin/python benchmarks/memory_long_file.py --minutes 234 --decode-only  # 3.9 h
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WHOLE = 1e9  # a window longer than any recording: the file decoded in one piece, as before windows


def resident_mib(field: str = "VmRSS") -> float:
    line = next(line for line in open("/proc/self/status") if line.startswith(field))
    return int(line.split()[1]) / 1024


def measure(path: str, window_s: float, transcribe: bool) -> dict:
    """In this process: the peak memory of decoding (and transcribing) `path` above the baseline."""
    from opentr_pipeline.engine.transcription import load_audio

    model = None
    if transcribe:
        from opentr_pipeline.engine.devices import DevicePlan
        from opentr_pipeline.engine.transcription import MODELS
        from opentr_pipeline.settings import BUNDLED_MODEL

        model = MODELS.get(BUNDLED_MODEL, DevicePlan("cpu", 0, 1, os.cpu_count() or 1), "int8")
    base = resident_mib()
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) counts from here
    started = time.perf_counter()
    audio = load_audio(path, Path(path).name, window_s=window_s)
    result: dict = {"window_s": window_s, "base_mib": round(base)}
    if model is None:
        seconds = len(audio.samples) / 16000 + sum(len(w.samples) / 16000 for w in audio.rest or ())
        result["duration_s"] = round(seconds, 1)
    else:
        from opentr_pipeline.engine.transcription import TranscriptionOptions, transcribe as run

        done = run(model, audio, TranscriptionOptions(), model_name="tiny.en", compute_type="int8", device="cpu:0", worker=0)
        result.update(duration_s=done.duration_s, text=done.text, decoded_again=len(done.decoded_again))
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["peak_above_base_mib"] = round(resident_mib("VmHWM") - base)
    return result


def measured_in_a_fresh_process(path: Path, window_s: float, transcribe: bool) -> dict:
    command = [sys.executable, __file__, "--measure", str(path), "--window-s", str(window_s)]
    if transcribe:
        command.append("--transcribe")
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def write_opus(path: Path, audio: np.ndarray) -> None:
    """Stereo 48 kHz Opus at 32 kbit/s, as a meeting recorder writes it."""
    import av

    with av.open(str(path), "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=48000, layout="stereo")
        stream.bit_rate = 32000
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=48000)
        step = 16000 * 60
        for start in range(0, len(audio), step):
            piece = (np.clip(audio[start:start + step], -1, 1) * 32767).astype("<i2")
            # Packed stereo is interleaved, L R L R: each sample twice in a row, one row.
            frame = av.AudioFrame.from_ndarray(np.repeat(piece, 2)[None, :], format="s16", layout="stereo")
            frame.rate = 16000
            for resampled in resampler.resample(frame):
                out.mux(stream.encode(resampled))
        out.mux(stream.encode(None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--decode-only", action="store_true", help="decode, do not transcribe")
    parser.add_argument("--window-s", type=float, default=None, help="the windowed run's window (default: the engine's)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--transcribe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.window_s, args.transcribe)))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    import corpus

    from opentr_pipeline.engine.transcription import WINDOW_S

    audio, reference = corpus.conversation(corpus.speech_clips(corpus.fixtures_folder()), 1, args.minutes * 60)
    path = Path(tempfile.mkdtemp(prefix="opentr-long-")) / f"meeting-{args.minutes:g}min.opus"
    write_opus(path, audio)
    del audio
    print(f"{path.name}: {args.minutes:g} min, {path.stat().st_size / 2**20:.1f} MiB on disk")
    print("| decoding | window | peak memory above the process's own | seconds | WER | chunks decoded again |")
    print("|---|---|---|---|---|---|")
    for window_s in (args.window_s or WINDOW_S, WHOLE):
        row = measured_in_a_fresh_process(path, window_s, not args.decode_only)
        wer = "-" if args.decode_only else f"{corpus.word_error_rate(reference, row['text']):.3f}"
        what = "decode only" if args.decode_only else "decode and transcribe"
        window = "whole file" if window_s == WHOLE else f"{window_s:g} s"
        again = row.get("decoded_again", "-")
        print(f"| {what} | {window} | {row['peak_above_base_mib']} MiB (base {row['base_mib']} MiB) | {row['seconds']} "
              f"| {wer} | {again} |", flush=True)
    path.unlink()


if __name__ == "__main__":
    main()
