"""The benchmark's parts, on a tiny corpus: the corpus builder, the raw measurement through the
real bundled model, and the shape of the table and JSON. The timed comparison itself is
`opentr bench`, a script: timings on a shared 2-core machine make no test."""

from __future__ import annotations

import argparse
import json
import os
import wave
from pathlib import Path

import pytest

import languages  # benchmarks/languages.py
import bench  # benchmarks/ (conftest puts it on the path): the command and its parts
import corpus
import held_apart
import plain
import plan
import report
from conftest import SPEECH
from opentr_pipeline.settings import Settings


@pytest.fixture(scope="module")
def tiny_corpus(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[corpus.CorpusFile]:
    return corpus.build_corpus(corpus.speech_clips(fixtures_dir), tmp_path_factory.mktemp("corpus"), files=3, seconds=6)


def test_clips_are_the_distinct_speech_with_its_reference_text(fixtures_dir, demo_texts):
    clips = corpus.speech_clips(fixtures_dir)
    names = [clip.name for clip in clips]
    assert "squirrel_nospeech.wav" not in names and "hotwords.mp3" not in names, "no speech, no reference"
    assert sum(name.startswith("jfk") for name in names) == 1, "the same speech in three encodings counts once"
    assert set(demo_texts) <= set(names) and len(clips) == 10
    by_name = {clip.name: clip for clip in clips}
    assert by_name["librispeech_test-clean_61-70968-0002.wav"].reference == SPEECH["librispeech_test-clean_61-70968-0002.wav"]
    assert by_name["harvard_01.ogg"].reference == demo_texts["harvard_01.ogg"]


def test_corpus_is_distinct_conversations_of_the_asked_length_with_their_text(tiny_corpus, fixtures_dir):
    assert len({item.sha256 for item in tiny_corpus}) == 3
    longest_clip_s, longest_pause_s = 11.0, 1.5  # jfk; a file stops at the first clip that reaches the length
    references = {clip.name: clip.reference for clip in corpus.speech_clips(fixtures_dir)}
    for item in tiny_corpus:
        with wave.open(str(item.path)) as recording:
            assert (recording.getnchannels(), recording.getframerate(), recording.getsampwidth()) == (1, 16000, 2)
            assert recording.getnframes() / 16000 == pytest.approx(item.duration_s, abs=1e-3)
        assert 6 <= item.duration_s <= 6 + longest_clip_s + longest_pause_s
        said = corpus.normalise(item.reference)
        assert said and all(corpus.normalise(text) in said or corpus.normalise(text) not in said
                            for text in references.values())
    audio, reference = corpus.conversation(corpus.speech_clips(fixtures_dir), index=2, seconds=240)
    assert 240 <= len(audio) / 16000 < 255 and len(reference.split()) > 300, "minutes of speech, hundreds of words"


def test_word_error_rate_forgives_punctuation_not_words() -> None:
    assert corpus.word_error_rate("Mister Quilter is here.", "mr. quilter, is here") == 0
    assert corpus.word_error_rate("one two three four", "one two four") == pytest.approx(0.25)
    assert corpus.word_error_rate("one two", "") == 1


def test_corpus_is_the_same_for_the_same_seed(fixtures_dir, tmp_path):
    clips = corpus.speech_clips(fixtures_dir)
    first = corpus.build_corpus(clips, tmp_path / "a", files=2, seconds=5)
    again = corpus.build_corpus(clips, tmp_path / "b", files=2, seconds=5)
    assert [c.sha256 for c in first] == [c.sha256 for c in again]
    assert [c.reference for c in first] == [c.reference for c in again]


needs_espeak = pytest.mark.skipif(__import__("shutil").which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (scripts/install-test-deps.sh installs it)")


@needs_espeak
def test_held_apart_meetings_are_built_otherwise_and_their_splits_never_meet(fixtures_dir, tmp_path):
    """Judged on speech it was not tuned on: the held-apart builder makes turns of one to three
    utterances of one voice (fixture and espeak-ng voices mixed), long and short utterances,
    its own pauses; its two splits and corpus.py's conversations share no file."""
    clips = corpus.speech_clips(fixtures_dir)
    tune = held_apart.build_held_apart(clips, tmp_path / "tune", "tune", files=2, seconds=90)
    report_split = held_apart.build_held_apart(clips, tmp_path / "report", "report", files=2, seconds=90)
    again = held_apart.build_held_apart(clips, tmp_path / "again", "tune", files=2, seconds=90)
    plain_corpus = corpus.build_corpus(clips, tmp_path / "plain", files=2, seconds=90)
    assert [c.sha256 for c in tune] == [c.sha256 for c in again], "the same split, the same files"
    digests = [c.sha256 for c in (*tune, *report_split, *plain_corpus)]
    assert len(set(digests)) == len(digests), "no file in two corpora"
    synthetic = {name for name, _, _ in held_apart.SYNTHETIC_VOICES}
    for item in (*tune, *report_split):
        assert item.duration_s >= 90
        voices = [voice for _, _, voice in item.turns]
        assert set(voices) & synthetic and set(voices) - synthetic, "fixture and espeak-ng voices mixed"
        runs, run = [], 1
        for before, after in zip(voices, voices[1:]):
            if after == before:
                run += 1
            else:
                runs.append(run)
                run = 1
        assert max(runs) <= 3, "a turn is one to three utterances of one voice"
        assert len(corpus.normalise(item.reference).split()) > 150
    lengths = [end - start for item in (*tune, *report_split) for start, end, _ in item.turns]
    assert min(lengths) < 2.0 and max(lengths) > 12.0, "short and long utterances"
    pauses = [b[0] - a[1] for item in (*tune, *report_split) for a, b in zip(item.turns, item.turns[1:])]
    assert min(pauses) < 0.3 and max(pauses) > 2.5, "quick hand-overs and long silences"
    with pytest.raises(plan.BenchError, match="held-apart split"):
        held_apart.held_apart_conversation(clips, "test", 0, 10)


def test_missing_fixtures_folder_is_a_clear_error(tmp_path):
    with pytest.raises(plan.BenchError, match="OPENTR_FIXTURES"):
        corpus.speech_clips(tmp_path / "nowhere")


def test_raw_measurement_and_report_shape(tiny_corpus, pipeline_env):
    """Real model, two workers sharing it; then the table and JSON from those figures."""
    chosen = plan.make_plan(Settings.from_env(), device="cpu", model=None, compute_type=None)
    assert (chosen.device, chosen.compute_type) == ("cpu", "int8")
    assert chosen.pipeline_env(2)["GPU_SCALE_WORKERS"] == "2"
    one = plain.raw_faster_whisper(tiny_corpus[:2], chosen, workers=1)
    two = plain.raw_faster_whisper(tiny_corpus[:2], chosen, workers=2)
    assert one.details["peak_concurrency"] == 1 and two.details["peak_concurrency"] == 2
    assert two.details["cpu_threads_per_worker"] == max(1, (os.cpu_count() or 1) // 2)
    assert one.audio_s == pytest.approx(sum(c.duration_s for c in tiny_corpus[:2]))
    assert one.x_realtime > 0
    one_core = plain.raw_faster_whisper(tiny_corpus[:2], chosen, workers=1, one_core=True)
    assert (one_core.configuration, one_core.details["cpu_threads_per_worker"]) == (plan.RAW_ONE_CORE, 1)
    sequential = plain.raw_faster_whisper(tiny_corpus[:2], chosen, workers=2, sequential=True)
    assert sequential.configuration == plan.RAW_SEQUENTIAL
    for row in (one, two, one_core, sequential):  # every row carries the words' quality
        assert sorted(row.wer) == sorted(c.path.name for c in tiny_corpus[:2])
        assert row.wer_worst is not None and row.wer_worst < 0.3, row.wer

    # Pipeline rows built from the same figures: only the arithmetic and the shape are under test.
    span = plan.Measurement(plan.PIPELINE_SPAN, 2, two.files, two.audio_s, two.wall_s * 1.25, "span")
    rows = report.best_of([two, one, span, plan.Measurement(plan.RAW, 1, 2, one.audio_s, one.wall_s * 2, "slower")])
    assert [(m.configuration, m.workers) for m in rows] == [(plan.RAW, 1), (plan.RAW, 2), (plan.PIPELINE_SPAN, 2)]
    figures = report.comparisons(rows, workers=2)
    assert figures["ratio_to_raw_same_workers"][f"{plan.PIPELINE_SPAN} / raw, 2 worker(s)"] == pytest.approx(0.8, abs=1e-3)
    assert {t["target"]: t["pass"] for t in figures["targets"]}[
        f"pipeline span >= {plan.SPAN_TARGET} x raw, 2 worker(s)"] is False
    assert figures["ratio_to_cores_x_one_core"] == {}  # no one-core row, no per-core figure
    half_speed_core = plan.Measurement(plan.RAW_ONE_CORE, 1, 2, one.audio_s, one.wall_s * 2, "one core")
    cores = two.workers * two.details["cpu_threads_per_worker"]
    per_core = report.comparisons([*rows, half_speed_core], workers=2)["ratio_to_cores_x_one_core"]
    assert per_core[f"{plan.RAW}, 2 worker(s) on {cores} core(s)"] == pytest.approx(
        two.x_realtime / (cores * one.x_realtime / 2), abs=1e-3)
    table = report.format_table(rows)
    assert table.splitlines()[0].startswith("| configuration")
    assert len(table.splitlines()) == 2 + len(rows)

    options = {"workers": 2, "files": 2, "seconds": 6.0, "repeat": 1}
    doc = json.loads(json.dumps(report.build_report(
        {"cpu_count": 2}, chosen, options, tiny_corpus[:2], [], [one, two, span])))
    assert set(doc) >= {"machine", "settings", "corpus", "results", "ratio_to_raw_same_workers",
                           "ratio_n_vs_1", "targets", "all_measurements"}
    assert doc["settings"]["model"] == chosen.model and doc["settings"]["workers"] == 2
    assert {"configuration", "workers", "audio_s", "wall_s", "x_realtime", "details", "wer_mean",
            "wer_worst"} <= set(doc["results"][0])
    assert f"{plan.RAW}, 2 vs 1 worker(s)" in doc["ratio_n_vs_1"]


def test_the_yardstick_is_the_fastest_plain_script_of_the_same_quality() -> None:
    """A plain decoding that drops words is faster and no yardstick: the pipeline is compared
    with the fastest plain row whose worst-file WER is within SAME_QUALITY of its own."""
    def row(configuration, wall_s, worst):
        return plan.Measurement(configuration, 2, 2, 100.0, wall_s, "", wer={"a.wav": worst / 2, "b.wav": worst})

    dropping = row(plan.RAW, 5.0, 0.20)
    accurate = row(plan.RAW_SEQUENTIAL, 10.0, 0.03)
    pipeline = row(plan.PIPELINE_WHOLE, 8.0, 0.03)
    assert report.best_plain_of_same_quality([dropping, accurate, pipeline], pipeline) is accurate
    rows = report.best_of([dropping, accurate, pipeline])
    figures = report.comparisons(rows, workers=2)
    assert figures["ratio_to_best_plain_same_quality"][
        f"{plan.PIPELINE_WHOLE} / {plan.RAW_SEQUENTIAL}, 2 worker(s)"] == pytest.approx(1.25)
    verdicts = {("words" if "WER within" in t["target"] else "speed"): t["pass"]
                for t in figures["targets"] if t["target"].startswith(plan.PIPELINE_WHOLE)}
    assert verdicts == {"words": True, "speed": True}
    better = row(plan.PIPELINE_WHOLE, 12.0, 0.01)  # better words than sequential's pass too
    figures = report.comparisons(report.best_of([dropping, accurate, better]), workers=2)
    assert [t["pass"] for t in figures["targets"] if "WER within" in t["target"]] == [True]
    careless = row(plan.PIPELINE_WHOLE, 4.0, 0.20)  # fast because it drops words: judged against sequential's words
    figures = report.comparisons(report.best_of([dropping, accurate, careless]), workers=2)
    words = [t for t in figures["targets"] if "WER within" in t["target"]]
    assert [t["pass"] for t in words] == [False]
    assert "| WER mean | WER worst |" in report.format_table(rows)


@pytest.mark.slow
def test_opentr_bench_end_to_end_writes_the_figures(fixtures_dir, pipeline_env, tmp_path):
    """The whole command on two short files: raw, in-process and resident sides all run, the
    table prints, the JSON is whole, and the resident worker and its Redis are gone after."""
    import subprocess

    from conftest import PROJECT_ROOT

    out = tmp_path / "bench.json"
    done = subprocess.run([str(PROJECT_ROOT / ".venv" / "bin" / "opentr"), "bench", "--files", "2", "--seconds", "5",
                           "--languages", "de", "--language-seconds", "12", "--out", str(out), "--work-dir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    printed = done.stdout
    assert plan.PIPELINE_WHOLE in printed and plan.RESIDENT_WHOLE in printed
    assert "PASS" in printed or "MISS" in printed
    doc = json.loads(out.read_text())
    one_core = [(plan.RAW_ONE_CORE, 1)] if doc["settings"]["device"] == "cpu" else []
    assert [(r["configuration"], r["workers"]) for r in doc["results"]] == [
        *one_core, (plan.RAW_SEQUENTIAL_NO_VAD, 1), (plan.RAW_SEQUENTIAL, 1), (plan.RAW, 1), (plan.PIPELINE_SPAN, 1),
        (plan.PIPELINE_WHOLE, 1), (plan.PIPELINE_SPEAKERS, 1), (plan.RESIDENT_SPAN, 1), (plan.RESIDENT_WHOLE, 1),
        (plan.RAW_SEQUENTIAL_NO_VAD, 2), (plan.RAW_SEQUENTIAL, 2), (plan.RAW, 2), (plan.PIPELINE_SPAN, 2), (plan.PIPELINE_WHOLE, 2),
        (plan.PIPELINE_SPEAKERS, 2), (plan.RESIDENT_SPAN, 2), (plan.RESIDENT_WHOLE, 2),
    ]
    # who spoke when beside the speed, as the pipeline runs by default
    with_speakers = [r for r in doc["results"] if r["configuration"] == plan.PIPELINE_SPEAKERS]
    assert all(0 <= r["details"]["der_mean"] <= 1 and "/" in r["details"]["voices_right"] for r in with_speakers)
    assert "DER / WDER / voices right" in printed
    assert all(r["wer_worst"] is not None and r["wer_worst"] < 0.3 for r in doc["results"]), "WER beside every speed"
    assert "WER mean" in printed and "vs fastest plain, same WER" in printed
    assert all(r["x_realtime"] > 0 and r["files"] == 2 for r in doc["results"])
    assert doc["machine"]["faster_whisper"] == "1.2.1"
    assert len(doc["targets"]) == 16  # per worker count: 2 span ratios, 2 x (words, speed at those words), speakers; 2 scalings
    assert len(doc["ratio_to_cores_x_one_core"]) == (6 if one_core else 0)
    resident = [r for r in doc["results"] if r["configuration"] == plan.RESIDENT_SPAN]
    assert [r["details"]["peak_concurrency"] for r in resident] == [1, 2]  # the worker's slots, filled
    # the languages table: English and German, through tiny.en alone, bundled-base alone and the default
    table = {(r["language"], r["configuration"]): r for r in doc["languages"]}
    assert set(table) == {(language, config) for language in ("en", "de", "switching") for config in languages.CONFIGURATIONS}
    assert table[("de", languages.DEFAULT)]["language_right"] == 1.0 and table[("de", languages.TINY_ALONE)]["language_right"] == 0.0
    assert table[("de", languages.DEFAULT)]["wer"] < table[("de", languages.TINY_ALONE)]["wer"]
    assert doc["languages_english_ratio"] > 0 and "English, default over tiny.en alone" in printed
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "work")], capture_output=True, text=True).stdout
    assert left == "", f"processes left behind: {left}"


def test_bench_command_line_options():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.workers, args.files, args.seconds, args.out) == (2, 6, 240.0, "bench-results/bench.json")
