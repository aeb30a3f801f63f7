"""Every record the pipeline writes and reads back, each kind with one typed schema.

A record read back may be cut in half (a disk that filled, a copy that stopped), edited by hand or
written by another program. Read through `Storage.read_json_or_none` and `Storage.list_records`,
each is checked against the schema of its folder; one that does not fit is named with its path
and reason and treated as missing (its file is done again), and never stops the others being
read. Fields beyond the schema are kept: the schemas say what the code relies on, no more.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class Record(BaseModel):
    model_config = ConfigDict(extra="allow")


def _instant(value: str) -> str:
    """An ISO 8601 time (the report sorts and subtracts them): validated, kept as written."""
    datetime.fromisoformat(value)
    return value


class WordRecord(Record):
    start: float
    end: float
    word: str
    probability: float


class SegmentRecord(Record):
    id: int
    start: float
    end: float
    text: str
    words: list[WordRecord] = []


class TranscriptRecord(Record):
    partition_key: str
    source_uri: str = ""
    text: str
    language: str
    language_probability: float = 0.0
    duration_s: float = Field(ge=0)
    segments: list[SegmentRecord]
    model: str
    compute_type: str
    device: str
    worker: int
    started_at: str
    finished_at: str
    wall_s: float = Field(ge=0)
    x_realtime: float = Field(ge=0)
    words: int = Field(ge=0)
    sha256: str = ""

    _instants = field_validator("started_at", "finished_at")(_instant)


class ProbeRecord(Record):
    partition_key: str
    source_uri: str
    container: str
    audio_codec: str
    duration_s: float = Field(ge=0)
    channels: int
    sample_rate: int
    size_bytes: int
    sha256: str
    source_version: list | None = None


class SourceRecord(Record):
    source_uri: str
    partition_key: str = ""
    relative_path: str = ""
    size: int | None = None
    mtime: float | None = None
    change: str | None = None


class ClaimRecord(Record):
    run_id: str
    asset: str = "transcript"
    partition_key: str = ""
    state: str = "started"
    since: float = 0.0
    host: str = ""
    pid: int | None = None


class FailureRecord(Record):
    partition_key: str
    asset: str
    reason: str
    permanent: bool
    run_id: str
    at: str = ""
    source_version: list | None = None


class CrashRecord(Record):
    partition_key: str
    count: int = Field(ge=0)
    last_run_id: str = ""


class ContentIndexRecord(Record):
    partition_key: str
    settings_version: str | None = None


class VoicePrintsRecord(Record):
    partition_key: str
    sha256: str
    spans: list[list[int]]
    windows: list[list[int]]
    dim: int = Field(ge=0)
    embeddings: str


class SpeakersRecord(Record):
    partition_key: str
    sha256: str = ""
    speakers: list[dict]
    turns: list[list]
    voices: dict[str, list[float]]


# A record's kind is its top folder under STORAGE_URI.
SCHEMAS: dict[str, type[Record]] = {
    "transcripts": TranscriptRecord,
    "previous": TranscriptRecord,
    "media": ProbeRecord,
    "sources": SourceRecord,
    "inflight": ClaimRecord,
    "failures": FailureRecord,
    "crashes": CrashRecord,
    "by_sha256": ContentIndexRecord,
    "voiceprints": VoicePrintsRecord,
    "speakers": SpeakersRecord,
}


def schema_for(relative: str) -> type[Record] | None:
    return SCHEMAS.get(relative.split("/", 1)[0])


def damage(relative: str, value: object) -> str | None:
    """Why `value`, read from `relative`, is no record of its kind; None when it is one."""
    if not isinstance(value, dict):
        return f"not a JSON object ({type(value).__name__})"
    schema = schema_for(relative)
    if schema is None:
        return None
    try:
        schema.model_validate(value)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "record"
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        return f"{where}: {first['msg'].lower()}{more}"
    return None
