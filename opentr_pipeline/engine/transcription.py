"""faster-whisper, loaded once per device and shared by that device's workers.

Workers and batching multiply (see ARCHITECTURE.md): each transcription gets its own
`BatchedInferencePipeline` (it keeps per-call state) over one shared `WhisperModel` loaded
with `num_workers` equal to the device's worker count.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from opentr_pipeline.engine.chunks import (
    JoinedSpeech,
    chunk_speech,
    chunks_to_decode_again,
    speaking_rates,
    stretches_to_decode_again,
    window_cut,
)
from opentr_pipeline.engine.devices import DevicePlan
from opentr_pipeline.engine.isolation import DecodeLimits, decode_windows_isolated
from opentr_pipeline.engine.languages import (Decoders, Heard, by_language, detect_chunks, language_shares,
                                               stretches_by_language)
from opentr_pipeline.engine.media import Decoded, MediaError
from opentr_pipeline.engine.redo import Lost, decode_again
from opentr_pipeline.engine.segments import Segment, Word, in_recording, plain_segment
from opentr_pipeline.engine.speakers import SpeechVoices
from opentr_pipeline.settings import BEAM_SIZE, BUNDLED_MODELS, DecodingSettings

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

log = logging.getLogger("opentr")
# faster-whisper is imported where it is used: a run that sends its files to resident workers
# never loads it (nor torch), and starts seconds sooner.
SAMPLE_RATE = 16000
CHUNK_S = 30  # Whisper's own window: the most any chunk may hold
# The most speech in a chunk. Decoding with timestamps, Whisper leaves a last sentence that runs
# up to its window's edge for the next window (sequential decoding's seek), and a batched chunk
# has no next window: chunks of 28.4-30 s of joined speech lost their last turn in 11 of 18 on the
# benchmark conversations, chunks of up to 28.1 s in none (on the held-apart tune meetings chunks of
# 26.9 s and up did; benchmarks/early_ends.py). A few seconds of silence before the window's edge
# show the decoder where the speech ends: 25 s lost no last turn on the conversations.
CHUNK_SPEECH_S = 25.0
EMPTY_WITH_SPEECH_S = 1.0  # an empty transcript of a file with this much detected speech is flagged
# A recording longer than this is decoded and transcribed a window at a time (cut in a pause), so
# a worker's memory is bounded whatever the duration (README, "What is guaranteed").
WINDOW_S = 600.0


def model_location(name: str) -> str:
    """What faster-whisper is given: the bundled folder, a size name, a Hugging Face id or a path."""
    if name in BUNDLED_MODELS:
        from opentr_pipeline.engine.bundled_models import bundled_folder

        return str(bundled_folder(name))
    return name


class ModelUnavailable(RuntimeError):
    """The model cannot be loaded: a fault of this engine (no network, no such model, a compute
    type the device lacks), never of the file being transcribed, so no file is failed for good."""


def check_model_loads(decoding: DecodingSettings, device_kinds: set[str]) -> str:
    """At start-up, before any file is taken: the compute type fits each device kind, and the
    model's files are here (a hub model is fetched now, once). Returns the model's folder."""
    import ctranslate2

    for kind in sorted(device_kinds):
        compute = resolve_compute_type(decoding.whisper_compute_type, kind)
        supported = ctranslate2.get_supported_compute_types(kind)
        if compute not in supported:
            raise ModelUnavailable(f"WHISPER_COMPUTE_TYPE={decoding.whisper_compute_type!r}: {compute} is not "
                                   f"supported on {kind} here; use auto, or one of {', '.join(sorted(supported))}")
    if decoding.routes_languages:
        model_folder(decoding.multilingual_model, "WHISPER_MULTILINGUAL_MODEL")
    return model_folder(decoding.whisper_model, "WHISPER_MODEL")


def model_folder(name: str, variable: str) -> str:
    """A model's folder: bundled (joined first where it comes in parts), given, or fetched now."""
    try:
        location = model_location(name)
    except Exception as error:  # a bundled model whose packages are damaged
        raise ModelUnavailable(f"{variable}={name!r} cannot be loaded: {error}") from None
    if os.path.isdir(location):
        return location
    from faster_whisper.utils import download_model

    try:
        return download_model(location)  # from the local cache when it is there: no network
    except Exception as error:
        raise ModelUnavailable(f"{variable}={name!r} cannot be loaded: {error or type(error).__name__} "
                               "(no network to fetch it from, or no such model); give a model folder, or a "
                               "bundled model (bundled-tiny.en, bundled-base)") from None


