"""Quality against speed over the decodings one could choose, side by side in one run.

One model loaded once (N workers sharing it, the pipeline's thread split), the long
conversations of corpus.py, and for each decoding: word error rate (mean and worst file) and x
realtime over the whole corpus, N files at a time. Plain faster-whisper decodings (batched with
several chunk lengths and batch sizes, sequential with and without VAD) sit beside the engine's
own (`engine.transcription.transcribe`: batched over chunks of joined speech, with and without
the chunk guard). This is how the pipeline's default was chosen (README, "Measured").

    .venv/bin/python benchmarks/decodings.py --files 3 --seconds 240
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from corpus import fixtures_folder, speech_clips, word_error_rate
from held_apart import CORPORA, in_memory

from opentr_pipeline.engine.devices import plan_devices
from opentr_pipeline.engine.transcription import (
    MODELS, DecodedAudio, TranscriptionOptions, resolve_batch_size, transcribe,
)
from opentr_pipeline.settings import BUNDLED_MODEL, DeviceSettings


def plain_batched(model, audio: np.ndarray, batch: int, chunk_s: int, beam: int = 5) -> tuple[str, tuple[int, float]]:
    from faster_whisper import BatchedInferencePipeline

    segments, _ = BatchedInferencePipeline(model).transcribe(
        audio, batch_size=batch, chunk_length=chunk_s, beam_size=beam, vad_filter=True, word_timestamps=True)
    return " ".join(s.text for s in segments), (0, 0.0)


def plain_sequential(model, audio: np.ndarray, vad: bool, beam: int = 5) -> tuple[str, tuple[int, float]]:
    segments, _ = model.transcribe(audio, beam_size=beam, vad_filter=vad, word_timestamps=True)
    return " ".join(s.text for s in segments), (0, 0.0)


def engine(model, audio: np.ndarray, options: TranscriptionOptions) -> tuple[str, tuple[int, float]]:
    done = transcribe(model, DecodedAudio(audio, ""), options, model_name=BUNDLED_MODEL, compute_type="int8",
                      device="cpu:0", worker=0)
    return done.text, (len(done.decoded_again), sum(end - start for start, end in done.decoded_again))


# The engine before this table: text tokens only in chunks of up to 30 s of speech, suspect chunks redone whole.
TEXT_ONLY = dict(batch_timestamps=False, chunk_speech_s=30.0)

DECODINGS: dict[str, Callable] = {
    "plain batched, batch 8, 30-s chunks (faster-whisper's default)": lambda m, a: plain_batched(m, a, 8, 30),
    "plain batched, batch 8, 20-s chunks": lambda m, a: plain_batched(m, a, 8, 20),
    "plain batched, batch 8, 15-s chunks": lambda m, a: plain_batched(m, a, 8, 15),
    "plain batched, batch 16, 30-s chunks": lambda m, a: plain_batched(m, a, 16, 30),
    "plain batched, batch 1, 30-s chunks": lambda m, a: plain_batched(m, a, 1, 30),
    "plain sequential, VAD": lambda m, a: plain_sequential(m, a, True),
    "plain sequential, no VAD": lambda m, a: plain_sequential(m, a, False),
    "engine batched, batch 8, text tokens only, 30-s chunks, no guard":
        lambda m, a: engine(m, a, TranscriptionOptions(chunk_guard=False, **TEXT_ONLY)),
    "engine batched, batch 1, beam 5, text tokens only, 30-s chunks, suspect chunks redone whole (the default two stops ago)":
        lambda m, a: engine(m, a, TranscriptionOptions(batch_size=1, beam_size=5, **TEXT_ONLY)),
    "engine batched, batch 1, timestamps, 30-s chunks, no guard":
        lambda m, a: engine(m, a, TranscriptionOptions(batch_size=1, chunk_speech_s=30.0, chunk_guard=False)),
    "engine batched, batch 1, timestamps, 30-s chunks, holes redone":
        lambda m, a: engine(m, a, TranscriptionOptions(batch_size=1, chunk_speech_s=30.0)),
    "engine batched, batch 8, timestamps, no guard": lambda m, a: engine(m, a, TranscriptionOptions(chunk_guard=False)),
    "engine batched, batch 8, timestamps, holes redone at beam 5":
        lambda m, a: engine(m, a, TranscriptionOptions(redo_beam_size=5)),
    "engine batched, batch 8, beam 2, holes redone greedy (the default on a GPU, or CPU workers of several threads)":
        lambda m, a: engine(m, a, TranscriptionOptions()),
    "engine batched, batch 1, beam 5, timestamps, holes redone greedy (the default before this stop)":
        lambda m, a: engine(m, a, TranscriptionOptions(batch_size=1, beam_size=5)),
    "engine batched, batch 1, beam 3, timestamps, holes redone greedy":
        lambda m, a: engine(m, a, TranscriptionOptions(batch_size=1, beam_size=3)),
    "engine batched, batch 1, beam 2, timestamps, holes redone greedy (the default on CPU workers of one thread)":
        lambda m, a: engine(m, a, TranscriptionOptions(batch_size=1)),
    "engine batched, batch 16, timestamps, holes redone": lambda m, a: engine(m, a, TranscriptionOptions(batch_size=16)),
    "engine batched, batch 8, greedy (beam 1) throughout": lambda m, a: engine(m, a, TranscriptionOptions(beam_size=1)),
    "engine batched, batch 1, greedy (beam 1) throughout":
        lambda m, a: engine(m, a, TranscriptionOptions(batch_size=1, beam_size=1)),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--corpus", choices=CORPORA, default="conversations",
                        help="corpus.py's conversations, or a split of the held-apart meetings (held_apart.py)")
    parser.add_argument("--only", default="", help="decodings whose name contains this text (or any of a|b|c)")
    parser.add_argument("--out", default="bench-results/decodings.json")
    args = parser.parse_args()
    clips = speech_clips(fixtures_folder())
    corpus = in_memory(args.corpus, clips, args.files, args.seconds)
    audio_s = sum(len(audio) for audio, _ in corpus) / 16000
    (device,) = plan_devices(DeviceSettings(gpu_scale_enabled=True, gpu_scale_workers=args.workers, whisper_device="cpu"))
    model = MODELS.get(BUNDLED_MODEL, device, "int8")
    print(f"{args.files} files of {args.corpus}, {audio_s:.0f} s of audio; {args.workers} workers sharing one model, "
          f"{device.cpu_threads} thread(s) each (WHISPER_BATCH_SIZE=auto: "
          f"{resolve_batch_size('auto', device)})", flush=True)
    # Warm-up: the first decode of a process pays one-off costs that would fall on the first row.
    plain_batched(model, corpus[0][0][: 30 * 16000], 8, 30)
    rows = []
    for name, decode in DECODINGS.items():
        if not any(part in name for part in args.only.split("|")):
            continue
        clock = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:
            done = list(pool.map(lambda item: decode(model, item[0]), corpus))
        wall = time.perf_counter() - clock
        wer = [word_error_rate(reference, text) for (_, reference), (text, _) in zip(corpus, done)]
        rows.append({"decoding": name, "wer_mean": round(sum(wer) / len(wer), 3), "wer_worst": round(max(wer), 3),
                     "x_realtime": round(audio_s / wall, 1), "decoded_again": sum(n for _, (n, _) in done),
                     "seconds_decoded_again": round(sum(s for _, (_, s) in done), 1),
                     "wer_by_file": [round(w, 3) for w in wer]})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| decoding | WER mean | WER worst | x realtime | stretches decoded again (s) |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['decoding']} | {row['wer_mean']:.3f} | {row['wer_worst']:.3f} | {row['x_realtime']} "
              f"| {row['decoded_again']} ({row['seconds_decoded_again']:.0f} s) |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"corpus": args.corpus, "files": args.files, "seconds": args.seconds, "workers": args.workers,
                               "audio_s": audio_s, "rows": rows}, indent=2) + "\n")
    print(f"\nfigures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
