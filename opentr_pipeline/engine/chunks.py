"""Batched decoding that keeps the words: speech chunks, and the guard that catches dropped ones.

faster-whisper's batched pipeline decodes each chunk of up to 30 s of speech in one pass, and the
model sometimes ends a chunk early or skips a stretch of it: its speech is gone, silently
(faster-whisper #1179). Chunks are made of the speech alone, joined end to end with the pauses
between turns cut out, as faster-whisper's own batching does: chunks that kept their pauses lost
words in 16 of 80 chunks of the benchmark conversations, joined speech in 1 of 68 (README,
"Measured"). The chunks are decoded with timestamp tokens, which faster-whisper's batching leaves
out: text alone, the decoder ended chunks of meetings early (8 tokens for 30 s of speech) or skipped
their first turns, losing 232 of 1,833 words of the held-apart tune meetings, against 59 with
timestamps (benchmarks/early_ends.py). Timestamps also say where a decode stopped: the guard
decodes again only the holes no segment covers, sequentially, with timestamps, greedily (see
TranscriptionOptions.redo_beam_size), and a whole chunk only where its words fall far short of its
speech with no hole to show where. Decoded as text alone, a chunk whose words are too few for its
speech, or whose last word ends well before its speech does, is decoded again whole.

All of it is pure: spans, segment and word times in, chunks, verdicts and recording times out.
"""

from __future__ import annotations

import bisect
import statistics
from dataclasses import dataclass, field
from typing import Sequence

# A chunk is judged only when it holds enough speech for a words-per-second figure to mean something.
MIN_SPEECH_S = 1.5
# Chunks with this much speech set the file's own speaking rate (median of their rates).
RATE_SPEECH_S = 5.0
# Below this share of the file's rate, words are missing. A chunk of joined speech spans several
# turns, so its rate stays near the file's: 0.88 of it and up over the 68 chunks of the benchmark
# conversations, against 0.60 and 0.80 for chunks that skipped a stretch. A false alarm costs one
# chunk's redo; a miss costs its words.
MIN_RATE_SHARE = 0.85
# The last word ending this long before the chunk's speech ends: the decode stopped early.
EARLY_END_S = 1.5


@dataclass
class Chunk:
    """A stretch of speech decoded as one window, and the speech spans in it."""

    start: int  # samples
    end: int
    spans: list[tuple[int, int]] = field(default_factory=list)  # speech, in samples

    def speech_s(self, rate: int) -> float:
        return sum(end - start for start, end in self.spans) / rate

    def speech_end_s(self, rate: int) -> float:
        return self.spans[-1][1] / rate

    def part(self, start: int, end: int) -> "Chunk":
        """The stretch [start, end) of this chunk, with its speech spans cut to it."""
        return Chunk(start, end, [(max(a, start), min(b, end)) for a, b in self.spans if a < end and b > start])


class JoinedSpeech:
    """A recording's speech spans laid end to end, as batched decoding hears them, and the way
    from a time in that joined speech back to the recording's own time."""

    def __init__(self, spans: Sequence[tuple[int, int]]):
        self.spans = list(spans)  # in the recording, samples, in order, not overlapping
        self.starts = [0]  # where each span begins in the joined speech
        for start, end in self.spans:
            self.starts.append(self.starts[-1] + end - start)

    def joined_spans(self) -> list[tuple[int, int]]:
        """The spans in joined time: each begins where the one before it ends."""
        return list(zip(self.starts, self.starts[1:]))

    def _span_at(self, sample: float, is_end: bool = False) -> int:
        """The span holding `sample`; a sample on the line between two is the later one's first,
        or with `is_end` the earlier one's last."""
        find = bisect.bisect_left if is_end else bisect.bisect_right
        return min(max(find(self.starts, sample) - 1, 0), len(self.spans) - 1)

    def _in_span(self, index: int, sample: float) -> float:
        start, end = self.spans[index]
        return start + min(max(sample - self.starts[index], 0), end - start)

    def to_recording(self, sample: float, is_end: bool = False) -> float:
        """A position in the joined speech (samples) as a position in the recording."""
        return self._in_span(self._span_at(sample, is_end), sample)

    def word_to_recording(self, start: float, end: float) -> tuple[float, float]:
        """A word's start and end (samples of joined speech) in the recording, both in the span
        that holds its middle: a word decoded across a cut does not stretch over the pause."""
        index = self._span_at((start + end) / 2)
        return self._in_span(index, start), self._in_span(index, end)


def chunk_speech(spans: Sequence[tuple[int, int]], max_samples: int) -> list[Chunk]:
    """Consecutive speech spans merged into windows of at most `max_samples` (of joined speech,
    given JoinedSpeech.joined_spans: then a chunk is up to 30 s of speech, as in faster-whisper)."""
    chunks: list[Chunk] = []
    for start, end in spans:
        if chunks and end - chunks[-1].start <= max_samples:
            chunks[-1].end = end
            chunks[-1].spans.append((start, end))
        else:
            chunks.append(Chunk(start, end, [(start, end)]))
    return chunks