def resolve_compute_type(requested: str, device_kind: str) -> str:
    if requested != "auto":
        return requested
    return "float16" if device_kind == "cuda" else "int8"


# Chunks of joined speech decoded at once under WHISPER_BATCH_SIZE=auto. A CPU worker with one
# thread decodes one at a time: there batches of 8 took 1.2-1.4x as long for the same words, while a
# worker with several threads, like a GPU, needs the batch to keep them busy (README, "Measured").
BATCH_SIZE = 8  # faster-whisper's own default


def resolve_batch_size(requested: int | str, device: DevicePlan) -> int:
    if requested != "auto":
        return int(requested)
    return 1 if device.kind == "cpu" and device.cpu_threads == 1 else BATCH_SIZE


@dataclass(frozen=True)
class TranscriptionOptions:
    beam_size: int = BEAM_SIZE
    batch_size: int = BATCH_SIZE  # 1 still decodes chunks of joined speech, one at a time
    vad_filter: bool = True
    language: str | None = None
    chunk_guard: bool = True  # off only to measure what it saves (benchmarks)
    # Batched chunks decoded with timestamp tokens (faster-whisper's batched default is text only):
    # without them the decoder ends a chunk of joined speech early or skips its first turns far
    # more often (benchmarks/early_ends.py: 232 against 59 of 1,833 words lost, README "Measured").
    batch_timestamps: bool = True
    chunk_speech_s: float = CHUNK_SPEECH_S  # the most speech in a batched chunk (at most CHUNK_S)
    # A chunk the guard redoes is decoded greedily (temperature fallback kept): on the benchmark
    # conversations as accurate as beam 5 or more, in half the time (README, "Measured").
    redo_beam_size: int = 1
    voices: bool = False  # keep voice prints for who spoke when (engine/speakers.py)
    task: str = "transcribe"  # WHISPER_TASK: translate gives English text of any language

    @classmethod
    def from_settings(cls, decoding: DecodingSettings, device: DevicePlan) -> "TranscriptionOptions":
        return cls(beam_size=decoding.beam_size, batch_size=resolve_batch_size(decoding.batch_size, device),
                   vad_filter=decoding.vad_filter, language=decoding.language, voices=decoding.voice_prints,
                   task=decoding.task)


@dataclass
class Transcript:
    text: str
    language: str
    language_probability: float
    duration_s: float
    segments: list[Segment]
    model: str
    compute_type: str
    device: str
    worker: int
    started_at: str
    finished_at: str
    wall_s: float
    sha256: str = ""  # of the bytes this transcript was made from
    host: str = ""
    engine: str = ""  # the process that held the model: one id per model load
    decoded_again: list[list[float]] = field(default_factory=list)  # [start, end] s of stretches the guard decoded again
    audio_notes: list[str] = field(default_factory=list)  # which stream, how channels were mixed
    warnings: list[str] = field(default_factory=list)  # what a person should look at (an empty text with speech)
    # Who spoke when is decided from these by the speakers asset (defs/assets/speakers.py), which
    # can decide it again without decoding: VoicePrints.to_record(), kept apart as voiceprints/.
    voice_prints: dict | None = None
    speakers_s: float = 0.0  # of wall_s, the seconds spent on voice prints
    speakers_error: str = ""  # why there are no voice prints though they were asked for (the words are kept)
    diarization: str = "off"  # off, or the voice model that made `voice_prints`
    languages: list[dict] = field(default_factory=list)  # each language with its share of the speech
    task: str = "transcribe"  # or translate: English text of any language (WHISPER_TASK)

    @classmethod
    def from_dict(cls, doc: dict) -> "Transcript":
        segments = segments_of(doc)
        fields = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        return cls(**{**fields, "segments": segments})

    @property
    def x_realtime(self) -> float:
        return round(self.duration_s / self.wall_s, 2) if self.wall_s > 0 else 0.0

    @property
    def word_count(self) -> int:
        return sum(len(s.words) for s in self.segments) or len(self.text.split())

    def to_dict(self) -> dict:
        return {**asdict(self), "x_realtime": self.x_realtime, "words": self.word_count}


