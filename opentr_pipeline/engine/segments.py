"""A transcript's segments and words, as the engine keeps them (faster-whisper's, in recording time)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentr_pipeline.engine.chunks import JoinedSpeech

SAMPLE_RATE = 16000


@dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float
    speaker: str | None = None  # engine/speakers.py: None where speakers are off


@dataclass
class Segment:
    id: int
    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)
    speaker: str | None = None  # one per segment: a change of speaker splits it
    language: str = ""  # the language its chunk was detected in and decoded as (engine/languages.py)


def plain_segment(segment, offset: float = 0.0, language: str = "") -> Segment:
    """faster-whisper's segment as ours, moved by `offset` seconds and rounded to the millisecond."""
    words = [Word(round(w.start + offset, 3), round(w.end + offset, 3), w.word, round(w.probability, 4))
             for w in (segment.words or [])]
    return Segment(0, round(segment.start + offset, 3), round(segment.end + offset, 3), segment.text.strip(), words,
                   language=language)


def in_recording(segment: Segment, joined: "JoinedSpeech", offset_s: float, language: str) -> Segment:
    """A segment decoded from joined speech (its times in seconds of it), in the recording's time:
    each word within the speech span that holds it (chunks.JoinedSpeech), `offset_s` added."""
    def at(sample: float) -> float:
        return round(offset_s + sample / SAMPLE_RATE, 3)

    def word(w: Word) -> Word:
        start, end = joined.word_to_recording(w.start * SAMPLE_RATE, w.end * SAMPLE_RATE)
        return replace(w, start=at(start), end=at(end))

    return replace(segment, start=at(joined.to_recording(segment.start * SAMPLE_RATE)),
                   end=at(joined.to_recording(segment.end * SAMPLE_RATE, is_end=True)),
                   words=[word(w) for w in segment.words], language=language)
