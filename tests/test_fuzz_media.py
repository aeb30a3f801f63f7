"""The media fuzzer in CI (tests/media_fuzzer.py): its regression cases first, then thousands of
mutated files in a bounded time, each ending in audio fit to transcribe or a refusal that names
the file, with this process alive. OPENTR_FUZZ_SECONDS and OPENTR_FUZZ_SEED run it longer or
elsewhere; the cases are reproducible from the seed and their number."""

from __future__ import annotations

import os
import numpy as np
import pytest

from media_fuzzer import MUTATIONS, REGRESSIONS, SEEDS, Outcome, fuzz, judge
from opentr_pipeline.engine.isolation import DecodeLimits
from opentr_pipeline.engine.transcription import load_audio

FUZZ_SECONDS = float(os.environ.get("OPENTR_FUZZ_SECONDS", "20"))
FUZZ_SEED = int(os.environ.get("OPENTR_FUZZ_SEED", "26"))
# What each regression case must decode to now (samples at 16 kHz, and a note that says why).
REGRESSION_EXPECTED = {
    "float-wav-decodes-to-nan.wav": (3200, "were not numbers (NaN or infinite"),
    "sixty-four-channels.wav": (160, ""),  # 10 ms at 8 kHz; 64 channels segfaulted PyAV's planar path
    "stale-data-size.wav": (24000, "the WAV header says 0.1 s of audio, but its data runs on to 1.5 s"),
}


def test_the_seed_corpus_is_small_and_every_seed_is_real_audio():
    seeds = sorted(p for p in SEEDS.iterdir() if p.is_file())
    assert len(seeds) >= 12
    assert sum(p.stat().st_size for p in seeds) < 200_000, "the seed corpus must stay small"
    for path in seeds:
        samples = load_audio(path).samples
        assert samples.size > 0 and np.abs(samples).max() > 0.01, path.name


@pytest.mark.parametrize("name", sorted(REGRESSION_EXPECTED))
def test_what_the_fuzzer_found_stays_fixed(name):
    assert sorted(p.name for p in REGRESSIONS.iterdir()) == sorted(REGRESSION_EXPECTED)
    audio = load_audio(REGRESSIONS / name)
    size, note = REGRESSION_EXPECTED[name]
    assert audio.samples.size == size
    assert np.isfinite(audio.samples).all() and np.abs(audio.samples).max() <= 1.0
    assert not note or any(note in n for n in audio.notes), audio.notes


def test_every_mutation_changes_its_input_reproducibly():
    import random

    data = (SEEDS / "pcm16.wav").read_bytes()
    for mutation in MUTATIONS:
        first, second = mutation(data, random.Random(5)), mutation(data, random.Random(5))
        assert first == second, mutation.__name__
        assert first != data, mutation.__name__


def test_thousands_of_mutated_files_each_end_in_audio_or_a_named_refusal(tmp_path):
    outcome, ran = fuzz(tmp_path / "cases", FUZZ_SECONDS, FUZZ_SEED)
    print(f"\nfuzz: {ran} cases in {FUZZ_SECONDS:.0f} s (seed {FUZZ_SEED}): {outcome.audio} decoded, "
          f"{outcome.refused} refused by name, {len(outcome.crashes)} decoder crashes contained")
    for line in outcome.crashes:
        print("  contained:", line)
    assert not outcome.wrong, "\n".join(outcome.wrong)
    assert ran >= 1000, f"only {ran} cases in {FUZZ_SECONDS:.0f} s"
    assert outcome.audio > ran // 10 and outcome.refused > ran // 10  # both ends exercised


def test_the_oracle_tells_audio_from_a_named_refusal(tmp_path):
    """The oracle itself: a file that decodes is audio; one FFmpeg refuses, or one that is gone,
    is a refusal that names it."""
    outcome = Outcome()
    judge(SEEDS / "speech.flac", "seed", outcome, DecodeLimits())
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"\x00" * 64)
    judge(junk, "zeros", outcome, DecodeLimits())
    assert (outcome.audio, outcome.refused, outcome.wrong) == (1, 1, [])
    missing = tmp_path / "gone.wav"
    judge(missing, "missing", outcome, DecodeLimits())
    assert outcome.refused == 2  # "file not found", named
    assert not outcome.crashes