_ENGINE: dict[int, str] = {}


def engine_id() -> str:
    """This process's id as a model holder: host, pid and a random tag (pids are reused)."""
    pid = os.getpid()
    if pid not in _ENGINE:
        _ENGINE[pid] = f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:6]}"
    return _ENGINE[pid]


class SourceChanged(RuntimeError):
    """The file changed while it was read: what was decoded is no one version of it."""


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # 16 kHz mono float32: the whole recording, or its first window when `rest` is set
    sha256: str  # of exactly the bytes decoded
    notes: tuple[str, ...] = ()  # which stream, how the channels were mixed, where there was a choice
    rest: Iterator[Decoded] | None = None  # a long recording's later windows, decoded as they are taken


def load_audio(path: str | Path, name: str | None = None, window_s: float = WINDOW_S,
               limits: DecodeLimits = DecodeLimits()) -> DecodedAudio:
    """Hash and decode one open file to 16 kHz mono float32, naming the file if it cannot be read.

    A recording longer than `window_s` is decoded one window at a time while it is transcribed
    (its first window here, the rest in `rest`), so memory holds one window, whatever the
    duration. Hash and decoder read the same open file, and its size and modification time must
    not move meanwhile, so the hash a transcript records is the hash of the bytes it was made
    from: a file replaced by a rename is still the old inode here, and one rewritten in place is
    refused. Decoding runs in a child process (engine/isolation.py): a decoder crash fails this
    file, named, and nothing else.
    """
    name = name or str(path)
    handle = open(path, "rb")
    try:
        before = os.fstat(handle.fileno())
        digest = hashlib.sha256()
        while block := handle.read(1 << 20):
            digest.update(block)
        handle.seek(0)
        windows = decode_windows_isolated(handle, name, SAMPLE_RATE, round(window_s * SAMPLE_RATE), limits)
        first = next(windows)
        second = next(windows, None)
    except BaseException:
        handle.close()
        raise
    if first.samples.size == 0:
        handle.close()
        raise MediaError(f"{name}: decoded audio is empty")
    if second is None:
        with handle:
            _unchanged(before, handle, name)
        return DecodedAudio(first.samples, digest.hexdigest(), tuple(first.notes))

    def rest() -> Iterator[Decoded]:
        try:
            yield second
            yield from windows
            _unchanged(before, handle, name)  # at the end: every window came from one version
        finally:
            handle.close()

    return DecodedAudio(first.samples, digest.hexdigest(), tuple(first.notes), rest())


def _unchanged(before: os.stat_result, handle, name: str) -> None:
    after = os.fstat(handle.fileno())
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise SourceChanged(f"{name}: changed while it was being read; it is read again on the next attempt")


class ModelCache:
    """One WhisperModel per (model, device, compute type) in this process, loaded on first use."""

    def __init__(self) -> None:
        self._models: dict[tuple, "WhisperModel"] = {}
        self._lock = threading.Lock()

    def get(self, model_name: str, device: DevicePlan, compute_type: str) -> "WhisperModel":
        key = (model_name, device, compute_type)
        with self._lock:
            if key not in self._models:
                from faster_whisper import WhisperModel

                try:
                    self._models[key] = WhisperModel(
                        model_location(model_name),
                        device=device.kind,
                        device_index=device.index if device.kind == "cuda" else 0,
                        compute_type=compute_type,
                        cpu_threads=device.cpu_threads,
                        num_workers=device.workers,
                    )
                except Exception as error:  # a hub error is a FileNotFoundError: not the file's fault
                    raise ModelUnavailable(f"model {model_name!r} could not be loaded on {device.label} "
                                           f"({compute_type}): {error or type(error).__name__}") from error
            return self._models[key]

    def loaded(self) -> int:
        return len(self._models)


