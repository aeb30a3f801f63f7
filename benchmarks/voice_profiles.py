"""Voices across files: how often the same voice gets the same profile, and how often two voices
are merged into one, over meetings built from the fixture voices (benchmarks/meetings.py) plus
one-voice recordings, at several profile distances side by side in one run.

Each file is diarized as the pipeline does (the transcription's speech spans, CAM++ voice prints,
engine/speakers.py), each found speaker is matched to the voice it is (DER's one-to-one mapping),
and engine/profiles.py groups them across files. Choose on one seed, report on another:

    .venv/bin/python benchmarks/voice_profiles.py --meetings 10 --seed 31
"""

from __future__ import annotations

import argparse
import random
from collections import Counter

from corpus import fixtures_folder, speech_clips
from meetings import best_mapping, meetings_from_fixtures, voice_of

from opentr_pipeline.engine.profiles import PROFILE_DISTANCE, HeardVoice, build_profiles
from opentr_pipeline.engine.speakers import SpeakerHints, SpeakerTurn, SpeechVoices, find_speakers
from opentr_pipeline.engine.transcription import speech_spans
from opentr_pipeline.engine.voices import CamPlusPlus


def heard_in(embedder, files) -> tuple[list[HeardVoice], dict[str, str]]:
    """Every speaker found in every file, and the voice each truly is."""
    heard, truth = [], {}
    for name, audio, turns in files:
        voices = SpeechVoices(embedder)
        voices.add(audio, speech_spans(audio))
        found = find_speakers(voices.prints(), SpeakerHints())
        mapping = best_mapping(turns, found.turns, len(audio) / 16000)
        for who, mean in found.voices.items():
            member = f"{name}#{who}"
            heard.append(HeardVoice(member, mean))
            truth[member] = mapping.get(who, "(none)")
    return heard, truth


def scores(heard: list[HeardVoice], truth: dict[str, str], distance: float) -> tuple[float, float, int]:
    """(share of each voice's appearances in its main profile, share of appearances in a profile
    another voice holds most of, number of profiles)."""
    profiles = build_profiles(heard, distance=distance)
    profile_of = {m: p.id for p in profiles for m in p.members}
    same, total = 0, 0
    for voice in set(truth.values()):
        members = [m for m in truth if truth[m] == voice]
        same += Counter(profile_of[m] for m in members).most_common(1)[0][1]
        total += len(members)
    merged = 0
    for profile in profiles:
        counts = Counter(truth[m] for m in profile.members)
        merged += len(profile.members) - counts.most_common(1)[0][1]
    return same / total, merged / total, len(profiles)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meetings", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--seed", type=int, default=32)
    args = parser.parse_args()
    fixtures = fixtures_folder()
    rng = random.Random(args.seed)
    files = []
    for index in range(args.meetings):
        meeting = meetings_from_fixtures(fixtures, 1, rng.choice([2, 3, 4]), args.seconds, seed=args.seed * 100 + index)[0]
        files.append((f"meeting-{index}", meeting.audio, meeting.turns))
    for clip in speech_clips(fixtures):  # each recording the project has, alone: one voice
        files.append((clip.name, clip.samples, [SpeakerTurn(0.0, len(clip.samples) / 16000, voice_of(clip.name))]))
    heard, truth = heard_in(CamPlusPlus(), files)
    voices = len(set(truth.values()))
    print(f"{len(files)} files ({args.meetings} meetings of 2-4 voices, {args.seconds:.0f} s; {len(files) - args.meetings} "
          f"one-voice clips), {len(heard)} speakers found, {voices} voices (seed {args.seed})\n")
    print("| profile distance | same voice, same profile | speakers in another voice's profile | profiles |")
    print("|---|---|---|---|")
    for distance in (0.3, 0.35, 0.4, 0.45, 0.5, 0.55):
        same, merged, count = scores(heard, truth, distance)
        mark = " (default)" if distance == PROFILE_DISTANCE else ""
        print(f"| {distance}{mark} | {same:.3f} | {merged:.3f} | {count} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
