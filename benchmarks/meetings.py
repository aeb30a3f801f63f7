"""Meetings where the truth is known: who speaks when, and what is said.

Built at run time from the fixture voices (JFK, five LibriSpeech speakers: one voice per file)
and the demo clips (one espeak-ng voice), never committed: `speakers` voices take turns of one to
three utterances each, the next turn always another voice, with pauses of 0.2-1.5 s, each
utterance at its own loudness (-6 to +3 dB). The truth is the list of turns; the reference text
is every utterance in order. The tests and the benchmarks share `build_meeting`, `der` and
`wder`.

The voices are few and each has one to four clips, so a meeting repeats its clips: a diarizer
hears the same recordings of a voice many times, which is easier than a real meeting. Say so
beside any figure from here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from corpus import SAMPLE_RATE, Clip, speech_clips

from opentr_pipeline.engine.speakers import SpeakerTurn

COLLAR_S = 0.25  # no scoring within this of a true turn's edge (the usual collar)
FRAME_S = 0.01


def voice_of(clip_name: str) -> str:
    """Which voice a clip is: the LibriSpeech speaker id, JFK, or the demo's espeak-ng voice."""
    if clip_name.startswith("librispeech"):
        return "libri-" + clip_name.split("_")[2].split("-")[0]
    if clip_name.startswith("jfk"):
        return "jfk"
    if clip_name.startswith("harvard"):
        return "espeak"
    return clip_name


def voices(clips: Sequence[Clip]) -> dict[str, list[Clip]]:
    found: dict[str, list[Clip]] = {}
    for clip in clips:
        found.setdefault(voice_of(clip.name), []).append(clip)
    return found


@dataclass(frozen=True)
class Meeting:
    audio: np.ndarray  # 16 kHz mono float32
    turns: list[SpeakerTurn]  # the truth: one per utterance (a clip's own leading and trailing quiet inside)
    reference: str
    voices: list[str]

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def build_meeting(by_voice: dict[str, list[Clip]], speakers: int, seconds: float, seed: int) -> Meeting:
    rng = random.Random(f"meeting-{seed}")
    cast = rng.sample(sorted(by_voice), speakers)
    pieces: list[np.ndarray] = []
    turns: list[SpeakerTurn] = []
    said: list[str] = []
    at, current = 0, None
    while at < seconds * SAMPLE_RATE:
        current = rng.choice([v for v in cast if v != current]) if len(cast) > 1 else cast[0]
        for number in range(rng.randint(1, 3)):
            if number:
                pause = np.zeros(int(rng.uniform(0.2, 0.8) * SAMPLE_RATE), np.float32)
                pieces.append(pause)
                at += len(pause)
            clip = rng.choice(by_voice[current])
            gain = 10 ** (rng.uniform(-6, 3) / 20)
            pieces.append(np.clip(clip.samples * gain, -1, 1).astype(np.float32))
            said.append(clip.reference)
            turns.append(SpeakerTurn(round(at / SAMPLE_RATE, 3), round((at + len(clip.samples)) / SAMPLE_RATE, 3), current))
            at += len(clip.samples)
        pause = np.zeros(int(rng.uniform(0.2, 1.5) * SAMPLE_RATE), np.float32)
        pieces.append(pause)
        at += len(pause)
    return Meeting(np.concatenate(pieces[:-1]), turns, " ".join(said), cast)


def meetings_from_fixtures(fixtures: Path, count: int, speakers: int, seconds: float, seed: int = 0) -> list[Meeting]:
    by_voice = voices(speech_clips(fixtures))
    return [build_meeting(by_voice, speakers, seconds, seed * 1000 + index) for index in range(count)]


# --- scoring ----------------------------------------------------------------------------------

def _frames(turns: Sequence[SpeakerTurn], length: int, names: dict[str, int]) -> np.ndarray:
    """-1 where no one speaks, else the speaker's index, per 10-ms frame."""
    frames = np.full(length, -1)
    for turn in turns:
        names.setdefault(turn.speaker, len(names))
        frames[int(round(turn.start / FRAME_S)):int(round(turn.end / FRAME_S))] = names[turn.speaker]
    return frames


def best_mapping(truth: Sequence[SpeakerTurn], found: Sequence[SpeakerTurn], duration_s: float) -> dict[str, str]:
    """Found speaker -> true speaker, the one-to-one mapping that agrees on the most time."""
    from scipy.optimize import linear_sum_assignment

    length = int(round(duration_s / FRAME_S)) + 1
    true_names: dict[str, int] = {}
    found_names: dict[str, int] = {}
    ref, hyp = _frames(truth, length, true_names), _frames(found, length, found_names)
    if not true_names or not found_names:
        return {}
    agree = np.zeros((len(found_names), len(true_names)))
    both = (ref >= 0) & (hyp >= 0)
    np.add.at(agree, (hyp[both], ref[both]), 1)
    rows, cols = linear_sum_assignment(-agree)
    true_by_index = {i: n for n, i in true_names.items()}
    found_by_index = {i: n for n, i in found_names.items()}
    return {found_by_index[r]: true_by_index[c] for r, c in zip(rows, cols)}


def der(truth: Sequence[SpeakerTurn], found: Sequence[SpeakerTurn], duration_s: float, collar_s: float = COLLAR_S) -> float:
    """Diarization error rate: (missed speech + false alarm + wrong speaker) / true speech, scored
    outside a collar around every true turn edge, speakers matched one to one at best."""
    length = int(round(duration_s / FRAME_S)) + 1
    mapping = best_mapping(truth, found, duration_s)
    mapped = [SpeakerTurn(t.start, t.end, mapping.get(t.speaker, f"unmatched:{t.speaker}")) for t in found]
    names: dict[str, int] = {}
    ref, hyp = _frames(truth, length, names), _frames(mapped, length, names)
    scored = np.ones(length, bool)
    collar = int(round(collar_s / FRAME_S))
    for turn in truth:
        for edge in (turn.start, turn.end):
            at = int(round(edge / FRAME_S))
            scored[max(0, at - collar):at + collar] = False
    ref, hyp = ref[scored], hyp[scored]
    speech = np.count_nonzero(ref >= 0)
    missed = np.count_nonzero((ref >= 0) & (hyp < 0))
    false_alarm = np.count_nonzero((ref < 0) & (hyp >= 0))
    confusion = np.count_nonzero((ref >= 0) & (hyp >= 0) & (ref != hyp))
    return (missed + false_alarm + confusion) / speech if speech else 0.0


def wder(truth: Sequence[SpeakerTurn], words: Sequence[tuple[float, float, str | None]], duration_s: float,
         found: Sequence[SpeakerTurn]) -> float:
    """Share of words (start, end, speaker) whose speaker is not the true speaker at the word's
    middle, speakers matched as for DER; words outside every true turn are not counted."""
    mapping = best_mapping(truth, found, duration_s)
    counted = wrong = 0
    for start, end, speaker in words:
        middle = (start + end) / 2
        true = next((t.speaker for t in truth if t.start <= middle <= t.end), None)
        if true is None:
            continue
        counted += 1
        wrong += mapping.get(speaker or "", None) != true
    return wrong / counted if counted else 0.0