def speech_spans(samples: np.ndarray, longest_s: float = CHUNK_SPEECH_S) -> list[tuple[int, int]]:
    """Speech, in samples: faster-whisper's own batched VAD settings (spans of at most `longest_s`)."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    found = get_speech_timestamps(samples, VadOptions(max_speech_duration_s=longest_s, min_silence_duration_ms=160))
    return [(span["start"], span["end"]) for span in found]


def decode_batched(decoders: Decoders, samples: np.ndarray, options: TranscriptionOptions,
                   spans: list[tuple[int, int]] | None = None, offset_s: float = 0.0,
                   rates: list[float] | None = None) -> tuple[list[Segment], object, list[list[float]], float]:
    """Batched decoding over chunks of joined speech, each chunk checked by the guard (chunks.py).

    Returns the segments in recording time (`samples` start `offset_s` into it), the language
    found (faster-whisper's info, or the chunks' own), the [start, end] of the chunks decoded again
    sequentially because their words fell short of their speech, and the seconds of speech the
    detector found (`spans`, when given). `rates`: the recording's speaking rates from earlier
    windows; this window's are added. With no language set and a detector at hand, each chunk's
    language is detected and the chunk decoded in it, by the model for it (engine/languages.py).
    """
    from faster_whisper import BatchedInferencePipeline

    model = decoders.main
    common = dict(beam_size=options.beam_size, word_timestamps=True)
    spans = speech_spans(samples, options.chunk_speech_s) if spans is None else spans
    if not spans:  # no speech: the pipeline's own path says so (and detects the language)
        found, info = BatchedInferencePipeline(model).transcribe(
            samples, batch_size=options.batch_size, vad_filter=True, language=options.language, **common)
        return [plain_segment(s, offset_s, info.language) for s in found], info, [], 0.0
    joined = JoinedSpeech(spans)
    speech = np.concatenate([samples[start:end] for start, end in spans])
    chunks = chunk_speech(joined.joined_spans(), int(options.chunk_speech_s * SAMPLE_RATE))
    detector = decoders.detector if options.language is None else None
    heard, window = detect_chunks(detector, speech, chunks) if detector is not None else (None, {})
    groups = by_language(heard) if heard is not None else {options.language: list(range(len(chunks)))}
    by_chunk: list[list[Segment]] = [[] for _ in chunks]  # in joined-speech time
    chunk_language = [""] * len(chunks)
    info = None
    for language, indexes in groups.items():
        decoder = decoders.for_language(language) if language else model
        found, group_info = BatchedInferencePipeline(decoder).transcribe(  # one per call: it keeps per-call state
            speech, batch_size=options.batch_size, vad_filter=False, language=language, task=task_for(decoder, options),
            without_timestamps=not options.batch_timestamps,
            clip_timestamps=[{"start": chunks[i].start / SAMPLE_RATE, "end": chunks[i].end / SAMPLE_RATE} for i in indexes],
            **common)
        info = info or group_info
        starts = [chunks[i].start * decoder.frames_per_second // SAMPLE_RATE for i in indexes]
        for segment in found:  # a segment's seek is its chunk's first frame (give or take rounding)
            by_chunk[indexes[max(0, bisect.bisect_right(starts, segment.seek + 1) - 1)]].append(plain_segment(segment))
        for i in indexes:
            chunk_language[i] = language or group_info.language
    if heard is not None:  # the language with the most speech speaks for the window
        info = main_language(chunks, heard)
    word_ends = [[word.end for segment in decoded for word in segment.words] for decoded in by_chunk]
    rates = [] if rates is None else rates
    again = stretches_lost(chunks, by_chunk, word_ends, rates, options)

    in_place = [[in_recording(s, joined, offset_s, chunk_language[index]) for s in decoded]
                for index, decoded in enumerate(by_chunk)]
    # A whole chunk redone replaces what it gave; a hole adds to it. Where languages are detected,
    # each language in what is redone is its own stretch: a chunk that ran from English into
    # German was decoded as English, and the German is what it lost.
    lost = []
    for index, stretches in again.items():
        chunk = chunks[index]
        if stretches == [(chunk.start, chunk.end)]:
            in_place[index] = []
        for part in (chunk.part(low, high) for low, high in stretches):
            lost += [Lost(index, low, high, language) for low, high, language in (
                stretches_by_language(detector, speech, part, window) if heard is not None
                else [(part.start, part.end, chunk_language[index])])]
    redone = decode_again(decoders.for_language, samples, speech, joined, lost, batch_size=options.batch_size,
                          beam_size=options.redo_beam_size, task_for=lambda decoder: task_for(decoder, options),
                          offset_s=offset_s)
    for index, found in redone.segments.items():
        in_place[index] = sorted(in_place[index] + found, key=lambda segment: segment.start)
        word_ends[index] = [word.end for segment in in_place[index] for word in segment.words]  # counted only
    rates += speaking_rates(chunks, word_ends, SAMPLE_RATE)
    segments = [s for decoded in in_place for s in decoded]
    return segments, info, redone.stretches, len(speech) / SAMPLE_RATE


def stretches_lost(chunks: Sequence, by_chunk: Sequence[Sequence[Segment]], word_ends: Sequence[Sequence[float]],
                   rates: list[float], options: TranscriptionOptions) -> dict[int, list[tuple[int, int]]]:
    """The chunk guard's verdict: chunk index -> the stretches of it (samples of joined speech)
    to decode again. With timestamps, the holes the decoder left (or the whole chunk where its words
    fall short with no hole); with text alone, every suspect chunk whole (engine/chunks.py)."""
    if not options.chunk_guard:
        return {}
    if options.batch_timestamps:
        times = [[(segment.start, segment.end) for segment in decoded] for decoded in by_chunk]
        return stretches_to_decode_again(chunks, times, word_ends, SAMPLE_RATE, rates)
    # Text alone says nothing of where a decode stopped (holes by the words' aligned times were
    # tried: they missed losses and doubled words, worst file 0.071 against 0.015 whole).
    return {index: [(chunks[index].start, chunks[index].end)]
            for index in chunks_to_decode_again(chunks, word_ends, SAMPLE_RATE, rates)}


def task_for(model: "WhisperModel", options: TranscriptionOptions) -> str:
    """WHISPER_TASK where the model can do it; an English-only model only transcribes (its speech
    is English already)."""
    return options.task if model.model.is_multilingual else "transcribe"


def main_language(chunks: Sequence, heard: Sequence[Heard]) -> SimpleNamespace:
    """The language with the most speech among the chunks, and its mean detected probability."""
    seconds: dict[str, float] = {}
    for chunk, found in zip(chunks, heard):
        seconds[found.language] = seconds.get(found.language, 0.0) + (chunk.end - chunk.start)
    best = max(seconds, key=seconds.get)
    chosen = [found.probability for found in heard if found.language == best]
    return SimpleNamespace(language=best, language_probability=sum(chosen) / len(chosen))


def decode_piece(decoders: Decoders, samples: np.ndarray, options: TranscriptionOptions,
                 spans: list[tuple[int, int]] | None, offset_s: float,
                 rates: list[float]) -> tuple[list[Segment], object, list[list[float]], float]:
    """One window: batched with the chunk guard, or sequential where batching has no VAD chunks."""
    if options.vad_filter:
        return decode_batched(decoders, samples, options, spans, offset_s, rates)
    model = decoders.main
    found, info = model.transcribe(samples, beam_size=options.beam_size, language=options.language,
                                   task=task_for(model, options),
                                   vad_filter=options.vad_filter, word_timestamps=True)
    segments = [plain_segment(s, offset_s, info.language) for s in found]  # the generator does the work here
    return segments, info, [], float(info.duration_after_vad or 0.0) if options.vad_filter else 0.0


def decode_windows_of(decoders: Decoders, audio: DecodedAudio, options: TranscriptionOptions,
                      voices: SpeechVoices | None = None):
    """Every window of the recording decoded in turn (one window, for most files), each ended in
    a pause (chunks.window_cut) with what follows carried into the next, in recording time.

    Returns segments, the first window's info, chunks decoded again, seconds of speech, the
    recording's length in samples, and the notes of the later windows. Without a detector for
    each chunk, the first window's language is kept for the rest when none was set.
    `voices`, when given, takes each window's speech as it goes (the same samples and spans).
    """
    windows = iter(()) if audio.rest is None else audio.rest
    current, upcoming = audio.samples, next(windows, None)
    carry, offset = current[:0], 0
    segments: list[Segment] = []
    decoded_again: list[list[float]] = []
    speech_s, notes, first_info, rates = 0.0, [], None, []
    while True:
        last = upcoming is None
        buffer = np.concatenate([carry, current]) if carry.size else current
        spans = speech_spans(buffer, options.chunk_speech_s) if options.vad_filter or not last else None
        cut = len(buffer) if last else window_cut(spans, len(buffer), SAMPLE_RATE)
        while True:  # out of memory halves the batch, down to 1, for this window and the rest
            try:
                found, info, again, speech = decode_piece(
                    decoders, buffer[:cut], options, spans and [s for s in spans if s[1] <= cut], offset / SAMPLE_RATE, rates)
                break
            except RuntimeError as error:
                if not is_out_of_memory(error):
                    raise
                if options.batch_size <= 1:
                    raise RuntimeError(f"ran out of memory even at batch size 1; lower GPU_SCALE_WORKERS "
                                       f"or use a smaller model ({error})") from None
                log.warning("out of memory at batch %d; retrying at batch %d", options.batch_size, options.batch_size // 2)
                options = replace(options, batch_size=options.batch_size // 2)
        segments += found
        decoded_again += again
        speech_s += speech
        if voices is not None:
            voices.add(buffer[:cut], [s for s in spans if s[1] <= cut] if spans is not None
                       else speech_spans(buffer[:cut]), offset)
        if first_info is None:
            first_info = info
            if decoders.detector is None or not options.vad_filter:
                options = replace(options, language=options.language or info.language)
        if last:
            return segments, first_info, decoded_again, speech_s, offset + len(buffer), notes
        carry, offset = buffer[cut:].copy(), offset + cut
        notes += upcoming.notes
        current, upcoming = upcoming.samples, next(windows, None)


def segments_of(doc: dict) -> list[Segment]:
    """A transcript record's segments (and their words) as ours."""
    return [Segment(**{**s, "words": [Word(**w) for w in s["words"]]}) for s in doc["segments"]]


