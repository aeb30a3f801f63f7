"""The benchmark corpus: long recordings with known text, made at run time (never committed).

Meetings and interviews are minutes long, with several speakers taking turns and short pauses
between them; that is where batched decoding drops words, and single clips never show it. So
each recording strings the speech fixtures (OPENTR_FIXTURES: JFK, five LibriSpeech speakers)
and the project's own demo clips (espeak-ng, resources/demo_media) one after another, in a
shuffled order per recording, with pauses of 0.3 s, 0.7 s, or 0.2-1.5 s at random (by file,
in turn). Its reference is the clips' reference texts in the same order. The tests and
`opentr bench` share `speech_clips` and `build_corpus`, and judge text with `word_error_rate`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from plan import BenchError

from opentr_pipeline.settings import PROJECT_ROOT

SAMPLE_RATE = 16000
DEFAULT_FIXTURES = PROJECT_ROOT.parent / "shared" / "fixtures" / "audio"
DEMO_MEDIA = PROJECT_ROOT / "resources" / "demo_media"
# A pause after each clip, by recording in turn: fixed short, fixed longer, and random.
PAUSES: list[Callable[[random.Random], float]] = [lambda rng: 0.3, lambda rng: 0.7, lambda rng: rng.uniform(0.2, 1.5)]


@dataclass(frozen=True)
class Clip:
    name: str
    samples: np.ndarray  # 16 kHz mono float32
    reference: str


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    duration_s: float
    sha256: str
    reference: str  # what is said in it, for the word error rate
    turns: list[tuple[float, float, str]] = field(default_factory=list)  # (start s, end s, clip name): who speaks when


def fixtures_folder() -> Path:
    return Path(os.environ.get("OPENTR_FIXTURES") or DEFAULT_FIXTURES).resolve()


def normalise(text: str) -> str:
    """Lower case, no punctuation: decodings differ in commas, not in words ("Mr." is "mister")."""
    text = text.lower().replace("mr.", "mister")
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text).split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    import jiwer

    return jiwer.wer(normalise(reference), normalise(hypothesis) or "<empty>")


def fixture_references(folder: Path) -> dict[str, str]:
    """File name -> reference text, from the fixtures' manifest.json: speech files only (the
    no-speech clip, a second encoding of the same speech and hotword probes left out)."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise BenchError(f"fixtures folder {folder} not found (no manifest.json): set OPENTR_FIXTURES to it")
    found = {}
    for entry in json.loads(manifest.read_text())["files"]:
        reference = entry.get("reference") or {}
        if "same_speech_as" in reference:
            continue
        texts = [text for kind, text in reference.items()
                 if isinstance(text, str) and text.strip() and "substring" not in kind and kind != "note"]
        if texts:
            found[entry["file"]] = texts[0].strip()
    return found


def speech_clips(fixtures: Path, demo: Path = DEMO_MEDIA) -> list[Clip]:
    """Every distinct piece of speech with its reference: the fixtures and the demo clips."""
    from faster_whisper import decode_audio

    sources = {fixtures / name: text for name, text in fixture_references(fixtures).items()}
    sources.update({demo / name: text for name, text in json.loads((demo / "texts.json").read_text()).items()})
    clips, said = [], set()
    for path, text in sorted(sources.items(), key=lambda item: item[0].name):
        if normalise(text) in said:  # the same speech in another encoding
            continue
        said.add(normalise(text))
        clips.append(Clip(path.name, decode_audio(str(path), sampling_rate=SAMPLE_RATE), text))
    if not clips:
        raise BenchError(f"no speech recordings with reference text in {fixtures}")
    return clips


def conversation(clips: list[Clip], index: int, seconds: float, seed: int = 0) -> tuple[np.ndarray, str]:
    """Recording `index`: clips in shuffled turns with its pause style, at least `seconds` long."""
    audio, reference, _ = conversation_with_turns(clips, index, seconds, seed)
    return audio, reference


def conversation_with_turns(clips: list[Clip], index: int, seconds: float,
                            seed: int = 0) -> tuple[np.ndarray, str, list[tuple[float, float, str]]]:
    """`conversation`, and who speaks when in it: each clip's span and name (its voice)."""
    rng = random.Random(f"{seed}-{index}")
    turns: list[tuple[float, float, str]] = []
    pause = PAUSES[index % len(PAUSES)]
    pieces: list[np.ndarray] = []
    said: list[str] = []
    length, turn = 0, []
    while True:
        if not turn:
            turn = list(clips)
            rng.shuffle(turn)
        clip = turn.pop()
        turns.append((round(length / SAMPLE_RATE, 3), round((length + len(clip.samples)) / SAMPLE_RATE, 3), clip.name))
        pieces.append(clip.samples)
        said.append(clip.reference)
        length += len(clip.samples)
        if length >= seconds * SAMPLE_RATE:  # no pause after the last clip
            return np.concatenate(pieces), " ".join(said), turns
        pieces.append(np.zeros(int(pause(rng) * SAMPLE_RATE), dtype=np.float32))
        length += len(pieces[-1])


def write_wav(path: Path, audio: np.ndarray) -> None:
    samples = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(samples.tobytes())


def build_corpus(clips: list[Clip], out_dir: Path, files: int = 6, seconds: float = 240.0,
                 seed: int = 0) -> list[CorpusFile]:
    """`files` distinct conversations of at least `seconds` each, as 16 kHz mono WAV with their text.

    Distinct bytes matter: the pipeline reuses the transcript of a file it has already seen.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus: list[CorpusFile] = []
    for index in range(files):
        audio, reference, turns = conversation_with_turns(clips, index, seconds, seed)
        path = out_dir / f"bench-{index + 1:03d}.wav"
        write_wav(path, audio)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        corpus.append(CorpusFile(path, round(len(audio) / SAMPLE_RATE, 3), digest, reference, turns))
    if len({c.sha256 for c in corpus}) != len(corpus):
        raise BenchError("corpus files are not distinct; the pipeline would reuse transcripts")
    return corpus


def wer_by_file(corpus: list[CorpusFile], texts: dict[str, str]) -> dict[str, float]:
    """Word error rate of each corpus file's text (by file name); a file with no text scores 1."""
    return {c.path.name: round(word_error_rate(c.reference, texts.get(c.path.name, "")), 4) for c in corpus}
