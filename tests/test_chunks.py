"""Batched decoding that keeps the words: the chunk guard on its own (pure), then on long
recordings with several speakers taking turns, through the real model."""

from __future__ import annotations

import os

import numpy as np
import pytest

from opentr_pipeline.engine.chunks import (
    Chunk, JoinedSpeech, chunk_speech, chunks_to_decode_again, stretches_to_decode_again, window_cut,
)

RATE = 100  # samples per second in the pure tests: spans read as centiseconds


def test_speech_spans_merge_into_windows_with_their_pauses() -> None:
    spans = [(0, 500), (600, 1500), (1600, 2900), (3000, 3500), (4000, 4100)]
    chunks = chunk_speech(spans, max_samples=3000)
    assert [(c.start, c.end) for c in chunks] == [(0, 2900), (3000, 4100)]
    assert chunks[0].spans == spans[:3] and chunks[1].spans == spans[3:]
    assert chunks[0].speech_s(RATE) == pytest.approx(27.0)  # the pauses are inside, not counted
    assert chunk_speech([], 3000) == []
    assert [(c.start, c.end) for c in chunk_speech([(0, 3000), (3100, 3200)], 3000)] == [(0, 3000), (3100, 3200)]


def test_joined_speech_cuts_the_pauses_and_maps_its_times_back_to_the_recording() -> None:
    """Batched chunks are of speech laid end to end (30 s of it at most); every time decoded in
    that joined speech lands back in the span it came from."""
    spans = [(100, 600), (900, 2400), (4000, 5500), (5600, 6000)]
    joined = JoinedSpeech(spans)
    assert joined.joined_spans() == [(0, 500), (500, 2000), (2000, 3500), (3500, 3900)]
    assert [(c.start, c.end) for c in chunk_speech(joined.joined_spans(), 3000)] == [(0, 2000), (2000, 3900)]
    assert joined.to_recording(0) == 100 and joined.to_recording(250) == 350
    assert joined.to_recording(500) == 900  # the first sample after a pause is the next span's first,
    assert joined.to_recording(500, is_end=True) == 600  # and an end there is the earlier span's last
    assert joined.to_recording(2999) == 4999 and joined.to_recording(3900) == 6000
    assert joined.to_recording(-5) == 100 and joined.to_recording(10_000) == 6000  # rounding outside
    times = [joined.to_recording(x) for x in range(0, 3901, 7)]
    assert times == sorted(times) and all(any(s <= t <= e for s, e in spans) for t in times)
    # A word decoded across a cut stays in the span that holds most of it, not over the pause.
    assert joined.word_to_recording(450, 530) == (550, 600)
    assert joined.word_to_recording(480, 600) == (900, 1000)


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
    words[1] = steady_words(chunks[1], 2.5)
    words[2] = words[2][:20] + words[2][-22:]  # 42 of 70 words, the last at the end: a stretch skipped
    assert chunks_to_decode_again(chunks, words, RATE) == [2, 3]


def test_a_decode_that_stops_before_the_speech_ends_is_caught_even_at_a_normal_rate() -> None:
    """Slow speakers aside, words that stop 3 s before the chunk's speech ends were cut off."""
    chunks = [Chunk(0, 2800, [(0, 2800)]), Chunk(3000, 5800, [(3000, 5800)]), Chunk(6000, 8800, [(6000, 8800)])]
    words = [steady_words(c, 2.5) for c in chunks]
    words[2] = [end for end in words[2] if end < 85.0]  # 3 s short of the speech's end at 88 s
    assert chunks_to_decode_again(chunks, words, RATE) == [2]
    words[2] = [end for end in steady_words(chunks[2], 2.5) if end < 87.0]  # 1 s short: a pause, not a cut
    assert chunks_to_decode_again(chunks, words, RATE) == []


