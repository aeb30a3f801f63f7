"""Who spoke when, from the audio and the speech regions the transcription already has.

The shape is WhisperX's: diarization in one small module, and words put on speakers by one pure
function (`assign_word_speakers`) over words and turns, tested alone. What is ours:

- no second decode and no second voice detector: the transcription's 16 kHz samples and its
  speech spans go in;
- each speech span is cut into windows of 1.25 s (one every 4.5 s), each window becomes a voice
  embedding (the `VoiceEmbedder` interface: CAM++ by default, engine/voices.py), and the
  embeddings are clustered here, with the number of voices estimated unless it is given;
- a window's voice is voted onto 10-ms frames of speech, so a turn ends where the voices change,
  not at a window's edge; and a segment whose words belong to two speakers is split.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field, replace
from typing import Protocol, Sequence

import numpy as np

SAMPLE_RATE = 16000
# 1.25-s windows, one every 4.5 s of a long span: on 12 meetings of 2-5 voices (seeds 21-24, kept
# apart from the ones the tests and the README report on) DER 1.4% mean, 4.6% worst and every count
# right, at 61x realtime on one core; 1.5 s every 3 s gave 2.1% / 8.4%, 10 of 12 counts, at 42x.
WINDOW_S = 1.25
SHIFT_S = 4.5
FRAME_S = 0.01
# Clusters are merged, nearest first, while their centroids are closer than this (cosine
# distance): chosen on the meetings of benchmarks/meetings.py (README, "Who said what").
MERGE_DISTANCE = 0.5
MIN_SHARE = 0.03  # a cluster with less of the speech than this is a stray, folded into its nearest
# ... and so is a lone window: JFK's 11 s gave one of its 8 windows (applause under it) a voice of its own.
MIN_WINDOWS = 2


@dataclass(frozen=True)
class SpeakerTurn:
    start: float
    end: float
    speaker: str


@dataclass(frozen=True)
class SpeakerHints:
    """OPENTR_NUM_SPEAKERS, or OPENTR_MIN_SPEAKERS / OPENTR_MAX_SPEAKERS."""

    num_speakers: int | None = None
    min_speakers: int = 1
    max_speakers: int = 20


class VoiceEmbedder(Protocol):
    """Embeddings of stretches of 16-kHz speech, one row each (any model: CAM++, GE2E, pyannote's)."""

    def embed(self, samples: np.ndarray, windows: Sequence[tuple[int, int]]) -> np.ndarray: ...


def speech_windows(spans: Sequence[tuple[int, int]], window: int = round(WINDOW_S * SAMPLE_RATE),
                   shift: int = round(SHIFT_S * SAMPLE_RATE)) -> list[tuple[int, int]]:
    """Windows (in samples) covering each speech span; a span shorter than a window is one window."""
    found = []
    for start, end in spans:
        at = start
        while at + window < end:
            found.append((at, at + window))
            at += shift
        found.append((max(start, end - window), end))
    return found


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-9)


def cluster_voices(embeddings: np.ndarray, hints: SpeakerHints = SpeakerHints(),
                   weights: np.ndarray | None = None) -> np.ndarray:
    """A voice label per embedding (0 is the voice heard first).

    Agglomerative, on cosine distance with average linkage: with a number of voices given, cut
    there; otherwise merge while clusters are closer than MERGE_DISTANCE, then fold clusters with
    under MIN_SHARE of the speech into their nearest, within the min/max hints."""
    from scipy.cluster.hierarchy import fcluster, linkage

    count = len(embeddings)
    if count == 0:
        return np.zeros(0, int)
    if count == 1:
        return np.zeros(1, int)
    unit = _normalised(np.asarray(embeddings, np.float64))
    tree = linkage(unit, method="average", metric="cosine")
    if hints.num_speakers:
        labels = fcluster(tree, t=min(hints.num_speakers, count), criterion="maxclust") - 1
    else:
        labels = fcluster(tree, t=MERGE_DISTANCE, criterion="distance") - 1
        labels = _fold_strays(unit, labels, np.ones(count) if weights is None else weights, hints.min_speakers)
        if len(set(labels)) > hints.max_speakers:
            labels = fcluster(tree, t=hints.max_speakers, criterion="maxclust") - 1
        elif len(set(labels)) < hints.min_speakers:
            labels = fcluster(tree, t=min(hints.min_speakers, count), criterion="maxclust") - 1
    return _in_order_heard(labels)


def _fold_strays(unit: np.ndarray, labels: np.ndarray, weights: np.ndarray, keep_at_least: int) -> np.ndarray:
    labels = labels.copy()
    while True:
        present = sorted(set(labels))
        if len(present) <= max(1, keep_at_least):
            return labels
        shares = {c: weights[labels == c].sum() / weights.sum() for c in present}
        strays = [c for c in present if shares[c] < MIN_SHARE or (labels == c).sum() < MIN_WINDOWS]
        if not strays:
            return labels
        stray = min(strays, key=lambda c: shares[c])
        centroids = {c: _normalised(unit[labels == c].mean(axis=0, keepdims=True))[0] for c in present}
        nearest = max((c for c in present if c != stray), key=lambda c: float(centroids[c] @ centroids[stray]))
        labels[labels == stray] = nearest


