"""The benchmark corpus: distinct recordings made at run time from the speech fixtures
(never committed), read from OPENTR_FIXTURES."""

from __future__ import annotations

import hashlib
import os
import random
import wave
from dataclasses import dataclass
from pathlib import Path

from plan import BenchError

from opentr_pipeline.settings import PROJECT_ROOT

SAMPLE_RATE = 16000
NO_SPEECH = "squirrel_nospeech.wav"  # silence-like noise: it would only pad the corpus
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".opus")
DEFAULT_FIXTURES = PROJECT_ROOT.parent / "shared" / "fixtures" / "audio"


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    duration_s: float
    sha256: str


def fixtures_folder() -> Path:
    return Path(os.environ.get("OPENTR_FIXTURES") or DEFAULT_FIXTURES).resolve()


def speech_fixtures(folder: Path) -> list[Path]:
    """Every speech recording in the fixtures folder (the no-speech clip left out)."""
    if not folder.is_dir():
        raise BenchError(f"fixtures folder {folder} not found: set OPENTR_FIXTURES to it")
    found = sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES and p.name != NO_SPEECH
    )
    if not found:
        raise BenchError(f"no speech recordings ({', '.join(AUDIO_SUFFIXES)}) in {folder}")
    return found


def _write_wav(path: Path, audio) -> None:
    import numpy as np

    samples = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(samples.tobytes())


def build_corpus(fixtures: list[Path], out_dir: Path, files: int = 8, seconds: float = 120.0,
                 seed: int = 0) -> list[CorpusFile]:
    """Distinct recordings of at least `seconds` each, 16 kHz mono WAV, made from the fixtures.

    File i plays the clips rotated by i (reversed on every second pass over the rotations),
    with a random 0.3-0.8 s silence after each clip, until it is `seconds` long. Distinct
    bytes matter: the pipeline reuses the transcript of a file it has already seen.
    """
    import numpy as np
    from faster_whisper import decode_audio

    clips = [decode_audio(str(p), sampling_rate=SAMPLE_RATE) for p in fixtures]
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus: list[CorpusFile] = []
    target = int(seconds * SAMPLE_RATE)
    for i in range(files):
        rng = random.Random(f"{seed}-{i}")
        shift = i % len(clips)
        order = clips[shift:] + clips[:shift]
        if (i // len(clips)) % 2:
            order.reverse()
        pieces, length, n = [], 0, 0
        while length < target:
            clip = order[n % len(order)]
            silence = np.zeros(int(rng.uniform(0.3, 0.8) * SAMPLE_RATE), dtype=np.float32)
            pieces += [clip, silence]
            length += len(clip) + len(silence)
            n += 1
        audio = np.concatenate(pieces[:-1])  # no silence after the last clip
        path = out_dir / f"bench-{i + 1:03d}.wav"
        _write_wav(path, audio)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        corpus.append(CorpusFile(path, round(len(audio) / SAMPLE_RATE, 3), digest))
    if len({c.sha256 for c in corpus}) != len(corpus):
        raise BenchError("corpus files are not distinct; the pipeline would reuse transcripts")
    return corpus
