"""Batched decoding that keeps the words: speech chunks, and the guard that catches dropped ones.

faster-whisper's batched pipeline decodes each chunk of up to 30 s without timestamps, and the
model sometimes ends a chunk early: its speech is gone, silently (faster-whisper #1179). On long
recordings with several speakers taking turns that lost up to a fifth of the words (README,
"Measured"). Batching stays, and every decoded chunk is checked against its own speech: a chunk
whose text is far too short for the speech the VAD found in it, or whose last word ends well
before its speech does, is decoded again on its own, sequentially, with timestamps (greedily: see
TranscriptionOptions.redo_beam_size).

Both functions are pure: spans and word times in, chunks and verdicts out.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Sequence

# A chunk is judged only when it holds enough speech for a words-per-second figure to mean something.
MIN_SPEECH_S = 1.5
# Chunks with this much speech set the file's own speaking rate (median of their rates).
RATE_SPEECH_S = 5.0
# Below this share of the file's rate, words are missing (speakers differ by less than 2x).
MIN_RATE_SHARE = 0.5
# The last word ending this long before the chunk's speech ends: the decode stopped early.
EARLY_END_S = 1.5


@dataclass
class Chunk:
    """A stretch of the recording decoded as one window: speech spans, with the pauses between them."""

    start: int  # samples
    end: int
    spans: list[tuple[int, int]] = field(default_factory=list)  # speech, in samples

    def speech_s(self, rate: int) -> float:
        return sum(end - start for start, end in self.spans) / rate

    def speech_end_s(self, rate: int) -> float:
        return self.spans[-1][1] / rate


def chunk_speech(spans: Sequence[tuple[int, int]], max_samples: int) -> list[Chunk]:
    """Consecutive speech spans merged into windows of at most `max_samples`, pauses kept inside.

    The pauses stay in (unlike faster-whisper's own merge, which cuts them out) so that a chunk
    decoded again is the same stretch of audio, and its timestamps are the recording's own.
    """
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