def _in_order_heard(labels: np.ndarray) -> np.ndarray:
    order: dict[int, int] = {}
    for label in labels:
        order.setdefault(int(label), len(order))
    return np.array([order[int(label)] for label in labels])


def turns_from_windows(spans: Sequence[tuple[int, int]], windows: Sequence[tuple[int, int]],
                       labels: np.ndarray, offset_s: float = 0.0) -> list[SpeakerTurn]:
    """Speaker turns in seconds: each 10-ms frame of speech takes the voice of most of the windows
    over it (the window centred nearest breaks a tie); neighbouring frames of one voice are a turn."""
    if not windows:
        return []
    frame = round(FRAME_S * SAMPLE_RATE)
    voices = int(labels.max()) + 1
    turns: list[SpeakerTurn] = []
    window_array = np.array(windows)
    for start, end in spans:
        frames = max(1, (end - start) // frame)
        votes = np.zeros((frames, voices))
        inside = np.where((window_array[:, 1] > start) & (window_array[:, 0] < end))[0]
        centres = np.arange(frames) * frame + start + frame // 2
        for index in inside:
            w_start, w_end = windows[index]
            first = max(0, (w_start - start) // frame)
            last = min(frames, -(-(w_end - start) // frame))
            # a vote counts more near its window's centre, where its voice is surest
            middle = (w_start + w_end) / 2
            weight = 1.0 - np.abs(centres[first:last] - middle) / max(1, (w_end - w_start))
            votes[first:last, labels[index]] += np.maximum(weight, 0.05)
        chosen = votes.argmax(axis=1)
        unheard = votes.sum(axis=1) == 0  # between sparse windows: the voice of the nearest one
        if unheard.any():
            middles = window_array.mean(axis=1)
            nearest = np.abs(centres[unheard][:, None] - middles[None, :]).argmin(axis=1)
            chosen[unheard] = labels[nearest]
        run_start = 0
        for at in range(1, frames + 1):
            if at == frames or chosen[at] != chosen[run_start]:
                turn_end = end if at == frames else start + at * frame
                turns.append(SpeakerTurn(round(offset_s + (start + run_start * frame) / SAMPLE_RATE, 3),
                                         round(offset_s + turn_end / SAMPLE_RATE, 3), speaker_id(int(chosen[run_start]))))
                run_start = at
    return merge_turns(turns)


def speaker_id(label: int) -> str:
    return f"SPEAKER_{label:02d}"


def merge_turns(turns: Sequence[SpeakerTurn], gap_s: float = 0.0) -> list[SpeakerTurn]:
    """Neighbouring turns of one speaker, at most `gap_s` apart, as one."""
    merged: list[SpeakerTurn] = []
    for turn in sorted(turns, key=lambda t: t.start):
        if merged and merged[-1].speaker == turn.speaker and turn.start - merged[-1].end <= gap_s:
            merged[-1] = replace(merged[-1], end=max(merged[-1].end, turn.end))
        else:
            merged.append(turn)
    return merged


def speaker_at(turns: Sequence[SpeakerTurn], start: float, end: float) -> str | None:
    """The speaker whose turns overlap [start, end] most; with no overlap, the nearest turn's."""
    if not turns:
        return None
    best, best_overlap = None, 0.0
    for turn in turns:
        overlap = min(end, turn.end) - max(start, turn.start)
        if overlap > best_overlap:
            best, best_overlap = turn.speaker, overlap
    if best is not None:
        return best
    middle = (start + end) / 2
    return min(turns, key=lambda t: 0.0 if t.start <= middle <= t.end else min(abs(t.start - middle), abs(t.end - middle))).speaker


def assign_word_speakers(segments: list, turns: Sequence[SpeakerTurn]) -> list:
    """Each word on the speaker it overlaps most, and each segment split where its words change
    speaker, so that no segment (nor any cue made from it) holds two speakers. Pure: segments are
    engine.transcription.Segment (words with start, end); new ones are returned, renumbered. A
    split's first piece keeps the segment's start, its last the segment's end; between, each piece
    runs from its first word to its last."""
    out = []
    for segment in segments:
        if not segment.words:
            out.append(replace(segment, speaker=speaker_at(turns, segment.start, segment.end)))
            continue
        words = [replace(word, speaker=speaker_at(turns, word.start, word.end)) for word in segment.words]
        runs: list[list] = [[words[0]]]
        for word in words[1:]:
            if word.speaker == runs[-1][0].speaker:
                runs[-1].append(word)
            else:
                runs.append([word])
        for number, run in enumerate(runs):
            out.append(replace(segment, start=segment.start if number == 0 else run[0].start,
                               end=segment.end if number == len(runs) - 1 else run[-1].end,
                               text=segment.text if len(runs) == 1 else "".join(w.word for w in run).strip(),
                               words=run, speaker=run[0].speaker))
    return [replace(segment, id=number) for number, segment in enumerate(out)]


def talk_time(turns: Sequence[SpeakerTurn]) -> dict[str, float]:
    spoken: dict[str, float] = {}
    for turn in turns:
        spoken[turn.speaker] = round(spoken.get(turn.speaker, 0.0) + turn.end - turn.start, 3)
    return spoken


@dataclass
class VoicePrints:
    """A recording's voices as the transcription heard them: its speech spans, the windows cut
    from them and one embedding per window. Kept beside the transcript (`voiceprints/`), so who
    spoke when can be decided again (another number of speakers) without decoding anything."""

    spans: list[tuple[int, int]] = field(default_factory=list)  # in recording samples
    windows: list[tuple[int, int]] = field(default_factory=list)
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    model: str = ""

    def to_record(self) -> dict:
        """JSON-ready; the embeddings as float16 in base64 (a third of the size of numbers)."""
        return {"model": self.model, "sample_rate": SAMPLE_RATE, "spans": [list(s) for s in self.spans],
                "windows": [list(w) for w in self.windows], "dim": int(self.embeddings.shape[1]) if self.windows else 0,
                "embeddings": base64.b64encode(np.asarray(self.embeddings, "<f2").tobytes()).decode("ascii")}

    @classmethod
    def from_record(cls, record: dict) -> "VoicePrints":
        windows = [tuple(w) for w in record["windows"]]
        flat = np.frombuffer(base64.b64decode(record["embeddings"]), "<f2").astype(np.float32)
        if len(windows) * int(record["dim"]) != flat.size:
            raise ValueError(f"{len(windows)} windows but {flat.size} embedding values of dimension {record['dim']}")
        return cls([tuple(s) for s in record["spans"]], windows,
                   flat.reshape(len(windows), int(record["dim"]) or 1), record.get("model", ""))


class SpeechVoices:
    """A recording's voices, gathered window by window as it is transcribed (the same samples and
    speech spans): memory holds embeddings (192 numbers a window), not audio."""

    def __init__(self, embedder: VoiceEmbedder, model: str = ""):
        self.embedder, self.model = embedder, model
        self.spans: list[tuple[int, int]] = []  # in recording samples
        self.windows: list[tuple[int, int]] = []
        self.embeddings: list[np.ndarray] = []
        self.seconds = 0.0  # spent here, for the throughput figures
        self.error: Exception | None = None  # a failure here is kept for prints(): the words go on

    def add(self, samples: np.ndarray, spans: Sequence[tuple[int, int]], offset: int = 0) -> None:
        """A piece of the recording starting `offset` samples in, and its speech spans (in it)."""
        if self.error is not None:
            return
        clock = time.perf_counter()
        try:
            windows = speech_windows(spans)
            if windows:
                self.embeddings.append(np.asarray(self.embedder.embed(samples, windows)))
                self.windows += [(offset + start, offset + end) for start, end in windows]
            self.spans += [(offset + start, offset + end) for start, end in spans]
        except Exception as error:
            self.error = error
        finally:
            self.seconds += time.perf_counter() - clock

    def prints(self) -> VoicePrints:
        if self.error is not None:
            raise self.error
        embeddings = np.concatenate(self.embeddings) if self.embeddings else np.zeros((0, 0), np.float32)
        return VoicePrints(list(self.spans), list(self.windows), embeddings, self.model)


@dataclass(frozen=True)
class SpeakersFound:
    turns: list[SpeakerTurn]
    voices: dict[str, np.ndarray]  # speaker id -> mean unit embedding (voices across files)


def find_speakers(prints: VoicePrints, hints: SpeakerHints = SpeakerHints()) -> SpeakersFound:
    """Who spoke when, from a recording's voice prints: clustered, then voted onto its speech."""
    if not prints.windows:
        return SpeakersFound([], {})
    lengths = np.array([end - start for start, end in prints.windows], float)
    labels = cluster_voices(prints.embeddings, hints, weights=lengths)
    turns = turns_from_windows(prints.spans, prints.windows, labels)
    unit = _normalised(np.asarray(prints.embeddings, np.float64))
    voices = {speaker_id(label): _normalised(unit[labels == label].mean(axis=0, keepdims=True))[0]
              for label in sorted(set(labels.tolist()))}
    return SpeakersFound(turns, voices)


def diarize(embedder: VoiceEmbedder, samples: np.ndarray, spans: Sequence[tuple[int, int]],
            hints: SpeakerHints = SpeakerHints()) -> tuple[list[SpeakerTurn], dict[str, np.ndarray]]:
    """Turns for one recording held whole, and each voice's mean embedding."""
    voices = SpeechVoices(embedder)
    voices.add(samples, spans)
    found = find_speakers(voices.prints(), hints)
    return found.turns, found.voices