def transcript_warnings(segments: list[Segment], speech_s: float) -> list[str]:
    """What a person should look at, said beside the success rather than hidden by it."""
    if not segments and speech_s >= EMPTY_WITH_SPEECH_S:
        return [f"no words came out, though the voice detector heard {speech_s:.1f} s of speech"]
    return []


def transcribe(
    model: "WhisperModel",
    audio: DecodedAudio,
    options: TranscriptionOptions,
    *,
    model_name: str,
    compute_type: str,
    device: str,
    worker: int,
    embedder=None,
    multilingual: "WhisperModel | None" = None,
    multilingual_name: str = "",
) -> Transcript:
    """Run one transcription and time exactly that (decoding and queueing are outside).
    `multilingual`: the model for speech not in English when `model` knows English only."""
    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    voices = SpeechVoices(embedder, getattr(embedder, "name", "")) if options.voices and embedder is not None else None
    decoders = Decoders(model, multilingual)
    raw_segments, info, decoded_again, speech_s, length, later_notes = decode_windows_of(decoders, audio, options, voices)
    segments = [replace(segment, id=i) for i, segment in enumerate(s for s in raw_segments if s.text)]
    warnings = transcript_warnings(segments, speech_s)
    prints, speakers_error = None, ""
    if voices is not None:
        try:  # the voice model failing costs the speakers, never the words
            prints = voices.prints().to_record()
        except Exception as error:
            speakers_error = f"speakers could not be found: {type(error).__name__}: {error}"
            warnings.append(speakers_error)
            log.warning("%s", speakers_error)
    wall = time.perf_counter() - clock
    finished = datetime.now(timezone.utc)
    return Transcript(
        text=" ".join(s.text for s in segments),
        language=info.language,
        language_probability=round(float(info.language_probability), 4),
        languages=language_shares(segments, lambda language: model_name if decoders.for_language(language) is model
                                  else multilingual_name),
        task=options.task,
        duration_s=round(length / SAMPLE_RATE, 3),
        segments=segments,
        model=model_name,
        compute_type=compute_type,
        device=device,
        worker=worker,
        started_at=started.isoformat(timespec="milliseconds"),
        finished_at=finished.isoformat(timespec="milliseconds"),
        wall_s=round(wall, 4),
        sha256=audio.sha256,
        host=socket.gethostname(),
        engine=engine_id(),
        decoded_again=decoded_again,
        audio_notes=list(dict.fromkeys([*audio.notes, *later_notes])),
        warnings=warnings,
        voice_prints=prints,
        speakers_s=round(voices.seconds, 3) if voices is not None else 0.0,
        speakers_error=speakers_error,
        diarization="off" if voices is None else voices.model or "embedded",
    )