def test_slower_speech_and_tiny_chunks_are_left_alone() -> None:
    chunks = [Chunk(0, 2800, [(0, 2800)]), Chunk(3000, 5800, [(3000, 5800)]), Chunk(6000, 6100, [(6000, 6100)])]
    words = [steady_words(chunks[0], 2.5), steady_words(chunks[1], 2.25), []]  # a slower speaker; 1 s of speech
    assert chunks_to_decode_again(chunks, words, RATE) == []


def test_a_window_of_few_chunks_is_judged_by_the_recording_s_own_rate() -> None:
    """Two chunks, one at 80% of the other's rate: alone their median hides it; the rates of
    the recording's earlier windows show it."""
    chunks = [Chunk(0, 2800, [(0, 2800)]), Chunk(3000, 5800, [(3000, 5800)])]
    words = [steady_words(chunks[0], 2.5), steady_words(chunks[1], 2.0)]
    assert chunks_to_decode_again(chunks, words, RATE) == []
    assert chunks_to_decode_again(chunks, words, RATE, earlier_rates=[2.4, 2.6, 2.5]) == [1]


def covering(chunk: Chunk, pieces: int = 4, gap_s: float = 0.5) -> list[tuple[float, float]]:
    """Segments (s) over a chunk's speech end to end, `gap_s` apart, as timestamps leave them."""
    start, end = chunk.start / RATE, chunk.speech_end_s(RATE)
    step = (end - start) / pieces
    return [(start + i * step + (gap_s if i else 0), start + (i + 1) * step) for i in range(pieces)]


def test_with_timestamps_only_the_holes_the_decoder_left_are_decoded_again() -> None:
    """The decoder's timestamps say where it stopped: the tail after the last segment, the head
    before the first, a wide gap between two; the rest of the chunk is kept."""
    chunks = [Chunk(i * 3000, i * 3000 + 2800, [(i * 3000, i * 3000 + 2800)]) for i in range(5)]
    words = [steady_words(c, 2.5) for c in chunks]
    segments = [covering(c) for c in chunks]
    assert stretches_to_decode_again(chunks, segments, words, RATE) == {}
    segments[1] = covering(chunks[1])[:3]  # stopped 7 s before the chunk's speech ends
    words[1] = [end for end in words[1] if end <= segments[1][-1][1]]
    segments[2] = [(60.0, 70.0), (73.0, 88.0)]  # 3 s skipped between two segments
    segments[3] = [(92.5, 118.0)]  # began 2.5 s late
    assert stretches_to_decode_again(chunks, segments, words, RATE) == {
        1: [(5100, 5800)], 2: [(7000, 7300)], 3: [(9000, 9250)]}
    segments[2] = [(60.0, 72.0), (73.5, 88.0)]  # 1.5 s between two segments: a pause's edges, not a hole
    segments[3] = [(91.0, 118.0)]  # 1 s late: within what timestamps leave
    assert set(stretches_to_decode_again(chunks, segments, words, RATE)) == {1}


def test_with_timestamps_a_chunk_covered_end_to_end_but_far_short_of_words_is_decoded_again_whole() -> None:
    chunks = [Chunk(i * 3000, i * 3000 + 2800, [(i * 3000, i * 3000 + 2800)]) for i in range(5)]
    words = [steady_words(c, 2.5) for c in chunks]
    segments = [covering(c) for c in chunks]
    words[2] = words[2][:20] + words[2][-20:]  # 40 of 70 words under segments that cover it all
    segments[4] = []  # speech and nothing decoded
    words[4] = []
    assert stretches_to_decode_again(chunks, segments, words, RATE) == {2: [(6000, 8800)], 4: [(12000, 14800)]}
    words[2] = steady_words(chunks[2], 2.0)  # 0.8 of the file's rate: a slower voice, left alone with no hole
    assert set(stretches_to_decode_again(chunks, segments, words, RATE)) == {4}


