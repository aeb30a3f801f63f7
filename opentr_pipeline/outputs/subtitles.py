"""SRT, WebVTT and plain text from a transcript, shaped the way subtitle players expect.

Cues hold at most two lines of 42 characters and last at most 7 seconds (the common broadcast
guidelines); word timestamps decide where a cue starts and ends.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

MAX_LINE = 42
MAX_LINES = 2
MAX_CUE_S = 7.0


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str  # already wrapped, lines separated by "\n"


def _lines(text: str) -> list[str]:
    # Never split "well-known" across lines: a reader (or a script) re-joining lines must get
    # the words back; only a single word longer than a line is cut.
    return textwrap.wrap(text, MAX_LINE, break_long_words=True, break_on_hyphens=False)


def _wrap(text: str) -> str:
    return "\n".join(_lines(text))


def _fits(text: str) -> bool:
    return len(_lines(text)) <= MAX_LINES


def build_cues(segments: list[dict]) -> list[Cue]:
    """Group words into cues; a segment without word timings becomes evenly split cues."""
    cues: list[Cue] = []
    for segment in segments:
        words = segment.get("words") or []
        if not words:
            words = _spread_words(segment)
        current: list[dict] = []
        for word in words:
            candidate = "".join(w["word"] for w in current + [word]).strip()
            too_long = current and (
                not _fits(candidate) or word["end"] - current[0]["start"] > MAX_CUE_S
            )
            if too_long:
                cues.append(_cue(current))
                current = []
            current.append(word)
            if word["word"].rstrip().endswith((".", "?", "!")) and len(current) > 3:
                cues.append(_cue(current))
                current = []
        if current:
            cues.append(_cue(current))
    # Players misbehave on overlapping or zero-length cues.
    fixed: list[Cue] = []
    for cue in cues:
        start = max(cue.start, fixed[-1].end if fixed else 0.0)
        end = max(cue.end, start + 0.2)
        fixed.append(Cue(round(start, 3), round(end, 3), cue.text))
    return fixed


def _spread_words(segment: dict) -> list[dict]:
    tokens = segment["text"].split()
    if not tokens:
        return []
    step = (segment["end"] - segment["start"]) / len(tokens)
    return [
        {"word": " " + t, "start": segment["start"] + i * step, "end": segment["start"] + (i + 1) * step}
        for i, t in enumerate(tokens)
    ]


def _cue(words: list[dict]) -> Cue:
    text = "".join(w["word"] for w in words).strip()
    return Cue(words[0]["start"], words[-1]["end"], _wrap(text))


def _timestamp(seconds: float, separator: str) -> str:
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(cues: list[Cue]) -> str:
    blocks = [
        f"{i}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n{c.text}\n"
        for i, c in enumerate(cues, start=1)
    ]
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    # WebVTT reads "<" as the start of a tag and "&" as an entity: players would drop the text.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(cues: list[Cue]) -> str:
    blocks = [
        f"{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}\n{_vtt_escape(c.text)}\n"
        for c in cues
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_txt(segments: list[dict]) -> str:
    lines = [s["text"].strip() for s in segments if s["text"].strip()]
    return "\n".join(lines) + ("\n" if lines else "")


def preview(cues: list[Cue], words: int, ends: int = 3) -> str:
    """What the UI shows of a file's subtitles: the first and last cues with their times and the
    word count, so an hour-long recording reads as a glance, not as a wall of text."""
    if not cues:
        return "(no speech: no cues)"
    def line(cue: Cue) -> str:
        return f"{_timestamp(cue.start, '.')[:-4]} {cue.text.replace(chr(10), ' ')}"
    shown = [line(c) for c in cues[:ends]]
    if len(cues) > 2 * ends:
        shown += [f"... {len(cues) - 2 * ends} more cue(s) ..."] + [line(c) for c in cues[-ends:]]
    else:
        shown += [line(c) for c in cues[ends:]]
    return f"{len(cues)} cues, {words} words, {_timestamp(cues[-1].end, '.')[:-4]} long\n" + "\n".join(shown)
