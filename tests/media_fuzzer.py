"""A mutation fuzzer over how the pipeline opens media (issue 26, item 3).

FFmpeg itself is fuzzed by OSS-Fuzz; what is fuzzed here is how we call it: the probe and the
decoder, each in its child process (engine/isolation.py), as `media_file` and the transcription
workers call them. Each case is a seed from `fuzz_seeds/` (a fraction of a second of speech in
each container and codec users send) with mutations stacked on it: bit flips, interesting bytes,
truncation, a header field that lies about sizes, rates or channel counts, a block repeated or
cut, or the head of one container glued to the body of another under a third one's name.

Every case must end in audio fit to transcribe (finite samples) or a MediaError that names the
file, with this process alive. A case whose decoder crashed is contained, and so passes, but is
a finding: it is kept under `.test-artifacts/fuzz-findings/` to become a regression case in
`fuzz_regressions/` (what is there is run first, every time).

    python tests/media_fuzzer.py --seconds 600 --seed 7     # a longer campaign by hand
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEEDS = HERE / "fuzz_seeds"
REGRESSIONS = HERE / "fuzz_regressions"
FINDINGS = HERE.parent / ".test-artifacts" / "fuzz-findings"
EXTENSIONS = [".wav", ".flac", ".mp3", ".ogg", ".m4a", ".webm", ".mkv", ".aiff", ".wma", ".amr", ".mov", ".opus"]
INTERESTING_32 = [0, 1, 2, 7, 8, 9, 64, 65, 255, 256, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
INTERESTING_BYTES = [0x00, 0x01, 0x7F, 0x80, 0xFF]


# --- mutations: each takes the bytes and a random source and returns new bytes ---------------

def flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(len(out))
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def interesting_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] = rng.choice(INTERESTING_BYTES)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(1, len(data))]


def lie_in_a_field(data: bytes, rng: random.Random) -> bytes:
    """An interesting number over a 16- or 32-bit field in the first 128 bytes, where containers
    keep their sizes, rates and channel counts, in either byte order."""
    out = bytearray(data)
    width = rng.choice([2, 4])
    at = rng.randrange(0, max(1, min(128, len(out) - width)))
    value = rng.choice(INTERESTING_32) & ((1 << (8 * width)) - 1)
    out[at:at + width] = value.to_bytes(width, rng.choice(["little", "big"]))
    return bytes(out)


WAV_FIELDS = {  # fmt chunk fields of a canonical WAV: offset, struct format
    "channels": (22, "<H"), "sample_rate": (24, "<I"), "byte_rate": (28, "<I"),
    "block_align": (32, "<H"), "bits_per_sample": (34, "<H"), "riff_size": (4, "<I"), "data_size": (40, "<I"),
}


def lie_in_a_wav_header(data: bytes, rng: random.Random) -> bytes:
    """A WAV header field that lies: channels, rates, alignment, sizes (the 8-channel crash's kin)."""
    if not (data[:4] == b"RIFF" and data[8:12] == b"WAVE" and len(data) > 44):
        return lie_in_a_field(data, rng)
    name = rng.choice(sorted(WAV_FIELDS))
    at, fmt = WAV_FIELDS[name]
    limit = 0xFFFF if fmt == "<H" else 0xFFFFFFFF
    value = rng.choice([v for v in INTERESTING_32 if v <= limit] + [rng.randrange(limit + 1)])
    out = bytearray(data)
    out[at:at + struct.calcsize(fmt)] = struct.pack(fmt, value)
    return bytes(out)


def repeat_a_block(data: bytes, rng: random.Random) -> bytes:
    start = rng.randrange(len(data))
    block = data[start:start + rng.randint(1, 512)]
    at = rng.randrange(len(data))
    return data[:at] + block * rng.randint(1, 8) + data[at:]


def cut_a_block(data: bytes, rng: random.Random) -> bytes:
    start = rng.randrange(len(data))
    return data[:start] + data[start + rng.randint(1, 512):]


MUTATIONS = [flip_bits, interesting_bytes, truncate, lie_in_a_field, lie_in_a_wav_header, repeat_a_block, cut_a_block]


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    how: str  # the seed and mutations, to reproduce it


def make_case(number: int, seeds: dict[str, bytes], rng: random.Random) -> Case:
    seed_name = rng.choice(sorted(seeds))
    data, steps = seeds[seed_name], [seed_name]
    if rng.random() < 0.1:  # swapped containers: one's head on another's body
        other = rng.choice(sorted(seeds))
        cut = rng.randrange(1, min(len(data), len(seeds[other])))
        data, steps = data[:cut] + seeds[other][cut:], steps + [f"body of {other} from {cut}"]
    for _ in range(rng.randint(1, 3)):
        if len(data) < 2:
            break
        mutation = rng.choice(MUTATIONS)
        data = mutation(data, rng) or data[:1]
        steps.append(mutation.__name__)
    extension = Path(seed_name).suffix if rng.random() < 0.8 else rng.choice(EXTENSIONS)  # or a name that lies
    return Case(f"case-{number:05d}{extension}", data, " + ".join(steps))


# --- the oracle --------------------------------------------------------------------------------

@dataclass
class Outcome:
    audio: int = 0  # cases decoded to audio fit to transcribe
    refused: int = 0  # cases refused with a MediaError naming the file
    crashes: list[str] = field(default_factory=list)  # contained, but findings
    wrong: list[str] = field(default_factory=list)  # anything else: the test fails


def judge(path: Path, how: str, outcome: Outcome, limits, max_duration_s: float = 120.0) -> None:
    """Through the probe and the decoder as the pipeline calls them, in that order."""
    from opentr_pipeline.engine.isolation import probe_isolated
    from opentr_pipeline.engine.media import MediaError
    from opentr_pipeline.engine.transcription import load_audio

    name = path.name
    try:
        probe_isolated(path, name=name, max_duration_s=max_duration_s, limits=limits)
        audio = load_audio(path, name, limits=limits)
        samples = [audio.samples] + [w.samples for w in (audio.rest or [])]
        if not all(np.isfinite(s).all() for s in samples):
            outcome.wrong.append(f"{name} ({how}): decoded to samples that are not finite")
            keep_finding(path)
        else:
            outcome.audio += 1
    except MediaError as error:
        if name not in str(error):
            outcome.wrong.append(f"{name} ({how}): a refusal that does not name the file: {error}")
        elif "crashed on it" in str(error) or "made no progress" in str(error):
            outcome.crashes.append(f"{name} ({how}): {error}")
            keep_finding(path)
        else:
            outcome.refused += 1
    except Exception as error:  # noqa: BLE001 - any other end is what the fuzzer looks for
        outcome.wrong.append(f"{name} ({how}): {type(error).__name__}: {error}")
        keep_finding(path)


def keep_finding(path: Path) -> None:
    FINDINGS.mkdir(parents=True, exist_ok=True)
    (FINDINGS / path.name).write_bytes(path.read_bytes())


def fuzz(work: Path, seconds: float, seed: int, max_cases: int | None = None, threads: int = 2) -> tuple[Outcome, int]:
    """Cases until `seconds` pass (or `max_cases`); returns the outcome and how many ran."""
    from opentr_pipeline.engine.isolation import DecodeLimits

    limits = DecodeLimits(memory_mb=1024, stall_s=20)
    seeds = {p.name: p.read_bytes() for p in sorted(SEEDS.iterdir()) if p.is_file()}
    outcome = Outcome()
    deadline = time.monotonic() + seconds
    work.mkdir(parents=True, exist_ok=True)

    def one(number: int) -> None:
        case = make_case(number, seeds, random.Random(seed * 1_000_003 + number))  # one case, one number
        path = work / case.name
        path.write_bytes(case.data)
        try:
            judge(path, case.how, outcome, limits)
        finally:
            path.unlink(missing_ok=True)

    ran = 0
    with ThreadPoolExecutor(threads) as pool:
        while time.monotonic() < deadline and (max_cases is None or ran < max_cases):
            batch = range(ran, ran + 4 * threads if max_cases is None else min(ran + 4 * threads, max_cases))
            list(pool.map(one, batch))
            ran = batch.stop
    return outcome, ran


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        outcome, ran = fuzz(Path(folder), args.seconds, args.seed)
    print(f"{ran} cases in {args.seconds:.0f} s: {outcome.audio} decoded, {outcome.refused} refused by name, "
          f"{len(outcome.crashes)} decoder crashes contained, {len(outcome.wrong)} wrong")
    for line in outcome.crashes + outcome.wrong:
        print(" ", line)
    return 1 if outcome.wrong else 0


if __name__ == "__main__":
    sys.exit(main())