MODELS = ModelCache()  # process-wide: a process loads each model once, whatever it transcribes


class VoiceModelCache:
    """One voice-embedding model per device in this process, loaded on first use (seconds: torch)."""

    def __init__(self) -> None:
        self._models: dict[str, object] = {}
        self._lock = threading.Lock()

    def get(self, device: DevicePlan):
        from opentr_pipeline.engine.voices import CamPlusPlus

        where = f"cuda:{device.index}" if device.kind == "cuda" else "cpu"
        with self._lock:
            if where not in self._models:
                try:
                    self._models[where] = CamPlusPlus(where, threads=device.cpu_threads if device.kind == "cpu" else None)
                except Exception as error:  # each file then records why it has no speakers, and keeps its words
                    log.warning("the voice model could not be loaded on %s: %s", where, error)
                    self._models[where] = UnloadableEmbedder(error)
            return self._models[where]


class UnloadableEmbedder:
    """Stands for a voice model that failed to load: every file says why it has no speakers."""

    name = "unloadable"

    def __init__(self, error: Exception):
        self.error = error

    def embed(self, samples, windows):
        raise RuntimeError(f"the voice model could not be loaded: {type(self.error).__name__}: {self.error}")


VOICE_MODELS = VoiceModelCache()


def is_out_of_memory(error: Exception) -> bool:
    return "out of memory" in str(error).lower()


