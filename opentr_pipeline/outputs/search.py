"""Find it again: every transcript's speaker turns in a full-text index, searched by what was
said, who said it, the language and the date. Two engines behind one interface, chosen by
SEARCH_URI as storage is by STORAGE_URI: SQLite's FTS5 (the embedded default, in Python's standard
library: no server; search_sqlite.py) and PostgreSQL's full text (tsvector, GIN; the production
shape's PostgreSQL; search_postgres.py). Same queries, same hits; ranks differ in detail (BM25
against ts_rank_cd).

A hit is one speaker turn (consecutive segments of one speaker, at most TURN_S long, so a hit
points at a moment, not at a whole monologue): its file, start and end second, speaker (the name
once given), language and text with the matched words marked. Queries take words, "exact
phrases", prefix*, OR and NOT; case and accents are folded and words stemmed (English stems,
other languages matched by their folded words). The query is always data, never SQL: it is read
into terms here (`parse_query`) and each engine writes them in its own syntax, every word quoted;
anything it cannot mean is a QueryError with the reason.

The index is derived: `rebuild` makes it again from the transcripts and replaces the old one
whole, so it is never the only copy of anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Protocol, Union

TURN_S = 30.0  # a turn longer than this is cut into hits of about this length
MARK = ("«", "»")  # around each matched word in a hit's `marked` text
# Hits are ranked among the newest RANK_WINDOW turns that match (all of them, for every query but
# the commonest words): ranking every match of "budget" in a library of millions of turns is what
# made such a query slow, and the newest of them are what a person looks for first.
RANK_WINDOW = 500


class QueryError(ValueError):
    """A query that cannot be searched; the message says why, for the person who typed it."""


@dataclass(frozen=True)
class Turn:
    start: float
    end: float
    speaker: str | None
    name: str | None
    language: str
    text: str


@dataclass(frozen=True)
class Hit:
    key: str  # the partition
    path: str  # the upload's path under UPLOAD_URI (team/weekly call.m4a)
    source_uri: str
    start: float
    end: float
    speaker: str | None  # the name once given, else the speaker id; None where speakers are off
    language: str
    text: str
    marked: str  # the text with each matched word between MARK
    score: float  # the engine's rank, lower is better: SQLite's BM25, PostgreSQL's ts_rank_cd negated
    found_by: str = "words"  # or "meaning": no turn held all the words; this one is closest in meaning

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Filters:
    speaker: str | None = None  # a speaker id or name, any case
    file: str | None = None  # an upload's path under UPLOAD_URI or its partition key, or a folder
    language: str | None = None
    since: str | None = None  # ISO date or time: uploaded (transcribed) on or after


def turns_of(doc: dict, turn_s: float = TURN_S) -> list[Turn]:
    """A transcript record's segments as speaker turns of at most about `turn_s`."""
    names = {s["id"]: s.get("name") for s in doc.get("speakers") or []}
    turns: list[Turn] = []
    for segment in doc.get("segments") or []:
        text = (segment.get("text") or "").strip()
        if not text:
            continue
        speaker = segment.get("speaker")
        language = segment.get("language") or doc.get("language", "")
        last = turns[-1] if turns else None
        if last and last.speaker == speaker and last.language == language and segment["end"] - last.start <= turn_s:
            turns[-1] = Turn(last.start, float(segment["end"]), speaker, last.name, language, f"{last.text} {text}")
        else:
            turns.append(Turn(float(segment["start"]), float(segment["end"]), speaker, names.get(speaker), language, text))
    return turns


