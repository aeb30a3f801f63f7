"""Every stretch of speech in its own language: which language each chunk of joined speech is in,
and which model decodes it.

The default model, tiny.en, knows English only; given German it writes confident English or
nothing. So before decoding, the language of each chunk (up to 30 s of joined speech) is detected
by a multilingual Whisper (bundled-base by default), first from a short excerpt (`detect_chunks`),
and weighed with the rest of the recording (`decide`). English chunks go to tiny.en at its speed,
every other language to the multilingual model with that language set. When the main model is itself
multilingual, it detects each chunk's language and decodes it, so a recording that changes
language mid-way is followed chunk by chunk either way.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

SAMPLE_RATE = 16000
# Seconds of a chunk's speech heard first to tell its language (the encoder takes them unpadded,
# at about a thirtieth of the cost of decoding the chunk with tiny.en; 10 s cost English 0.87 of
# its throughput, README "Languages"). English heard surely there is settled; English heard
# unsurely (a quiet or noisy opening) is heard again over SECOND_LOOK_S, where every such chunk
# of the held-apart meetings was sure (0.81-0.95), at a fifth of the whole chunk's cost; anything
# else is heard over the whole chunk, as a short excerpt alone took a German opening for Latin.
DETECT_S = 5.0
SECOND_LOOK_S = 10.0
CHUNK_S = 30.0
PIECE_S = 10.0  # the pieces a chunk short of words is cut into, each heard on its own
SURE = 0.8
ENGLISH = "en"


@dataclass(frozen=True)
class Decoders:
    """The models a file's chunks can go to: `main` (WHISPER_MODEL) and, where it knows English
    only, `multilingual` (WHISPER_MULTILINGUAL_MODEL) for every other language; None: no routing."""

    main: "WhisperModel"
    multilingual: "WhisperModel | None" = None

    @property
    def detector(self) -> "WhisperModel | None":
        if self.main.model.is_multilingual:
            return self.main
        return self.multilingual

    def for_language(self, language: str) -> "WhisperModel":
        if language == ENGLISH or self.main.model.is_multilingual or self.multilingual is None:
            return self.main
        return self.multilingual


@dataclass(frozen=True)
class Heard:
    language: str
    probability: float


def detect_language(model: "WhisperModel", speech: np.ndarray, seconds: float = DETECT_S) -> dict[str, float]:
    """Every language's probability for a stretch of speech, from at most its first `seconds`."""
    features = model.feature_extractor(speech[: int(seconds * SAMPLE_RATE)])
    frames = min(features.shape[-1], int(seconds * 100))
    encoded = model.encode(np.ascontiguousarray(features[:, :frames]))
    return {token[2:-2]: float(p) for token, p in model.model.detect_language(encoded)[0]}


def detect_chunks(model: "WhisperModel", speech: np.ndarray, chunks: Sequence) -> tuple[list[Heard], dict[str, float]]:
    """Each chunk's language, and what the window as a whole sounds like (each language's mean
    probability, weighted by length). English heard surely in a chunk's first seconds is settled
    there, unsure English is heard over its first SECOND_LOOK_S, and what is still not sure English
    over the whole chunk; then each chunk is weighed with the window
    (`decide`), so one unsure chunk does not turn a German talk into Latin."""
    found = []
    for chunk in chunks:
        piece = speech[chunk.start:chunk.end]
        probabilities, heard_s = detect_language(model, piece), DETECT_S
        for seconds in ([SECOND_LOOK_S] if _top(probabilities) == ENGLISH else []) + [CHUNK_S]:
            if sure_english(probabilities) or len(piece) <= heard_s * SAMPLE_RATE:
                break  # settled, or the whole chunk is heard already
            probabilities, heard_s = detect_language(model, piece, seconds), seconds
        found.append(probabilities)
    window = mean_probabilities(found, [c.end - c.start for c in chunks])
    return decide(found, window), window


def _top(probabilities: dict[str, float]) -> str:
    return max(probabilities, key=probabilities.get)


def sure_english(probabilities: dict[str, float]) -> bool:
    return _top(probabilities) == ENGLISH and probabilities[ENGLISH] >= SURE


def mean_probabilities(found: Sequence[dict[str, float]], lengths: Sequence[int]) -> dict[str, float]:
    total = float(sum(lengths)) or 1.0
    return {lang: sum(f.get(lang, 0.0) * n for f, n in zip(found, lengths)) / total for lang in (found[0] if found else {})}


def decide(found: Sequence[dict[str, float]], window: dict[str, float]) -> list[Heard]:
    """Each stretch's language by its own probabilities times the window's: a sure stretch keeps
    its language, an unsure one leans to the languages the recording is in."""
    chosen = []
    for own in found:
        best = max(own, key=lambda lang: np.log(own[lang] + 1e-6) + np.log(window.get(lang, 0.0) + 1e-6))
        chosen.append(Heard(best, round(own[best], 4)))
    return chosen


def stretches_by_language(model: "WhisperModel", speech: np.ndarray, chunk,
                          window: dict[str, float]) -> list[tuple[int, int, str]]:
    """A chunk the guard found short of words, cut at its pauses into pieces of at most PIECE_S
    and each piece's language heard (weighed with the window's): (start, end, language) in joined
    speech, neighbours of one language as one. A chunk that runs from English into German is
    decided English as a whole, and tiny.en drops the German half; its redo hears each half in
    its own language."""
    from opentr_pipeline.engine.chunks import chunk_speech

    pieces = chunk_speech(chunk.spans, int(PIECE_S * SAMPLE_RATE))
    heard = decide([detect_language(model, speech[p.start:p.end], PIECE_S) for p in pieces], window)
    stretches: list[tuple[int, int, str]] = []
    for piece, found in zip(pieces, heard):
        if stretches and stretches[-1][2] == found.language:
            stretches[-1] = (stretches[-1][0], piece.end, found.language)
        else:
            stretches.append((piece.start, piece.end, found.language))
    return stretches


def by_language(heard: Sequence[Heard]) -> dict[str, list[int]]:
    """Chunk indexes per language, in order: each language is one batched decoding call."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, found in enumerate(heard):
        groups[found.language].append(index)
    return dict(groups)


def language_shares(segments: Sequence, decoded_by=lambda language: "") -> list[dict]:
    """The languages of a transcript with their share of its transcribed speech, most first, and
    the model that decoded each (`decoded_by`)."""
    seconds: dict[str, float] = defaultdict(float)
    for segment in segments:
        if segment.language:
            seconds[segment.language] += max(0.0, float(segment.end) - float(segment.start))
    total = sum(seconds.values())
    return [{"language": lang, "speech_s": round(s, 2), "share": round(s / total, 4) if total else 0.0,
             "model": decoded_by(lang)} for lang, s in sorted(seconds.items(), key=lambda item: -item[1])]


def languages_line(doc: dict) -> str:
    """What the UI shows: each language and its share (`de 62%, en 38%`)."""
    found = doc.get("languages") or []
    if not found:
        return doc.get("language", "")
    return ", ".join(f"{entry['language']} {entry['share'] * 100:.0f}%" for entry in found)