# CTranslate2 opens cuBLAS at the first transcription, not at model load, and its message
# ("Library libcublas.so.12 is not found or cannot be loaded") does not say what to install.
CUDA_LIBRARY_HINT = (
    "CTranslate2 4.x needs CUDA 12's cuBLAS (a CUDA 13 PyTorch does not bring it): "
    "pip install nvidia-cublas-cu12 and put its lib folder on LD_LIBRARY_PATH "
    "(README, 'On a GPU host'), or set WHISPER_DEVICE=cpu"
)


def is_missing_cuda_library(error: Exception) -> bool:
    text = str(error)
    return "Library lib" in text and ("not found" in text or "cannot be loaded" in text)


def transcribe_on(decoding: DecodingSettings, device: DevicePlan, worker: int, audio: DecodedAudio,
                  options: TranscriptionOptions) -> Transcript:
    """Transcribe with this process's model for the device (out of memory halves the batch: decode_windows_of)."""
    compute_type = resolve_compute_type(decoding.whisper_compute_type, device.kind)
    model = MODELS.get(decoding.whisper_model, device, compute_type)
    embedder = VOICE_MODELS.get(device) if options.voices else None
    multilingual = (MODELS.get(decoding.multilingual_model, device, compute_type)
                    if decoding.routes_languages else None)
    try:
        return transcribe(model, audio, options, model_name=decoding.whisper_model, compute_type=compute_type,
                          device=device.label, worker=worker, embedder=embedder, multilingual=multilingual,
                          multilingual_name=decoding.multilingual_model)
    except RuntimeError as error:
        if is_missing_cuda_library(error):
            raise RuntimeError(f"{device.label}: {error}. {CUDA_LIBRARY_HINT}") from None
        if is_out_of_memory(error):
            raise RuntimeError(f"{device.label} {error}") from None
        raise
