"""The held-apart corpus: conversations built otherwise than corpus.py's, to judge settings on
speech they were not chosen on.

corpus.py strings single clips in shuffled rounds, one pause style per file. Here a file is a
meeting of a cast of three to five voices (fixture voices and espeak-ng voices mixed, a different
cast per file) taking turns of one to three utterances each, the next turn always another voice:

- an utterance is one fixture clip (2-11 s; never the same one twice in a turn), a long espeak-ng passage of two to four sentences
  (15-30 s, spoken at its own speed), or a short back-channel ("Right.", "Go ahead.");
- each utterance at its own loudness (-10 to +3 dB);
- pauses: 0.1-0.4 s within a turn; between turns a quick hand-over (0.05-0.25 s) half the time, a
  long silence (3-6 s) one time in eight, else 0.4-1.5 s; a lead-in of 0.5-2 s; every other file
  has room noise (about -45 dBFS) in its pauses instead of digital silence.

Two splits with their own seeds: settings are chosen on `tune` and reported on `report`; neither
shares a seed string with corpus.py (`"{seed}-{index}"`). Built at run time, never committed.

    .venv/bin/python benchmarks/held_apart.py --split tune --files 3 --seconds 240 --out /tmp/held
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import random
import sys
from pathlib import Path

import numpy as np
from corpus import SAMPLE_RATE, Clip, CorpusFile, build_corpus, conversation, fixtures_folder, speech_clips, write_wav
from meetings import voices
from plan import BenchError

SPLITS = ("tune", "report")
CORPORA = ("conversations", *(f"held-apart-{split}" for split in SPLITS))

# espeak-ng voices that join the fixture voices: (name, espeak voice, words per minute)
SYNTHETIC_VOICES = (("espeak-us-f", "en-us+f3", 150), ("espeak-gb-m", "en-gb+m3", 165),
                    ("espeak-us-m", "en-us+m1", 140), ("espeak-gb-f", "en-gb+f4", 175))
BACK_CHANNELS = ("Right.", "Yes, exactly.", "Go ahead.", "Thank you.", "I agree.", "Not yet.",
                 "That makes sense.", "Good point.", "Sounds good to me.", "Okay, next one.")
# Sentences for long passages: plain meeting talk, written for this corpus.
SENTENCES = (
    "The second quarter numbers came in lower than we planned, mostly because two large orders moved into July.",
    "We should ask the finance team to check the travel budget before anyone books the conference.",
    "The new build passed every test on Tuesday, but the release notes still need a careful review.",
    "Our customers in the north region asked for a longer trial period and a simpler price list.",
    "I spoke with the landlord about the office lease, and he agreed to wait until the end of the month.",
    "The design review found three problems with the login page, and one of them is serious.",
    "If we hire two more engineers this autumn, the mobile project can start in the winter.",
    "The survey shows that most people prefer meetings in the morning and shorter calls in the afternoon.",
    "Please send me the contract by Friday so that our lawyer can read it over the weekend.",
    "The warehouse moved to the new software last week, and shipping times are already better.",
    "We lost a day because the test servers were down, so the deadline should move to Thursday.",
    "The board wants a short report on hiring, spending and risks before the next meeting.",
)


@functools.lru_cache(maxsize=None)
def synthesised(text: str, voice: str, speed: int) -> np.ndarray:
    from spoken_languages import espeak

    return espeak(text, voice, speed)


def synthetic_utterance(rng: random.Random, voice: tuple[str, str, int], long: bool) -> Clip:
    name, espeak_voice, speed = voice
    text = " ".join(rng.sample(SENTENCES, rng.randint(2, 4))) if long else rng.choice(BACK_CHANNELS)
    return Clip(name, synthesised(text, espeak_voice, speed), text)


def held_apart_conversation(clips: list[Clip], split: str, index: int,
                            seconds: float) -> tuple[np.ndarray, str, list[tuple[float, float, str]]]:
    """Meeting `index` of `split`: its samples, its reference text, and (start s, end s, voice)
    of every utterance."""
    if split not in SPLITS:
        raise BenchError(f"no held-apart split {split!r}: choose one of {', '.join(SPLITS)}")
    rng = random.Random(f"held-apart-{split}-{index}")
    real = voices(clips)
    synthetic = {name: (name, voice, speed) for name, voice, speed in SYNTHETIC_VOICES}
    cast = rng.sample(sorted(real), rng.randint(2, 3)) + rng.sample(sorted(synthetic), rng.randint(1, 2))
    noisy = index % 2 == 1

    def quiet(length_s: float) -> np.ndarray:
        samples = int(length_s * SAMPLE_RATE)
        if not noisy:
            return np.zeros(samples, np.float32)
        return np.random.default_rng(rng.getrandbits(32)).normal(0, 0.0056, samples).astype(np.float32)  # -45 dBFS

    pieces = [quiet(rng.uniform(0.5, 2.0))]
    at = len(pieces[0])
    said: list[str] = []
    turns: list[tuple[float, float, str]] = []
    current = None
    while at < seconds * SAMPLE_RATE:
        current = rng.choice([v for v in cast if v != current])
        spoken: list[str] = []
        for number in range(rng.randint(1, 3)):
            if current in synthetic:
                utterance = synthetic_utterance(rng, synthetic[current], long=rng.random() < 0.6)
            else:  # a fixture voice has few clips: a turn never says the same clip twice
                unsaid = [clip for clip in real[current] if clip.reference not in spoken]
                if not unsaid:
                    break
                utterance = rng.choice(unsaid)
            if number:
                pieces.append(quiet(rng.uniform(0.1, 0.4)))
                at += len(pieces[-1])
            spoken.append(utterance.reference)
            gain = 10 ** (rng.uniform(-10, 3) / 20)
            pieces.append(np.clip(utterance.samples * gain, -1, 1).astype(np.float32))
            said.append(utterance.reference)
            turns.append((round(at / SAMPLE_RATE, 3), round((at + len(utterance.samples)) / SAMPLE_RATE, 3), current))
            at += len(utterance.samples)
        draw = rng.random()
        pause = rng.uniform(0.05, 0.25) if draw < 0.5 else rng.uniform(3.0, 6.0) if draw < 0.625 else rng.uniform(0.4, 1.5)
        pieces.append(quiet(pause))
        at += len(pieces[-1])
    return np.concatenate(pieces[:-1]), " ".join(said), turns


def build_held_apart(clips: list[Clip], out_dir: Path, split: str, files: int, seconds: float) -> list[CorpusFile]:
    """`files` meetings of `split`, at least `seconds` each, as 16 kHz mono WAV with their text."""
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = []
    for index in range(files):
        audio, reference, turns = held_apart_conversation(clips, split, index, seconds)
        path = out_dir / f"held-{split}-{index + 1:03d}.wav"
        write_wav(path, audio)
        corpus.append(CorpusFile(path, round(len(audio) / SAMPLE_RATE, 3),
                                 hashlib.sha256(path.read_bytes()).hexdigest(), reference, turns))
    return corpus


def build_named(name: str, clips: list[Clip], out_dir: Path, files: int, seconds: float) -> list[CorpusFile]:
    """The corpus a benchmark's --corpus names: corpus.py's conversations or a held-apart split."""
    if name == "conversations":
        return build_corpus(clips, out_dir, files, seconds)
    if name.startswith("held-apart-") and name.removeprefix("held-apart-") in SPLITS:
        return build_held_apart(clips, out_dir, name.removeprefix("held-apart-"), files, seconds)
    raise BenchError(f"no corpus {name!r}: choose one of {', '.join(CORPORA)}")


def in_memory(name: str, clips: list[Clip], files: int, seconds: float) -> list[tuple[np.ndarray, str]]:
    """(samples, reference) of each file of a named corpus, without writing files."""
    if name == "conversations":
        return [conversation(clips, index, seconds) for index in range(files)]
    if name.startswith("held-apart-"):
        return [held_apart_conversation(clips, name.removeprefix("held-apart-"), index, seconds)[:2]
                for index in range(files)]
    raise BenchError(f"no corpus {name!r}: choose one of {', '.join(CORPORA)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=SPLITS, default="tune")
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    for item in build_held_apart(speech_clips(fixtures_folder()), Path(args.out), args.split, args.files, args.seconds):
        print(f"{item.path}  {item.duration_s:.1f} s  {len(item.turns)} utterances  "
              f"{len({voice for _, _, voice in item.turns})} voices")
    return 0


if __name__ == "__main__":
    sys.exit(main())
