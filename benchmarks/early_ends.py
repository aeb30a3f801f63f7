"""Why a batched chunk loses words: which chunks, what the decoder emitted, what the chunk is made of.

Each file's speech is cut into chunks of joined speech exactly as the engine cuts it
(engine/chunks.py). Every chunk is decoded batched (faster-whisper's BatchedInferencePipeline,
no timestamps, beam 5: the engine's first pass) and, as the yardstick, sequentially with
timestamps over the stretch of the recording it came from (what the chunk guard's redo does).
A chunk has lost words when the batched words, aligned with the yardstick's, miss a run of 3 or
more of them. For each such chunk it prints where the loss lies (the chunk's end, its start, or its
middle), how the decoder stopped (end of text well before the 448-token limit, or the limit), its
compression ratio (a repetition shows as above 2.4), and the chunk's make-up: spans, voices, how far
the quietest span's level sits below the loudest's (Whisper scales each 30-s window's log-mel
features to its loudest part and clamps everything 8 log10 units... 80 dB below), and whether
the lost run starts at a join of two spans.

`--variant` decodes the chunks otherwise, to test a cause: `level` evens the spans' loudness
before joining them (each span to the same RMS); `gap` puts 0.2 s of silence between joined spans;
`patience` runs the beam with patience 2; `timestamps` lets the decoder emit timestamp tokens
(faster-whisper's batched default is text tokens only).

    .venv/bin/python benchmarks/early_ends.py --corpus held-apart-tune --files 3 --seconds 240
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path

import numpy as np
from corpus import fixtures_folder, normalise, speech_clips
from held_apart import CORPORA, held_apart_conversation, in_memory

from opentr_pipeline.engine.chunks import JoinedSpeech, chunk_speech
from opentr_pipeline.engine.devices import plan_devices
from opentr_pipeline.engine.transcription import CHUNK_S, MODELS, SAMPLE_RATE, speech_spans
from opentr_pipeline.settings import BUNDLED_MODEL, DeviceSettings

LOST_RUN = 3  # words missing in a row that count as a loss
GAP_S = 0.2


def level_db(samples: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(samples.astype(np.float64) ** 2)) + 1e-9))


def joined_audio(samples, spans, variant: str) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The speech laid end to end as the variant lays it, and each span's place in it."""
    pieces, places, at = [], [], 0
    target = max(level_db(samples[a:b]) for a, b in spans)
    for a, b in spans:
        piece = samples[a:b]
        if variant == "level":
            piece = np.clip(piece * 10 ** (min(target - level_db(piece), 20) / 20), -1, 1).astype(np.float32)
        pieces.append(piece)
        places.append((at, at + len(piece)))
        at += len(piece)
        if variant == "gap":
            pieces.append(np.zeros(int(GAP_S * SAMPLE_RATE), np.float32))
            at += len(pieces[-1])
    return np.concatenate(pieces), places


def words_of(segments) -> list[tuple[str, float, float]]:
    return [(normalise(w.word), w.start, w.end) for s in segments for w in (s.words or []) if normalise(w.word)]


def holes(segments, start: float, end: float) -> dict[str, float]:
    """Stretches of the chunk (its joined-speech seconds) that no segment, or no word, covers:
    before the first, after the last, and the widest between two."""
    found = {}
    for name, spans in (("segments", [(s.start, s.end) for s in segments]),
                        ("words", [(w.start, w.end) for s in segments for w in (s.words or [])])):
        if not spans:
            found.update({f"{name}_head_s": round(end - start, 1), f"{name}_tail_s": round(end - start, 1), f"{name}_gap_s": 0.0})
            continue
        found.update({f"{name}_head_s": round(spans[0][0] - start, 1), f"{name}_tail_s": round(end - spans[-1][1], 1),
                      f"{name}_gap_s": round(max([b[0] - a[1] for a, b in zip(spans, spans[1:])] + [0.0]), 1)})
    return found


def lost_runs(batched: list[str], yardstick: list[str]) -> list[tuple[int, int]]:
    """Runs [i, j) of yardstick words that the batched words miss, LOST_RUN or longer."""
    runs, matched = [], 0
    for block in difflib.SequenceMatcher(a=yardstick, b=batched, autojunk=False).get_matching_blocks():
        if block.a - matched >= LOST_RUN:
            runs.append((matched, block.a))
        matched = block.a + block.size
    return runs


