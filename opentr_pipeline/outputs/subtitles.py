"""SRT, WebVTT and plain text from a transcript, shaped the way subtitle players expect.

Cues hold at most two lines of 42 characters and last at most 7 seconds (the common broadcast
guidelines); word timestamps decide where a cue starts and ends. Where the transcript has
speakers, a cue never holds two (segments are split at a change, engine/speakers.py): SRT marks
the speaker at each change (`[Maria] ...`), WebVTT gives every cue its voice span
(`<v Maria>...`), and the text goes turn by turn (`Maria: ...`).
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
    speaker: str | None = None  # its speaker's id, where the transcript has speakers


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
        first = len(cues)
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
        for index in range(first, len(cues)):
            cues[index] = Cue(cues[index].start, cues[index].end, cues[index].text, segment.get("speaker"))
    # Players misbehave on overlapping or zero-length cues.
    fixed: list[Cue] = []
    for cue in cues:
        start = max(cue.start, fixed[-1].end if fixed else 0.0)
        end = max(cue.end, start + 0.2)
        fixed.append(Cue(round(start, 3), round(end, 3), cue.text, cue.speaker))
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


def speaker_names(doc: dict) -> dict[str, str]:
    """A transcript record's speaker ids and the names people gave them."""
    return {s["id"]: s["name"] for s in doc.get("speakers") or [] if s.get("name")}


def speaker_name(speaker: str | None, names: dict[str, str] | None) -> str:
    return (names or {}).get(speaker or "", speaker or "")


def to_srt(cues: list[Cue], names: dict[str, str] | None = None) -> str:
    """SRT has no speaker field: the name leads the cue where the speaker changes."""
    blocks, last = [], None
    for i, c in enumerate(cues, start=1):
        text = c.text
        if c.speaker and c.speaker != last:
            text = f"[{speaker_name(c.speaker, names)}] {text}"
        last = c.speaker
        blocks.append(f"{i}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n{text}\n")
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    # WebVTT reads "<" as the start of a tag and "&" as an entity: players would drop the text.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(cues: list[Cue], names: dict[str, str] | None = None, language: str = "") -> str:
    """Every cue with a speaker carries a voice span, as players and screen readers expect; the
    header names the language (the one with the most speech), as YouTube's and others' do."""
    def text(c: Cue) -> str:
        if not c.speaker:
            return _vtt_escape(c.text)
        return f"<v {_vtt_escape(speaker_name(c.speaker, names))}>{_vtt_escape(c.text)}"

    blocks = [f"{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}\n{text(c)}\n" for c in cues]
    header = f"WEBVTT\nLanguage: {language}\n\n" if language else "WEBVTT\n\n"
    return header + "\n".join(blocks)


def to_txt(segments: list[dict], names: dict[str, str] | None = None) -> str:
    """A line per segment; with speakers, a paragraph per turn, led by its speaker's name."""
    spoken = [s for s in segments if s["text"].strip()]
    if not any(s.get("speaker") for s in spoken):
        lines = [s["text"].strip() for s in spoken]
        return "\n".join(lines) + ("\n" if lines else "")
    turns: list[tuple[str | None, list[str]]] = []
    for s in spoken:
        if turns and turns[-1][0] == s.get("speaker"):
            turns[-1][1].append(s["text"].strip())
        else:
            turns.append((s.get("speaker"), [s["text"].strip()]))
    return "\n\n".join(f"{speaker_name(who, names)}: {' '.join(texts)}" for who, texts in turns) + "\n"


def preview(cues: list[Cue], words: int, ends: int = 3, names: dict[str, str] | None = None) -> str:
    """What the UI shows of a file's subtitles: the first and last cues with their times and
    speakers, and the word count, so an hour-long recording reads as a glance, not as a wall of text."""
    if not cues:
        return "(no speech: no cues)"
    def line(cue: Cue) -> str:
        who = f"[{speaker_name(cue.speaker, names)}] " if cue.speaker else ""
        return f"{_timestamp(cue.start, '.')[:-4]} {who}{cue.text.replace(chr(10), ' ')}"
    shown = [line(c) for c in cues[:ends]]
    if len(cues) > 2 * ends:
        shown += [f"... {len(cues) - 2 * ends} more cue(s) ..."] + [line(c) for c in cues[-ends:]]
    else:
        shown += [line(c) for c in cues[ends:]]
    return f"{len(cues)} cues, {words} words, {_timestamp(cues[-1].end, '.')[:-4]} long\n" + "\n".join(shown)
