"""Every setting the pipeline reads from the environment, typed and checked once.

A bad value fails at start-up with a message naming the variable and the value, so a typo in
`.env` never surfaces as a half-finished batch an hour later.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = "bundled-tiny.en"
FASTER_WHISPER_SIZES = (
    "tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium",
    "large-v1", "large-v2", "large-v3", "large", "distil-large-v2", "distil-medium.en",
    "distil-small.en", "distil-large-v3", "distil-large-v3.5", "large-v3-turbo", "turbo",
)
COMPUTE_TYPES = (
    "auto", "default", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16",
    "float16", "bfloat16", "float32",
)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """A setting has a value the pipeline cannot work with."""


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r}: expected true or false")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a whole number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r}: must be {minimum} or more")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, default).strip().lower() or default
    if value not in choices:
        raise SettingsError(f"{name}={env.get(name)!r}: expected one of {', '.join(choices)}")
    return value


def _uri(env: Mapping[str, str], name: str, default: str) -> str:
    """Local paths become absolute (relative to the working directory); URLs stay as given."""
    raw = env.get(name, "").strip() or default
    if "://" in raw:
        return raw.rstrip("/")
    return str(Path(raw).expanduser().resolve())


def check_model(name: str, variable: str = "WHISPER_MODEL") -> str:
    """Accept the bundled model, a faster-whisper size, a Hugging Face id, or a model folder."""
    if name == BUNDLED_MODEL or name in FASTER_WHISPER_SIZES:
        return name
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise SettingsError(f"{variable}={name!r}: folder has no CTranslate2 model.bin")
        return str(path.resolve())
    looks_like_path = name.startswith(("/", "./", "../", "~")) or path.suffix == ".bin"
    if not looks_like_path and re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return name  # a Hugging Face repository id, fetched by faster-whisper where a network exists
    raise SettingsError(
        f"{variable}={name!r}: not a model folder, a faster-whisper size "
        f"({', '.join(FASTER_WHISPER_SIZES[:6])}, ...) or a Hugging Face id (owner/name)"
    )


@dataclass(frozen=True)
class Settings:
    upload_uri: str
    storage_uri: str
    dagster_home: str
    gpu_scale_enabled: bool = False
    gpu_scale_device_id: int = 0
    gpu_scale_workers: int = 1
    gpu_scale_default_worker: bool = False
    gpu_device_id: int = 0
    whisper_model: str = BUNDLED_MODEL
    whisper_device: str = "auto"
    whisper_compute_type: str = "auto"
    beam_size: int = 5
    batch_size: int = 8
    vad_filter: bool = True
    language: str | None = None
    files_per_run: int = 16
    runs_at_once: int = 0  # opentr run; 0: enough to give every worker a file, plus one
    # Decoded audio is 64 kB per second (float32, 16 kHz): 4 h is 0.9 GB per file in memory.
    max_duration_s: int = 4 * 3600
    max_file_bytes: int = 20 * 2**30
    max_attempts: int = 3  # runs of one file, the first included, before it is given up

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        language = env.get("WHISPER_LANGUAGE", "").strip().lower() or None
        if language is not None and not re.fullmatch(r"[a-z]{2,3}(-[a-z]+)?|yue|haw", language):
            raise SettingsError(f"WHISPER_LANGUAGE={language!r}: expected a language code such as en")
        return cls(
            upload_uri=_uri(env, "UPLOAD_URI", "data/uploads"),
            storage_uri=_uri(env, "STORAGE_URI", "data/store"),
            dagster_home=_uri(env, "DAGSTER_HOME", str(PROJECT_ROOT / ".dagster_home")),
            gpu_scale_enabled=_bool(env, "GPU_SCALE_ENABLED", False),
            gpu_scale_device_id=_int(env, "GPU_SCALE_DEVICE_ID", 0, minimum=0),
            gpu_scale_workers=_int(env, "GPU_SCALE_WORKERS", 1, minimum=1),
            gpu_scale_default_worker=_bool(env, "GPU_SCALE_DEFAULT_WORKER", False),
            gpu_device_id=_int(env, "GPU_DEVICE_ID", 0, minimum=0),
            whisper_model=check_model(env.get("WHISPER_MODEL", "").strip() or BUNDLED_MODEL),
            whisper_device=_choice(env, "WHISPER_DEVICE", "auto", ("auto", "cuda", "cpu")),
            whisper_compute_type=_choice(env, "WHISPER_COMPUTE_TYPE", "auto", COMPUTE_TYPES),
            beam_size=_int(env, "WHISPER_BEAM_SIZE", 5, minimum=1),
            batch_size=_int(env, "WHISPER_BATCH_SIZE", 8, minimum=1),
            vad_filter=_bool(env, "WHISPER_VAD", True),
            language=language,
            files_per_run=_int(env, "OPENTR_FILES_PER_RUN", 16, minimum=1),
            runs_at_once=_int(env, "OPENTR_RUNS_AT_ONCE", 0, minimum=0),
            max_duration_s=_int(env, "OPENTR_MAX_DURATION_S", 4 * 3600, minimum=1),
            max_file_bytes=_int(env, "OPENTR_MAX_FILE_BYTES", 20 * 2**30, minimum=1),
            max_attempts=_int(env, "OPENTR_MAX_ATTEMPTS", 3, minimum=1),
        )
