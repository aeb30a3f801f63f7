"""Decoding again what a batched pass lost: the stretches the chunk guard found (engine/chunks.py).

A stretch is decoded as the part of the recording it came from, pauses and all, with timestamps,
greedily (TranscriptionOptions.redo_beam_size): sequential decoding finds its way through the
turns, and its times need no map. Where that decode stops short of the stretch's end again
(Whisper ended its window with a lone timestamp, as if the speech were over: sequential decoding
then skips the rest of its 30-s window), it goes on from its last word, twice at most. Where the
worker decodes several chunks at once (batch above 1: a GPU, a CPU worker of several threads),
the stretches of a window are first decoded together, in one batched call per language as the
chunks were, and only what that leaves goes the sequential way.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from opentr_pipeline.engine.chunks import EARLY_END_S, JoinedSpeech
from opentr_pipeline.engine.segments import SAMPLE_RATE, Segment, in_recording, plain_segment

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

FOLLOW_UPS = 2  # decodes that go on from the last word of a stretch that stopped short


@dataclass(frozen=True)
class Lost:
    """A stretch of a chunk to decode again, in samples of joined speech, and its language."""

    chunk: int
    start: int
    end: int
    language: str


@dataclass
class Redone:
    """What decoding again gave: new segments per chunk, in recording time, and the recording
    stretches decoded again ([start, end] seconds), for the transcript's record."""

    segments: dict[int, list[Segment]]
    stretches: list[list[float]]


def decode_again(decoder_for: Callable[[str], "WhisperModel"], samples: np.ndarray, speech: np.ndarray,
                 joined: JoinedSpeech, lost: list[Lost], *, batch_size: int, beam_size: int,
                 task_for: Callable[["WhisperModel"], str], offset_s: float) -> Redone:
    """Every lost stretch decoded again: batched first where the worker batches, then each
    stretch (or what the batched call left of it) sequentially from the recording."""
    redone = Redone({}, [])
    batched = batch_size > 1 and len(lost) > 1
    remaining = _batched(decoder_for, speech, joined, lost, batch_size, beam_size, task_for, offset_s, redone) \
        if batched else lost
    for item in remaining:
        start, end = int(joined.to_recording(item.start)), int(joined.to_recording(item.end, is_end=True))
        decoder = decoder_for(item.language)
        redone.segments.setdefault(item.chunk, []).extend(
            _sequential(decoder, samples, start, end, item.language, beam_size, task_for(decoder), offset_s))
        if not batched:  # what a batched call left is part of a stretch it recorded already
            redone.stretches.append([round(offset_s + start / SAMPLE_RATE, 3), round(offset_s + end / SAMPLE_RATE, 3)])
    return redone


def _sequential(decoder: "WhisperModel", samples: np.ndarray, start: int, end: int, language: str, beam_size: int,
                task: str, offset_s: float) -> list[Segment]:
    segments: list[Segment] = []
    at = start
    for _ in range(1 + FOLLOW_UPS):
        decoded, _ = decoder.transcribe(samples[at:end], vad_filter=False, condition_on_previous_text=False,
                                        word_timestamps=True, language=language or None, task=task, beam_size=beam_size)
        found = [plain_segment(s, offset_s + at / SAMPLE_RATE, language) for s in decoded]
        ends = [word.end for segment in found for word in segment.words]
        segments += found
        if not ends:  # nothing heard: silence, or nothing this model can say
            break
        last = int((max(ends) - offset_s) * SAMPLE_RATE)
        if (end - last) / SAMPLE_RATE < EARLY_END_S:
            break
        at = last
    return segments


def _batched(decoder_for, speech, joined, lost, batch_size, beam_size, task_for, offset_s, redone) -> list[Lost]:
    """The stretches decoded as chunks of one batched call per language; returns what is left:
    each stretch's part after the last segment of its decode, where that is EARLY_END_S or more."""
    from faster_whisper import BatchedInferencePipeline

    left = []
    for language in dict.fromkeys(item.language for item in lost):
        group = [item for item in lost if item.language == language]
        decoder = decoder_for(language)
        found, _ = BatchedInferencePipeline(decoder).transcribe(
            speech, batch_size=batch_size, vad_filter=False, language=language or None, task=task_for(decoder),
            without_timestamps=False, word_timestamps=True, beam_size=beam_size,
            clip_timestamps=[{"start": item.start / SAMPLE_RATE, "end": item.end / SAMPLE_RATE} for item in group])
        starts = [item.start * decoder.frames_per_second // SAMPLE_RATE for item in group]
        by_item: list[list[Segment]] = [[] for _ in group]
        for segment in found:  # a segment's seek is its clip's first frame
            by_item[max(0, bisect.bisect_right(starts, segment.seek + 1) - 1)].append(plain_segment(segment))
        for item, decoded in zip(group, by_item):
            covered = max((segment.end for segment in decoded), default=item.start / SAMPLE_RATE)
            redone.segments.setdefault(item.chunk, []).extend(in_recording(s, joined, offset_s, language) for s in decoded)
            redone.stretches.append([round(offset_s + joined.to_recording(item.start) / SAMPLE_RATE, 3),
                                     round(offset_s + joined.to_recording(item.end, is_end=True) / SAMPLE_RATE, 3)])
            if item.end / SAMPLE_RATE - covered >= EARLY_END_S:
                left.append(Lost(item.chunk, max(item.start, int(covered * SAMPLE_RATE)), item.end, language))
    return left
