"""Batched decoding that keeps the words: the chunk guard on its own (pure), then on long
recordings with several speakers taking turns, through the real model."""

from __future__ import annotations

import os

import pytest

from opentr_pipeline.engine.chunks import Chunk, chunk_speech, chunks_to_decode_again

RATE = 100  # samples per second in the pure tests: spans read as centiseconds


def test_speech_spans_merge_into_windows_with_their_pauses() -> None:
    spans = [(0, 500), (600, 1500), (1600, 2900), (3000, 3500), (4000, 4100)]
    chunks = chunk_speech(spans, max_samples=3000)
    assert [(c.start, c.end) for c in chunks] == [(0, 2900), (3000, 4100)]
    assert chunks[0].spans == spans[:3] and chunks[1].spans == spans[3:]
    assert chunks[0].speech_s(RATE) == pytest.approx(27.0)  # the pauses are inside, not counted
    assert chunk_speech([], 3000) == []
    assert [(c.start, c.end) for c in chunk_speech([(0, 3000), (3100, 3200)], 3000)] == [(0, 3000), (3100, 3200)]


def steady_words(chunk: Chunk, per_second: float) -> list[float]:
    """Word end times spread over a chunk's speech at a steady rate."""
    ends = []
    for start, end in chunk.spans:
        count = int((end - start) / RATE * per_second)
        ends += [start / RATE + (i + 1) / per_second for i in range(count)]
    return ends


def test_a_chunk_whose_words_fall_short_of_its_speech_is_decoded_again() -> None:
    chunks = [Chunk(i * 3000, i * 3000 + 2800, [(i * 3000, i * 3000 + 2800)]) for i in range(5)]
    words = [steady_words(c, 2.5) for c in chunks]
    assert chunks_to_decode_again(chunks, words, RATE) == []
    words[1] = words[1][: len(words[1]) // 4]  # a quarter of its words: the decode ended early
    words[3] = []  # speech and no words at all
    assert chunks_to_decode_again(chunks, words, RATE) == [1, 3]


def test_a_decode_that_stops_before_the_speech_ends_is_caught_even_at_a_normal_rate() -> None:
    """Slow speakers aside, words that stop 3 s before the chunk's speech ends were cut off."""
    chunks = [Chunk(0, 2800, [(0, 2800)]), Chunk(3000, 5800, [(3000, 5800)]), Chunk(6000, 8800, [(6000, 8800)])]
    words = [steady_words(c, 2.5) for c in chunks]
    words[2] = [end for end in words[2] if end < 85.0]  # 3 s short of the speech's end at 88 s
    assert chunks_to_decode_again(chunks, words, RATE) == [2]
    words[2] = [end for end in steady_words(chunks[2], 2.5) if end < 87.0]  # 1 s short: a pause, not a cut
    assert chunks_to_decode_again(chunks, words, RATE) == []


def test_slow_speech_and_tiny_chunks_are_left_alone() -> None:
    chunks = [Chunk(0, 2800, [(0, 2800)]), Chunk(3000, 5800, [(3000, 5800)]), Chunk(6000, 6100, [(6000, 6100)])]
    words = [steady_words(chunks[0], 2.5), steady_words(chunks[1], 1.5), []]  # a slower speaker; 1 s of speech
    assert chunks_to_decode_again(chunks, words, RATE) == []


@pytest.fixture(scope="module")
def conversation(fixtures_dir):
    """About four minutes of ten clips in shuffled turns, 0.7 s apart (benchmarks/corpus.py)."""
    import corpus

    return corpus.conversation(corpus.speech_clips(fixtures_dir), index=1, seconds=240)


@pytest.mark.slow
def test_a_long_recording_of_speakers_taking_turns_keeps_its_words(conversation):
    """Real model, real speech: plain batching drops chunks of this recording; the guard finds
    them and decodes them again, so the words come back, in order, at their times."""
    import corpus

    from opentr_pipeline.engine.devices import DevicePlan
    from opentr_pipeline.engine.transcription import (
        MODELS, DecodedAudio, TranscriptionOptions, transcribe,
    )
    from opentr_pipeline.settings import BUNDLED_MODEL

    audio, reference = conversation
    model = MODELS.get(BUNDLED_MODEL, DevicePlan("cpu", 0, 1, os.cpu_count() or 1), "int8")

    def run(options: TranscriptionOptions):
        return transcribe(model, DecodedAudio(audio, "sha"), options, model_name=BUNDLED_MODEL,
                          compute_type="int8", device="cpu:0", worker=0)

    unguarded = run(TranscriptionOptions(chunk_guard=False))
    assert corpus.word_error_rate(reference, unguarded.text) > 0.08, "the recording no longer provokes drops"
    guarded = run(TranscriptionOptions())
    assert guarded.decoded_again, "the chunks that lost their words were found"
    assert corpus.word_error_rate(reference, guarded.text) <= 0.05, guarded.text
    starts = [segment.start for segment in guarded.segments]
    assert starts == sorted(starts) and guarded.segments[-1].end <= len(audio) / 16000 + 0.5
    assert [s.id for s in guarded.segments] == list(range(len(guarded.segments)))