def speaking_rates(chunks: Sequence[Chunk], word_ends: Sequence[Sequence[float]], rate: int) -> list[float]:
    """Words per second of speech of the chunks with speech enough to tell."""
    return [len(ends) / chunk.speech_s(rate) for chunk, ends in zip(chunks, word_ends)
            if chunk.speech_s(rate) >= RATE_SPEECH_S and ends]


def chunks_to_decode_again(chunks: Sequence[Chunk], word_ends: Sequence[Sequence[float]], rate: int,
                           earlier_rates: Sequence[float] = ()) -> list[int]:
    """Indices of the chunks whose decoded words cannot be all of their speech.

    `word_ends[i]`: the end time (seconds, in the recording) of every word decoded for chunk i.
    `earlier_rates`: speaking rates of the same recording's earlier windows, so that a window of
    a few chunks is judged by the file's own rate.
    """
    rates = [*earlier_rates, *speaking_rates(chunks, word_ends, rate)]
    typical = statistics.median(rates) if rates else None
    suspect = []
    for index, (chunk, ends) in enumerate(zip(chunks, word_ends)):
        speech = chunk.speech_s(rate)
        if speech < MIN_SPEECH_S:
            continue
        too_few = not ends or (typical is not None and len(ends) / speech < MIN_RATE_SHARE * typical)
        if too_few or max(ends) < chunk.speech_end_s(rate) - EARLY_END_S:
            suspect.append(index)
    return suspect


# With timestamp tokens the decoder says where it stopped: the stretch of a chunk that no
# segment covers is what it lost, and only that is decoded again. On the held-apart tune meetings
# (benchmarks/early_ends.py) every chunk that lost its last words left 2.3-5.0 s uncovered at its
# end, every other chunk 0.7 s or less; between two segments 1.2 s at most was left uncovered.
HOLE_S = 2.0  # uncovered between two segments
# A chunk covered end to end whose words still fall this far below the file's rate skipped words
# inside its segments: decoded again whole. Lower than MIN_RATE_SHARE since holes catch the rest:
# chunks that lost nothing came out as low as 0.83 on the tune meetings (a slow voice's turns).
MIN_RATE_SHARE_TIMED = 0.7


def stretches_to_decode_again(chunks: Sequence[Chunk], segments: Sequence[Sequence[tuple[float, float]]],
                              word_ends: Sequence[Sequence[float]], rate: int,
                              earlier_rates: Sequence[float] = ()) -> dict[int, list[tuple[int, int]]]:
    """What to decode again of chunks decoded with timestamps: chunk index -> stretches (samples
    of joined speech, as the chunks'): the holes no segment covers, or, where there is none, the
    whole chunk if its words fall far short of its speech.

    `segments[i]`: (start, end) seconds of joined speech of chunk i's decoded segments, in order;
    `word_ends` and `earlier_rates` as for `chunks_to_decode_again`.
    """
    rates = [*earlier_rates, *speaking_rates(chunks, word_ends, rate)]
    typical = statistics.median(rates) if rates else None
    again: dict[int, list[tuple[int, int]]] = {}
    for index, (chunk, times, ends) in enumerate(zip(chunks, segments, word_ends)):
        speech = chunk.speech_s(rate)
        if speech < MIN_SPEECH_S:
            continue
        edges = [chunk.start / rate, *(t for pair in times for t in pair), chunk.speech_end_s(rate)]
        holes = []
        for number, (covered_to, next_from) in enumerate(zip(edges[::2], edges[1::2])):
            at_edge = number == 0 or number == len(times)
            if next_from - covered_to >= (EARLY_END_S if at_edge else HOLE_S):
                holes.append((max(chunk.start, int(covered_to * rate)), min(chunk.end, int(next_from * rate))))
        if holes:
            again[index] = holes
        elif not ends or (typical is not None and len(ends) / speech < MIN_RATE_SHARE_TIMED * typical):
            again[index] = [(chunk.start, chunk.end)]
    return again


# Where a window of a long recording may end: in a pause the detector found, or after this much
# silence at the window's end (speech that runs on into the next window is never cut).
WINDOW_END_SILENCE_S = 2.0


def window_cut(spans: Sequence[tuple[int, int]], length: int, rate: int) -> int:
    """Where to end a window of `length` samples so that no speech span is cut: the middle of
    its last pause between two spans, or of the silence after its last span when that silence is
    long enough; the whole window when it holds no speech, or no pause at all."""
    if not spans:
        return length
    cuts = [(end + start) // 2 for (_, end), (start, _) in zip(spans, spans[1:]) if start > end]
    if length - spans[-1][1] >= WINDOW_END_SILENCE_S * rate:
        cuts.append((spans[-1][1] + length) // 2)
    if not cuts and spans[0][0] > 0:
        cuts.append(spans[0][0] // 2)
    return max(cuts) if cuts else length