def version_of(doc: dict) -> str:
    """What a file's entries depend on: its words, their speakers and the speakers' names."""
    decisive = [doc.get("sha256"), doc.get("finished_at"), doc.get("speakers"),
                [(s.get("start"), s.get("speaker"), s.get("text")) for s in doc.get("segments") or []]]
    return hashlib.sha1(json.dumps(decisive, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- queries: the person's syntax, read into terms each engine writes in its own ------------------

OPERATORS = ("OR", "NOT", "AND")


@dataclass(frozen=True)
class Term:
    words: tuple[str, ...]  # one word, or the words of a "phrase", in order
    prefix: bool = False  # word*: the last word is a prefix


Part = Union[Term, str]  # a term, or one of OPERATORS

_TOKEN = re.compile(r'"([^"]*)"?|(\S+)')
_WORD = re.compile(r"[\w']+", re.UNICODE)


def parse_query(text: str) -> list[Part]:
    """A query as terms and operators: words and "phrases" (all of them must be there), `word*`
    a prefix, OR and NOT (upper case) as operators; any other character only separates words."""
    parts: list[Part] = []
    for phrase, bare in _TOKEN.findall(text or ""):
        if bare in OPERATORS:
            parts.append(bare)
            continue
        words = tuple(w.strip("'") for w in _WORD.findall(phrase if phrase else bare) if w.strip("'"))
        if words:
            parts.append(Term(words, bool(bare) and bare.rstrip("\"')").endswith("*") and len(words) == 1))
    while parts and parts[-1] in OPERATORS:
        parts.pop()
    while parts and parts[0] in ("OR", "AND"):
        parts.pop(0)
    if not parts:
        raise QueryError(f"nothing to search for in {text!r}: give a word, a \"phrase\" or a prefix*")
    if parts[0] == "NOT":
        raise QueryError("NOT needs something before it: budget NOT travel")
    cleaned: list[Part] = []
    for part in parts:  # "a OR OR b", "a NOT OR b": the second operator is dropped
        if part in OPERATORS and cleaned and cleaned[-1] in OPERATORS:
            continue
        cleaned.append(part)
    return cleaned


# -- the interface both engines keep ------------------------------------------------------------

class SearchEngine(Protocol):
    where: str  # the index, as shown to people (a path, or a URL without its password)

    def index(self, doc: dict, upload_uri: str = "") -> int | None:
        """One transcript's turns in, replacing what its file had; None when this version is there."""

    def index_many(self, docs: Iterable[dict], upload_uri: str = "") -> tuple[int, int]:
        """Many transcripts (files, turns)."""

    def remove(self, key: str) -> None: ...

    def files(self) -> dict[str, str]:
        """Every indexed file's partition key and the version of it indexed."""

    def search(self, query: str, filters: Filters = Filters(), limit: int = 20) -> list[Hit]: ...

    def rebuild(self, docs: Iterable[dict], upload_uri: str = "") -> tuple[int, int]:
        """The index made again from every transcript, replacing the old one whole."""


def open_search(search_uri: str, storage_uri: str, dagster_home: str | None = None,
                meaning: bool = True) -> SearchEngine:
    """The engine SEARCH_URI names: postgresql://... or a SQLite file; empty, SQLite beside the
    transcripts (`sqlite_path`). `meaning`: keep each turn's vector, for the meaning leg."""
    if search_uri.startswith(("postgresql://", "postgres://", "postgresql+psycopg2://")):
        from opentr_pipeline.outputs.search_postgres import PostgresSearch

        return PostgresSearch(search_uri, meaning)
    from opentr_pipeline.outputs.search_sqlite import SqliteSearch

    return SqliteSearch(Path(search_uri.removeprefix("sqlite://")) if search_uri
                        else sqlite_path(storage_uri, dagster_home), meaning)


def by_meaning(engine, query: str, filters: Filters, limit: int) -> list[Hit]:
    """The meaning leg (search_meaning.py), for an engine whose words found nothing: its
    `_newer_vectors(after_id)` and `_rows_by_ids(ids, filters)` give what it needs."""
    from opentr_pipeline.outputs.search_meaning import plain_question

    question = plain_question(query)
    if not engine.meanings or question is None:
        return []
    near = engine.meanings.nearest(question, engine._newer_vectors, max(50, 4 * limit))
    closeness = dict(near)
    rows = engine._rows_by_ids(list(closeness), filters)  # key, path, source_uri, start, end, speaker, language, text, id
    rows.sort(key=lambda r: -closeness[r[8]])
    return [Hit(r[0], r[1], r[2], float(r[3]), float(r[4]), r[5], r[6], r[7], r[7], -round(closeness[r[8]], 4), "meaning")
            for r in rows[:limit]]


def filter_sql(filters: Filters, param: str, collate: str = "") -> tuple[list[str], list[str]]:
    """The filters as SQL both engines read (`param` is their placeholder), and their values. A
    folder is a range of paths (folder/ up to folder0, '0' being the byte after '/'), which an index
    on the path answers; `collate` makes the comparison bytewise where the engine's is not."""
    where: list[str] = []
    values: list[str] = []
    if filters.speaker:
        where.append(f"(lower(speaker) = lower({param}) OR lower(name) = lower({param}))")
        values += [filters.speaker, filters.speaker]
    if filters.file:  # the file itself, or every file under the folder (a whole folder name)
        folder = filters.file.rstrip("/")
        where.append(f"(key = {param} OR path{collate} = {param} OR (path{collate} >= {param} AND path{collate} < {param}))")
        values += [folder, folder, folder + "/", folder + "0"]
    if filters.language:
        where.append(f"language = {param}")
        values.append(filters.language.lower())
    if filters.since:
        where.append(f"uploaded_at >= {param}")
        values.append(filters.since)
    return where, values


def rows_of(doc: dict, upload_uri: str) -> tuple[str, str, list[tuple]]:
    """A transcript as (partition key, version, rows), one row per turn in the column order both
    engines store: text, key, path, source_uri, start, end, speaker, name, language, uploaded_at."""
    key = doc["partition_key"]
    path = relative_path(doc.get("source_uri", ""), upload_uri) or key
    uploaded = doc.get("finished_at") or ""
    return key, version_of(doc), [
        (t.text, key, path, doc.get("source_uri", ""), t.start, t.end, t.speaker, t.name, t.language, uploaded)
        for t in turns_of(doc)]


def relative_path(source_uri: str, upload_uri: str) -> str:
    """The upload's path under UPLOAD_URI ("" when it is not under it)."""
    if upload_uri and "://" not in upload_uri and "://" not in source_uri:
        upload_uri, source_uri = os.path.abspath(upload_uri), os.path.abspath(source_uri)
    base = upload_uri.rstrip("/") + "/"
    return source_uri[len(base):] if upload_uri and source_uri.startswith(base) else ""


def sqlite_path(storage_uri: str, dagster_home: str | None = None) -> Path:
    """Where the index lives: beside the transcripts when they are local, else on this machine
    (SQLite needs a local file; `opentr search --rebuild` makes it from the transcripts)."""
    if "://" not in storage_uri or storage_uri.startswith("file://"):
        return Path(storage_uri.removeprefix("file://")) / "search" / "index.sqlite"
    digest = hashlib.sha1(storage_uri.encode()).hexdigest()[:12]
    home = Path(dagster_home or os.environ.get("DAGSTER_HOME") or Path.home() / ".cache" / "opentr")
    return home / f"search-{digest}.sqlite"