def main() -> int:
    from faster_whisper import BatchedInferencePipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=CORPORA, default="held-apart-tune")
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--variant", choices=("as-is", "level", "gap", "patience", "timestamps"), default="as-is")
    parser.add_argument("--chunk-s", type=float, default=CHUNK_S, help="the most speech in a chunk (the engine's: 30)")
    parser.add_argument("--out", default="bench-results/early_ends.json")
    args = parser.parse_args()
    clips = speech_clips(fixtures_folder())
    files = in_memory(args.corpus, clips, args.files, args.seconds)
    turns = ([held_apart_conversation(clips, args.corpus.removeprefix("held-apart-"), i, args.seconds)[2]
              for i in range(args.files)] if args.corpus.startswith("held-apart") else [[] for _ in files])
    (device,) = plan_devices(DeviceSettings(gpu_scale_enabled=True, gpu_scale_workers=1, whisper_device="cpu"))
    model = MODELS.get(BUNDLED_MODEL, device, "int8")
    rows = []
    for number, ((samples, _), truth) in enumerate(zip(files, turns)):
        spans = speech_spans(samples)
        joined = JoinedSpeech(spans)
        speech, places = joined_audio(samples, spans, args.variant)
        chunks = chunk_speech(joined.joined_spans(), int(args.chunk_s * SAMPLE_RATE))
        # the variant's chunk edges: the same spans, in its own joined audio
        span_index = {span: i for i, span in enumerate(joined.joined_spans())}
        clip = [{"start": places[span_index[c.spans[0]]][0] / SAMPLE_RATE,
                 "end": places[span_index[c.spans[-1]]][1] / SAMPLE_RATE} for c in chunks]
        found, _ = BatchedInferencePipeline(model).transcribe(
            speech, batch_size=1, vad_filter=False, language="en", clip_timestamps=clip, beam_size=5,
            word_timestamps=True, patience=2 if args.variant == "patience" else 1,
            without_timestamps=args.variant != "timestamps")
        found = list(found)
        for index, chunk in enumerate(chunks):
            start, end = clip[index]["start"], clip[index]["end"]
            mine = [s for s in found if start - 0.01 <= s.seek / 100 < end - 0.01]
            low, high = int(joined.to_recording(chunk.start)), int(joined.to_recording(chunk.end, is_end=True))
            redo, _ = model.transcribe(samples[low:high], beam_size=1, language="en", vad_filter=False,
                                       condition_on_previous_text=False, word_timestamps=True)
            yard = words_of(list(redo))
            got = [w for w, _, _ in words_of(mine)]
            runs = lost_runs(got, [w for w, _, _ in yard])
            tokens = sum(len(s.tokens) for s in mine)
            levels = [level_db(samples[a:b]) for a, b in spans[span_index[chunk.spans[0]]:span_index[chunk.spans[-1]] + 1]]
            row = {"file": number, "chunk": index, "speech_s": round(chunk.speech_s(SAMPLE_RATE), 1),
                   "spans": len(chunk.spans), "words_batched": len(got), "words_yardstick": len(yard),
                   "lost_words": sum(j - i for i, j in runs), "tokens": tokens,
                   "compression": round(max((s.compression_ratio for s in mine), default=0), 2),
                   "avg_logprob": round(min((s.avg_logprob for s in mine), default=0), 2),
                   "level_spread_db": round(max(levels) - min(levels), 1),
                   "voices": len({v for a, b, v in truth if a * SAMPLE_RATE < high and b * SAMPLE_RATE > low}),
                   **holes(mine, start, end),
                   "losses": []}
            for i, j in runs:
                lost_start = low / SAMPLE_RATE + yard[i][1]
                where = "end" if j == len(yard) else "start" if i == 0 else "middle"
                near_join = any(abs(lost_start - a / SAMPLE_RATE) < 0.6 for a, _ in spans)
                voice_change = any(abs(lost_start - a) < 0.8 for a, _, _ in truth)
                span_level = next((level_db(samples[a:b]) for a, b in spans if a / SAMPLE_RATE <= lost_start + 0.3 < b / SAMPLE_RATE), None)
                row["losses"].append({"where": where, "words": j - i, "at_s": round(lost_start, 1),
                                      "near_join": near_join, "at_utterance_start": voice_change,
                                      "level_below_loudest_db": None if span_level is None else round(max(levels) - span_level, 1),
                                      "text": " ".join(w for w, _, _ in yard[i:j])[:80]})
            rows.append(row)
            if row["losses"]:
                print(json.dumps(row), flush=True)
    lossy = [r for r in rows if r["losses"]]
    losses = [loss for r in lossy for loss in r["losses"]]
    print(f"\n{args.corpus}, variant {args.variant}, chunks of up to {args.chunk_s:g} s: {len(lossy)} of {len(rows)} chunks lost words "
          f"({sum(r['lost_words'] for r in rows)} of {sum(r['words_yardstick'] for r in rows)} words); "
          f"losses at end {sum(x['where'] == 'end' for x in losses)}, start {sum(x['where'] == 'start' for x in losses)}, "
          f"middle {sum(x['where'] == 'middle' for x in losses)}; near a join {sum(x['near_join'] for x in losses)}; "
          f"at an utterance start {sum(x['at_utterance_start'] for x in losses)}")
    if args.variant == "timestamps":
        print(f"  holes no segment covers: at a chunk's end (1.5 s or more) {sum(r['segments_tail_s'] >= 1.5 for r in rows)}, "
              f"at its start {sum(r['segments_head_s'] >= 1.5 for r in rows)}, between segments (2 s or more) "
              f"{sum(r['segments_gap_s'] >= 2.0 for r in rows)}; of the chunks that lost words, "
              f"{sum(r['segments_tail_s'] >= 1.5 or r['segments_head_s'] >= 1.5 or r['segments_gap_s'] >= 2.0 for r in lossy)} show a hole")
    for name, pick in (("lossy", lossy), ("clean", [r for r in rows if not r["losses"]])):
        if pick:
            print(f"  {name}: spans mean {np.mean([r['spans'] for r in pick]):.1f}, level spread mean "
                  f"{np.mean([r['level_spread_db'] for r in pick]):.1f} dB, speech mean {np.mean([r['speech_s'] for r in pick]):.1f} s, "
                  f"tokens mean {np.mean([r['tokens'] for r in pick]):.0f}, compression max {max(r['compression'] for r in pick)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"corpus": args.corpus, "variant": args.variant, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