def test_a_long_recording_is_cut_into_windows_only_in_its_pauses() -> None:
    """Windows of a long recording (issue 16, item 9) end where nobody speaks."""
    spans = [(100, 900), (1000, 2500), (2600, 5800)]
    assert window_cut(spans, 5900, RATE) == 2550  # 1 s of silence at the end: too little; the last pause
    assert window_cut(spans, 8500, RATE) == 7150  # 27 s of silence after the last span: cut in it
    assert window_cut([], 6000, RATE) == 6000  # no speech: the whole window
    assert window_cut([(0, 6000)], 6000, RATE) == 6000  # no pause at all: the whole window
    assert window_cut([(3000, 6000)], 6000, RATE) == 1500  # speech only at the end: before it
    for cut in (window_cut(spans, n, RATE) for n in range(5800, 9000, 50)):
        assert not any(start < cut < end for start, end in spans)


@pytest.fixture(scope="module")
def conversation(fixtures_dir):
    """About four minutes of ten clips in shuffled turns, 0.2-1.5 s apart (benchmarks/corpus.py)."""
    import corpus

    return corpus.conversation(corpus.speech_clips(fixtures_dir), index=2, seconds=240)


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

    # faster-whisper's way (text tokens only, chunks of up to 30 s) drops a stretch of this recording
    text_only = run(TranscriptionOptions(batch_timestamps=False, chunk_speech_s=30.0, chunk_guard=False))
    assert corpus.word_error_rate(reference, text_only.text) > 0.08, "the recording no longer provokes drops"
    # text alone, the guard finds the chunk that lost its words and decodes it again whole
    text_only_guarded = run(TranscriptionOptions(batch_timestamps=False, chunk_speech_s=30.0))
    assert text_only_guarded.decoded_again
    assert corpus.word_error_rate(reference, text_only_guarded.text) <= 0.05, text_only_guarded.text
    # with timestamps in chunks of up to 30 s, chunks that run to the window's edge leave their
    # last turn for a next window that never comes: holes the guard decodes again
    full_windows = run(TranscriptionOptions(chunk_speech_s=30.0, chunk_guard=False))
    assert corpus.word_error_rate(reference, full_windows.text) > 0.03, "full windows no longer lose their last turn"
    # the default: timestamps, chunks of up to 25 s: the words are kept in the first place
    guarded = run(TranscriptionOptions())
    assert corpus.word_error_rate(reference, guarded.text) <= 0.05, guarded.text
    starts = [segment.start for segment in guarded.segments]
    assert starts == sorted(starts) and guarded.segments[-1].end <= len(audio) / 16000 + 0.5
    assert [s.id for s in guarded.segments] == list(range(len(guarded.segments)))
    # Times are the recording's own, not the joined speech's: every word lies in (or at the edge
    # of) speech the detector found, and the last ones come near the recording's end.
    from opentr_pipeline.engine.transcription import speech_spans

    spans = [(start / 16000, end / 16000) for start, end in speech_spans(audio)]
    words = [w for s in guarded.segments for w in s.words]
    assert all(any(start - 0.05 <= (w.start + w.end) / 2 <= end + 0.05 for start, end in spans) for w in words)
    assert words[-1].end > spans[-1][1] - 3.0
    # One chunk at a time (a CPU worker's auto batch) is the same decoding, not a sequential one:
    # the same chunks are checked and redone, and the same words come out.
    one_at_a_time = run(TranscriptionOptions(batch_size=1))
    assert one_at_a_time.decoded_again == guarded.decoded_again
    assert one_at_a_time.text == guarded.text



