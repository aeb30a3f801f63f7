"""Every recording in the language it is spoken in (engine/languages.py, engine/bundled_models.py):
the multilingual model joined from its two packages safely, settings that cannot work refused at
start, and real speech (espeak-ng's German and French, the English fixtures) through the real
models: English still decoded by tiny.en, German by bundled-base, a recording that switches has
both, translate gives English."""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

import pytest

from opentr_pipeline.settings import BUNDLED_BASE, BUNDLED_MODEL, Settings, SettingsError, english_only

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (scripts/install-test-deps.sh installs it)")


def _join(cache: str) -> str:
    from opentr_pipeline.engine.bundled_models import joined_base

    return str(joined_base(Path(cache)))


def test_the_multilingual_model_is_joined_once_whole_and_a_damaged_copy_is_joined_again(tmp_path, monkeypatch):
    from opentr_pipeline.engine import bundled_models
    from opentr_pipeline.engine.bundled_models import BASE_SHA256, BundledModelDamaged, joined_base, sha256_file

    cache = tmp_path / "cache"
    with multiprocessing.get_context("spawn").Pool(2) as pool:  # two processes racing to join it
        folders = pool.map(_join, [str(cache)] * 2)
    assert len(set(folders)) == 1
    folder = Path(folders[0])
    assert sha256_file(folder / "model.bin") == BASE_SHA256
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.bin", "tokenizer.json", "vocabulary.json"]
    assert [p.name for p in cache.iterdir()] == [folder.name]  # no half-built folder left beside it
    assert not english_only(str(folder))

    with open(folder / "model.bin", "r+b") as handle:  # damaged since: cut short
        handle.truncate(1000)
    bundled_models._checked.clear()
    assert joined_base(cache) == folder and sha256_file(folder / "model.bin") == BASE_SHA256

    # parts that do not make the model (an altered install): refused, nothing left in the cache
    bad = tmp_path / "part1"
    bad.write_bytes(b"not whisper")
    real = bundled_models.base_parts()
    monkeypatch.setattr(bundled_models, "base_parts", lambda: [bad, real[1]])
    other = tmp_path / "other-cache"
    with pytest.raises(BundledModelDamaged, match="SHA-256"):
        joined_base(other)
    assert list(other.iterdir()) == []


def test_settings_that_cannot_speak_the_language_stop_at_start(tmp_path):
    refused = [
        ({"WHISPER_LANGUAGE": "de"}, "WHISPER_LANGUAGE='de': WHISPER_MODEL='bundled-tiny.en' knows English only"),
        ({"WHISPER_MULTILINGUAL_MODEL": "tiny.en"}, "WHISPER_MULTILINGUAL_MODEL='tiny.en' knows English only"),
        ({"WHISPER_TASK": "translate", "WHISPER_MULTILINGUAL_MODEL": "off"}, "nothing could translate"),
        ({"WHISPER_TASK": "summarise"}, "WHISPER_TASK"),
    ]
    for env, message in refused:
        with pytest.raises(SettingsError, match=message):
            Settings.from_env(env)
    default = Settings.from_env({}).decoding
    assert default.multilingual_model == BUNDLED_BASE and default.routes_languages
    assert not Settings.from_env({"WHISPER_LANGUAGE": "en"}).decoding.routes_languages
    assert not Settings.from_env({"WHISPER_MODEL": BUNDLED_BASE, "WHISPER_LANGUAGE": "de"}).decoding.routes_languages
    assert english_only(BUNDLED_MODEL) and english_only("distil-small.en") and not english_only("large-v3")


