"""Subtitles from real transcripts and from hand-made segments, read back the way a player would.

The real transcripts come from the bundled tiny.en model on the speech fixtures (loaded once
for the module); the synthetic segments reach the edges a short clip never does: hour-long
timestamps, words longer than a line, segments without word timings, overlapping segments.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest

from opentr_pipeline.outputs.subtitles import (
    MAX_CUE_S, MAX_LINE, MAX_LINES, Cue, build_cues, to_srt, to_txt, to_vtt,
)

def _time(separator: str) -> str:
    return r"(\d{2}):(\d{2}):(\d{2})" + separator + r"(\d{3})"


SRT_BLOCK = re.compile(
    r"(?P<index>\d+)\n" + _time(",") + " --> " + _time(",") + r"\n(?P<text>(?:[^\n]+\n)+)"
)
VTT_BLOCK = re.compile(_time(r"\.") + " --> " + _time(r"\.") + r"\n(?P<text>(?:[^\n]+\n)+)")


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def parse_srt(srt: str) -> list[Cue]:
    """Read an SRT file back; fails on anything a strict player would reject."""
    if not srt:
        return []
    assert srt.endswith("\n") and not srt.endswith("\n\n\n")
    cues = []
    for number, block in enumerate(srt.rstrip("\n").split("\n\n"), start=1):
        match = SRT_BLOCK.fullmatch(block + "\n")
        assert match, f"malformed SRT block:\n{block}"
        groups = match.groups()
        assert int(match["index"]) == number
        cues.append(Cue(_seconds(*groups[1:5]), _seconds(*groups[5:9]), match["text"].rstrip("\n")))
    return cues


def parse_vtt(vtt: str) -> list[Cue]:
    assert vtt.startswith("WEBVTT\n\n")
    body = vtt[len("WEBVTT\n\n"):]
    if not body:
        return []
    cues = []
    for block in body.rstrip("\n").split("\n\n"):
        match = VTT_BLOCK.fullmatch(block + "\n")
        assert match, f"malformed WebVTT block:\n{block}"
        groups = match.groups()
        cues.append(Cue(_seconds(*groups[0:4]), _seconds(*groups[4:8]), match["text"].rstrip("\n")))
    return cues


def transcript_words(segments: list[dict]) -> list[str]:
    return " ".join(s["text"] for s in segments).split()


def assert_good_subtitles(segments: list[dict]) -> list[Cue]:
    """Every rule a subtitle file must keep, checked on the files as written."""
    cues = build_cues(segments)
    srt_cues = parse_srt(to_srt(cues))
    vtt_cues = parse_vtt(to_vtt(cues))
    assert len(srt_cues) == len(vtt_cues) == len(cues)
    previous_end = 0.0
    for cue, from_srt, from_vtt in zip(cues, srt_cues, vtt_cues):
        assert from_srt.start == from_vtt.start == pytest.approx(cue.start, abs=0.0011)
        assert from_srt.end == from_vtt.end == pytest.approx(cue.end, abs=0.0011)
        assert from_srt.text == cue.text
        lines = from_srt.text.split("\n")
        single_word = " " not in cue.text.replace("\n", "")
        assert all(0 < len(line) <= MAX_LINE for line in lines), lines
        assert len(lines) <= MAX_LINES or single_word, lines
        assert from_srt.end - from_srt.start <= MAX_CUE_S + 0.001 or single_word, from_srt
        assert from_srt.start < from_srt.end
        assert from_srt.start >= previous_end - 0.0005, "cues overlap or go back in time"
        previous_end = from_srt.end
    # Nothing lost, nothing added: the words come back in order (a word longer than a line is
    # cut across lines, so compare the characters, and the words where no word is that long).
    cue_text = " ".join(c.text for c in srt_cues)
    assert "".join(cue_text.split()) == "".join(transcript_words(segments))
    if all(len(w) <= MAX_LINE for w in transcript_words(segments)):
        assert cue_text.split() == transcript_words(segments)
    return cues


# --- real transcripts -------------------------------------------------------------------


@pytest.fixture(scope="module")
def transcribe_audio():
    """The bundled model, loaded once for this module, as a function from audio to segments."""
    from opentr_pipeline.engine.devices import DevicePlan
    from opentr_pipeline.engine.transcription import DecodedAudio, ModelCache, TranscriptionOptions, transcribe

    model = ModelCache().get("bundled-tiny.en", DevicePlan("cpu", 0, 1, 2), "int8")

    def run(audio: np.ndarray) -> list[dict]:
        transcript = transcribe(
            model, DecodedAudio(audio, ""), TranscriptionOptions(),
            model_name="bundled-tiny.en", compute_type="int8", device="cpu:0", worker=0,
        )
        return transcript.to_dict()["segments"]

    return run


@pytest.fixture(scope="module")
def jfk_segments(fixtures_dir: Path, transcribe_audio) -> list[dict]:
    from opentr_pipeline.engine.transcription import load_audio

    return transcribe_audio(load_audio(fixtures_dir / "jfk.flac").samples)


@pytest.fixture(scope="module")
def medley_segments(fixtures_dir: Path, transcribe_audio) -> list[dict]:
    """Four speakers back to back (about 25 s): long enough for many cues and sentence breaks."""
    from opentr_pipeline.engine.transcription import load_audio

    names = [
        "jfk.flac",
        "librispeech_dev-clean_1272-128104-0000_mr_quilter.wav",
        "librispeech_test-clean_61-70968-0002.wav",
        "librispeech_test-clean_4507-16021-0012.wav",
    ]
    pause = np.zeros(8000, np.float32)
    audio = np.concatenate([part for name in names for part in (load_audio(fixtures_dir / name).samples, pause)])
    return transcribe_audio(audio)


def test_jfk_subtitles_are_well_formed(jfk_segments: list[dict]) -> None:
    cues = assert_good_subtitles(jfk_segments)
    assert len(cues) >= 2  # 11 s of speech cannot fit one 7 s cue
    assert cues[0].start < 1.0 and cues[-1].end == pytest.approx(jfk_segments[-1]["end"], abs=0.5)
    srt = to_srt(cues)
    assert srt.startswith("1\n00:00:00,")
    assert "country" in srt.lower()


def test_cue_words_are_the_timed_words(jfk_segments: list[dict]) -> None:
    cues = build_cues(jfk_segments)
    timed = [w["word"].strip() for s in jfk_segments for w in s["words"]]
    assert " ".join(c.text for c in cues).split() == timed


def test_medley_subtitles_are_well_formed(medley_segments: list[dict]) -> None:
    cues = assert_good_subtitles(medley_segments)
    assert len(cues) >= 4
    assert cues[-1].end > 20.0


def test_txt_holds_the_transcript(jfk_segments: list[dict], medley_segments: list[dict]) -> None:
    for segments in (jfk_segments, medley_segments):
        text = to_txt(segments)
        assert text.endswith("\n") and "\n\n" not in text
        assert text.split() == transcript_words(segments)
        assert len(text.splitlines()) == len([s for s in segments if s["text"].strip()])


def test_recording_without_speech_gives_empty_valid_files(fixtures_dir: Path, transcribe_audio) -> None:
    from opentr_pipeline.engine.transcription import load_audio

    segments = transcribe_audio(load_audio(fixtures_dir / "squirrel_nospeech.wav").samples)
    assert segments == []  # VAD finds no speech in a squirrel's chatter
    cues = assert_good_subtitles(segments)
    assert (to_srt(cues), to_vtt(cues), to_txt(segments)) == ("", "WEBVTT\n\n", "")


# --- synthetic segments -------------------------------------------------------------------


def timed_segment(words: list[str], start: float = 0.0, step: float = 0.3, gap: float = 0.0) -> dict:
    timed, clock = [], start
    for word in words:
        timed.append({"word": " " + word, "start": round(clock, 3), "end": round(clock + step, 3)})
        clock += step + gap
    return {"start": timed[0]["start"], "end": timed[-1]["end"], "text": " ".join(words), "words": timed}


def test_empty_transcript_gives_empty_but_valid_files() -> None:
    assert build_cues([]) == []
    assert to_srt([]) == ""
    assert to_vtt([]) == "WEBVTT\n\n"
    assert to_txt([]) == ""
    blank = [{"start": 0.0, "end": 2.0, "text": "  ", "words": []}]
    assert build_cues(blank) == [] and to_txt(blank) == ""


def test_srt_and_vtt_layout_exactly() -> None:
    cues = [Cue(0.0, 1.5, "Hello there."), Cue(3725.5, 3727.25, "An hour later,\nstill talking.")]
    assert to_srt(cues) == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n"
        "\n"
        "2\n01:02:05,500 --> 01:02:07,250\nAn hour later,\nstill talking.\n"
    )
    assert to_vtt(cues) == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:01.500\nHello there.\n"
        "\n"
        "01:02:05.500 --> 01:02:07.250\nAn hour later,\nstill talking.\n"
    )


def test_many_random_segments_keep_every_rule() -> None:
    vocabulary = (
        "the a I so we extraordinary well-known state-of-the-art budget meeting Q3 okay, "
        "right. really? yes! counterintuitively thanks"
    ).split()
    generator = random.Random(7)
    for _ in range(60):
        segments, clock = [], 0.0
        for _ in range(generator.randint(1, 5)):
            words = [generator.choice(vocabulary) for _ in range(generator.randint(1, 60))]
            step = generator.choice([0.05, 0.2, 0.35, 0.8])
            segment = timed_segment(words, start=clock, step=step, gap=generator.choice([0.0, 0.1]))
            segments.append(segment)
            clock = segment["end"] + generator.choice([-0.5, 0.0, 1.0])  # overlaps happen in real output
        assert_good_subtitles(segments)


def test_segments_without_word_timings_are_spread_evenly() -> None:
    words = ("word " * 80).split()
    segment = {"start": 10.0, "end": 40.0, "text": " ".join(words), "words": []}
    cues = assert_good_subtitles([segment])
    assert cues[0].start == 10.0 and cues[-1].end == pytest.approx(40.0)


def test_sentence_end_closes_a_cue() -> None:
    cues = build_cues([timed_segment("one two three four. five six seven eight nine. ten".split())])
    assert [c.text for c in cues] == ["one two three four.", "five six seven eight nine.", "ten"]


def test_hyphenated_words_are_never_split_across_lines() -> None:
    words = ["word"] * 7 + ["state-of-the-art"] + ["word"] * 6  # "state-" would fit on line one
    cues = assert_good_subtitles([timed_segment(words, step=0.1)])
    assert any("state-of-the-art" in line for c in cues for line in c.text.split("\n"))


def test_a_word_longer_than_a_line_is_the_only_exception() -> None:
    url = "https://example.org/" + "very-long-path/" * 7  # 125 characters, no spaces
    cues = assert_good_subtitles([timed_segment(["see", url, "for", "details"])])
    long_cue = next(c for c in cues if url[:MAX_LINE] in c.text)
    assert long_cue.text.replace("\n", "") == url


def test_a_word_spoken_longer_than_seven_seconds_stays_one_cue() -> None:
    cues = assert_good_subtitles([timed_segment(["Goooooal", "scored"], step=9.0)])
    assert [c.text for c in cues] == ["Goooooal", "scored"]


def test_zero_length_words_still_get_visible_cues() -> None:
    cues = assert_good_subtitles([timed_segment("a burst of words with no duration".split(), step=0.0)])
    assert all(c.end - c.start >= 0.2 - 1e-9 for c in cues)


def test_vtt_escapes_markup_characters() -> None:
    cues = build_cues([timed_segment("R&D spend <rose> 3 > 2".split())])
    vtt = to_vtt(cues)
    assert "R&amp;D spend &lt;rose&gt; 3 &gt; 2" in vtt
    assert "R&D spend <rose> 3 > 2" in to_srt(cues)  # SRT has no escapes


def test_the_ui_preview_of_an_hour_stays_a_glance() -> None:
    """Issue 17: the subtitles asset's metadata shows the first and last cues and the word count;
    an hour-long recording is seven lines, not a wall of text."""
    from opentr_pipeline.outputs.subtitles import Cue, preview

    hour = [Cue(i * 3.0, i * 3.0 + 2.5, f"cue {i} says\nsomething") for i in range(1200)]
    shown = preview(hour, 9000).splitlines()
    assert shown[0] == "1200 cues, 9000 words, 00:59:59 long"
    assert shown[1] == "00:00:00 cue 0 says something" and shown[-1] == "00:59:57 cue 1199 says something"
    assert "... 1194 more cue(s) ..." in shown and len(shown) == 8
    assert preview(hour[:2], 5).splitlines()[1:] == ["00:00:00 cue 0 says something", "00:00:03 cue 1 says something"]
    assert preview([], 0) == "(no speech: no cues)"