@pytest.mark.slow
def test_a_long_recording_decoded_in_windows_keeps_its_words(conversation, tmp_path) -> None:
    """Windows of 60 s, each cut in a pause (issue 16, item 9): the same words at the same times
    as the recording decoded whole, with the language of the first window throughout."""
    import corpus

    from opentr_pipeline.engine.devices import DevicePlan
    from opentr_pipeline.engine.transcription import MODELS, TranscriptionOptions, load_audio, transcribe
    from opentr_pipeline.settings import BUNDLED_MODEL

    audio, reference = conversation
    corpus.write_wav(tmp_path / "talk.wav", audio)
    model = MODELS.get(BUNDLED_MODEL, DevicePlan("cpu", 0, 1, os.cpu_count() or 1), "int8")
    decoded = load_audio(tmp_path / "talk.wav", "talk.wav", window_s=60)
    assert decoded.rest is not None and len(decoded.samples) == 60 * 16000
    done = transcribe(model, decoded, TranscriptionOptions(), model_name=BUNDLED_MODEL, compute_type="int8",
                      device="cpu:0", worker=0)
    assert corpus.word_error_rate(reference, done.text) <= 0.05, done.text
    assert done.duration_s == pytest.approx(len(audio) / 16000, abs=0.01)
    starts = [segment.start for segment in done.segments]
    assert starts == sorted(starts) and done.segments[-1].end > done.duration_s - 10
    assert done.segments[-1].end <= done.duration_s + 0.5 and done.language == "en"


needs_espeak = pytest.mark.skipif(__import__("shutil").which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (scripts/install-test-deps.sh installs it)")


@pytest.fixture(scope="module")
def stops_short(fixtures_dir):
    """The start of held-apart tune meeting 2 (benchmarks/held_apart.py): a decode with timestamps
    of its first chunk's stretch (1.9-26.7 s), sequential or batched, ends after the first sentence with a lone timestamp,
    as if the speech were over, and JFK's words after it are lost."""
    import corpus
    import held_apart

    from opentr_pipeline.engine.devices import DevicePlan
    from opentr_pipeline.engine.transcription import MODELS
    from opentr_pipeline.settings import BUNDLED_MODEL

    from opentr_pipeline.engine.transcription import speech_spans

    samples, _, turns = held_apart.held_apart_conversation(corpus.speech_clips(fixtures_dir), "tune", 1, 240)
    model = MODELS.get(BUNDLED_MODEL, DevicePlan("cpu", 0, 1, os.cpu_count() or 1), "int8")
    joined = JoinedSpeech(speech_spans(samples))
    first = chunk_speech(joined.joined_spans(), 25 * 16000)[0]  # the meeting's first chunk, as the engine cuts it
    return model, samples[int(joined.to_recording(first.start)):int(joined.to_recording(first.end, is_end=True))], turns


@needs_espeak
@pytest.mark.slow
def test_a_redo_that_stops_short_goes_on_from_its_last_word(stops_short) -> None:
    import corpus

    from opentr_pipeline.engine.chunks import JoinedSpeech
    from opentr_pipeline.engine.redo import Lost, decode_again
    from opentr_pipeline.engine.transcription import speech_spans

    model, samples, _ = stops_short
    once, _ = model.transcribe(samples, beam_size=1, language="en", vad_filter=False, condition_on_previous_text=False)
    once = " ".join(s.text for s in once)
    assert "americans" not in corpus.normalise(once), "the first decode no longer stops short: " + once
    spans = speech_spans(samples)
    joined = JoinedSpeech(spans)
    speech = np.concatenate([samples[a:b] for a, b in spans])
    whole = [Lost(0, 0, len(speech), "en")]
    middle = joined.starts[len(spans) // 2]
    halves = [Lost(0, 0, middle, "en"), Lost(0, middle, len(speech), "en")]
    # one stretch, sequentially; two, batched first; in each case what a decode left is decoded
    # again from its last word
    for batch, lost in ((1, whole), (4, halves)):
        redone = decode_again(lambda language: model, samples, speech, joined, lost, batch_size=batch, beam_size=1,
                              task_for=lambda decoder: "transcribe", offset_s=10.0)
        words = [w for s in redone.segments[0] for w in s.words]
        text = corpus.normalise(" ".join(s.text for s in redone.segments[0]))
        assert "my fellow americans" in text and "your country" in text, text
        assert all(10.0 <= w.start <= w.end <= 10.0 + len(samples) / 16000 + 0.1 for w in words), "recording time"
        assert len(redone.stretches) == len(lost), "each stretch recorded once, however many decodes it took"