def test_shares_of_the_speech_and_hours_per_language_in_the_report():
    from opentr_pipeline.engine.languages import language_shares, languages_line
    from opentr_pipeline.engine.transcription import Segment
    from opentr_pipeline.outputs.throughput import hours_by_language, transcripts_frame
    from opentr_pipeline.outputs.subtitles import build_cues, to_vtt

    segments = [Segment(0, 0.0, 30.0, "hello", language="en"), Segment(1, 30.0, 120.0, "hallo", language="de")]
    shares = language_shares(segments, lambda language: "tiny.en" if language == "en" else "base")
    assert shares == [{"language": "de", "speech_s": 90.0, "share": 0.75, "model": "base"},
                      {"language": "en", "speech_s": 30.0, "share": 0.25, "model": "tiny.en"}]
    assert languages_line({"languages": shares}) == "de 75%, en 25%"
    record = dict(partition_key="a.wav", device="cpu:0", worker=0, duration_s=3600.0, wall_s=60.0, x_realtime=60.0,
                  started_at="2026-12-07T00:00:00+00:00", finished_at="2026-12-07T00:01:00+00:00", model="m",
                  compute_type="int8", language="de", languages=shares)
    old = {**record, "partition_key": "b.wav", "language": "en", "languages": []}  # made before languages were kept
    assert hours_by_language(transcripts_frame([record, old])) == {"en": (2, 1.25), "de": (1, 0.75)}
    vtt = to_vtt(build_cues([{"id": 0, "start": 0.0, "end": 1.0, "text": "hallo", "words": []}]), None, "de")
    assert vtt.startswith("WEBVTT\nLanguage: de\n\n00:00:00.000 --> ")


@pytest.fixture(scope="module")
def decoders():
    """The default's two models, loaded once for the module (the engine's process-wide cache)."""
    from opentr_pipeline.engine.devices import DevicePlan
    from opentr_pipeline.engine.transcription import TranscriptionOptions, transcribe_on

    device = DevicePlan("cpu", 0, 1, 2)
    decoding = Settings.from_env({"OPENTR_DIARIZATION": "off"}).decoding

    def run(samples, decoding=decoding):
        from opentr_pipeline.engine.transcription import DecodedAudio

        options = TranscriptionOptions.from_settings(decoding, device)
        return transcribe_on(decoding, device, 0, DecodedAudio(samples, ""), options).to_dict()

    return run


@needs_espeak
def test_german_is_heard_as_german_and_english_stays_with_tiny_en(decoders, fixtures_dir):
    from faster_whisper import decode_audio
    from spoken_languages import error_rate, one_language

    german = one_language("de", 20.0)
    done = decoders(german.samples)
    assert done["language"] == "de" and done["languages"][0]["model"] == BUNDLED_BASE
    assert {s["language"] for s in done["segments"]} == {"de"}
    assert error_rate(german.reference, done["text"]) < 0.5, done["text"]  # tiny.en alone: 1.0 (English words)

    english = decoders(decode_audio(str(fixtures_dir / "jfk.flac")))
    assert english["language"] == "en" and english["model"] == BUNDLED_MODEL
    assert english["languages"] == [{"language": "en", "speech_s": pytest.approx(10.5, abs=1.0), "share": 1.0,
                                     "model": BUNDLED_MODEL}]
    assert "ask not what your country" in english["text"].lower()


@needs_espeak
def test_a_recording_that_switches_language_has_both_each_in_its_own(decoders, fixtures_dir):
    from faster_whisper import decode_audio
    from spoken_languages import speech_share_right, switching

    clips = [(decode_audio(str(fixtures_dir / name)), "") for name in
             ("jfk.flac", "librispeech_dev-clean_1272-128104-0000_mr_quilter.wav")]
    spoken = switching(clips, "de", 60.0)
    done = decoders(spoken.samples)
    found = {entry["language"]: entry for entry in done["languages"]}
    assert set(found) == {"en", "de"} and found["en"]["model"] == BUNDLED_MODEL and found["de"]["model"] == BUNDLED_BASE
    assert speech_share_right(spoken.stretches, done["segments"]) > 0.9
    text = done["text"].lower()
    assert "ask not what your country" in text and "quilter" in text
    # the chunk that runs from English into German was decided English; its German is kept too
    assert "beginnen mit dem bericht" in text, text


@needs_espeak
def test_translate_gives_english_text_and_keeps_the_language_spoken(decoders):
    from spoken_languages import one_language

    german = one_language("de", 12.0)
    done = decoders(german.samples, Settings.from_env({"OPENTR_DIARIZATION": "off", "WHISPER_TASK": "translate"}).decoding)
    assert done["language"] == "de" and done["task"] == "translate"
    words = set(done["text"].lower().replace(",", " ").replace(".", " ").split())
    assert words & {"the", "king", "was", "old", "times", "daughters"}, done["text"]
    assert not words & {"der", "die", "und", "könig"}, done["text"]
