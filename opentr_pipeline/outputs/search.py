"""Find it again: every transcript's speaker turns in a full-text index (SQLite FTS5, in Python's
standard library: no server), searched by what was said, who said it, the language and the date.

A hit is one speaker turn (consecutive segments of one speaker, at most TURN_S long, so a hit
points at a moment, not at a whole monologue): its file, start and end second, speaker (the name
once given), language and text with the matched words marked. Queries take words, "exact
phrases", prefix*, OR and NOT; case and accents are folded and words stemmed (Porter: English
stems, other languages matched by their folded words). The query is always data, never SQL: it
is rewritten into FTS5's own syntax token by token (`fts_query`), and anything it cannot mean is
a QueryError with the reason.

The index is derived: `rebuild` makes it again from the transcripts, into a new file that
replaces the old one whole, so it is never the only copy of anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

TURN_S = 30.0  # a turn longer than this is cut into hits of about this length
MARK = ("«", "»")  # around each matched word in a hit's `marked` text
SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    key TEXT PRIMARY KEY, version TEXT NOT NULL, source_uri TEXT, uploaded_at TEXT, turns INTEGER, indexed_at TEXT
);
CREATE VIRTUAL TABLE IF NOT EXISTS turns USING fts5(
    text, key UNINDEXED, path UNINDEXED, source_uri UNINDEXED, start UNINDEXED, end UNINDEXED, speaker UNINDEXED,
    name UNINDEXED, language UNINDEXED, uploaded_at UNINDEXED,
    tokenize = 'porter unicode61 remove_diacritics 2'
);
"""


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
    score: float  # BM25 (lower is better, as SQLite gives it)

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


# -- queries: the person's syntax, rewritten into FTS5's -------------------------------------------

_TOKEN = re.compile(r'"([^"]*)"?|(\S+)')
_WORD = re.compile(r"[\w']+", re.UNICODE)


def fts_query(text: str) -> str:
    """A query as FTS5 MATCH text: every word and phrase quoted (so no character of it is FTS5
    syntax), `word*` a prefix, OR and NOT (upper case) as operators, anything else a space."""
    parts: list[str] = []
    for phrase, bare in _TOKEN.findall(text or ""):
        if bare in ("OR", "NOT", "AND"):
            parts.append(bare)
            continue
        words = _WORD.findall(phrase if phrase else bare)
        if not words:
            continue
        prefix = bool(bare) and bare.rstrip("\"')").endswith("*") and len(words) == 1
        quoted = '"' + " ".join(words).replace('"', "") + '"'
        parts.append(quoted + ("*" if prefix else ""))
    while parts and parts[-1] in ("OR", "NOT", "AND"):
        parts.pop()
    while parts and parts[0] in ("OR", "AND"):
        parts.pop(0)
    if not parts:
        raise QueryError(f"nothing to search for in {text!r}: give a word, a \"phrase\" or a prefix*")
    if parts[0] == "NOT":
        raise QueryError("NOT needs something before it: budget NOT travel")
    cleaned: list[str] = []
    for part in parts:  # "a OR OR b", "a NOT OR b": the second operator is dropped
        if part in ("OR", "NOT", "AND") and cleaned and cleaned[-1] in ("OR", "NOT", "AND"):
            continue
        cleaned.append(part)
    return " ".join(cleaned)


# -- the index -----------------------------------------------------------------------------------

class SearchIndex:
    """One SQLite file; any number of processes may read and write it (WAL, waits for the lock)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA busy_timeout=30000")
            connection.executescript(SCHEMA)
            yield connection
        finally:
            connection.close()

    def index(self, doc: dict, upload_uri: str = "") -> int | None:
        """Put one transcript's turns in the index, replacing what its file had; None when the
        index already holds this version of it. Returns the number of turns."""
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                turns = self._put(db, doc, upload_uri)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return turns

    def index_many(self, docs: Iterable[dict], upload_uri: str = "", batch: int = 500) -> tuple[int, int]:
        """Many transcripts over one connection, `batch` files a transaction (a rebuild); returns
        (files, turns)."""
        files = turns = 0
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                for doc in docs:
                    turns += self._put(db, doc, upload_uri) or 0
                    files += 1
                    if files % batch == 0:
                        db.execute("COMMIT")
                        db.execute("BEGIN IMMEDIATE")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return files, turns

    @staticmethod
    def _put(db: sqlite3.Connection, doc: dict, upload_uri: str) -> int | None:
        key = doc["partition_key"]
        version = version_of(doc)
        row = db.execute("SELECT version FROM files WHERE key = ?", (key,)).fetchone()
        if row and row[0] == version:
            return None
        path = relative_path(doc.get("source_uri", ""), upload_uri) or key
        turns = turns_of(doc)
        uploaded = doc.get("finished_at") or ""
        db.execute("DELETE FROM turns WHERE key = ?", (key,))
        db.executemany(
            "INSERT INTO turns (text, key, path, source_uri, start, end, speaker, name, language, uploaded_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(t.text, key, path, doc.get("source_uri", ""), t.start, t.end, t.speaker, t.name, t.language, uploaded)
             for t in turns])
        db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
                   (key, version, doc.get("source_uri", ""), uploaded, len(turns),
                    datetime.now(timezone.utc).isoformat(timespec="seconds")))
        return len(turns)

    def remove(self, key: str) -> None:
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM turns WHERE key = ?", (key,))
            db.execute("DELETE FROM files WHERE key = ?", (key,))
            db.execute("COMMIT")

    def files(self) -> dict[str, str]:
        with self.connect() as db:
            return dict(db.execute("SELECT key, version FROM files").fetchall())

    def search(self, query: str, filters: Filters = Filters(), limit: int = 20) -> list[Hit]:
        match = fts_query(query)
        where, values = ["turns MATCH ?"], [match]
        if filters.speaker:
            where.append("(speaker = ? COLLATE NOCASE OR name = ? COLLATE NOCASE)")
            values += [filters.speaker, filters.speaker]
        if filters.file:
            folder = filters.file.rstrip("/")
            escaped = folder.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("(key = ? OR path = ? OR path LIKE ? ESCAPE '\\')")
            values += [folder, folder, escaped + "/%"]
        if filters.language:
            where.append("language = ?")
            values.append(filters.language.lower())
        if filters.since:
            where.append("uploaded_at >= ?")
            values.append(filters.since)
        sql = (f"SELECT key, path, source_uri, start, end, coalesce(name, speaker), language, text, "
               f"highlight(turns, 0, ?, ?), bm25(turns) FROM turns WHERE {' AND '.join(where)} "
               f"ORDER BY bm25(turns) LIMIT ?")
        with self.connect() as db:
            try:
                rows = db.execute(sql, [*MARK, *values, max(1, int(limit))]).fetchall()
            except sqlite3.OperationalError as error:
                raise QueryError(f"cannot search for {query!r}: {error}") from None
        return [Hit(r[0], r[1], r[2], float(r[3]), float(r[4]), r[5], r[6], r[7], r[8], round(float(r[9]), 4)) for r in rows]


def relative_path(source_uri: str, upload_uri: str) -> str:
    """The upload's path under UPLOAD_URI ("" when it is not under it)."""
    if upload_uri and "://" not in upload_uri and "://" not in source_uri:
        upload_uri, source_uri = os.path.abspath(upload_uri), os.path.abspath(source_uri)
    base = upload_uri.rstrip("/") + "/"
    return source_uri[len(base):] if upload_uri and source_uri.startswith(base) else ""


def rebuild(path: str | Path, docs: Iterable[dict], upload_uri: str = "") -> tuple[int, int]:
    """The index made again from `docs` (every transcript), into a new file that then replaces
    the old one whole; returns (files, turns)."""
    path = Path(path)
    building = path.with_name(f".{path.name}.{os.getpid()}.building")
    for leftover in (building, Path(f"{building}-wal"), Path(f"{building}-shm")):
        leftover.unlink(missing_ok=True)
    index = SearchIndex(building)
    files, turns = index.index_many(docs, upload_uri)
    with index.connect() as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("PRAGMA journal_mode=DELETE")
    for stale in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        stale.unlink(missing_ok=True)
    os.replace(building, path)
    return files, turns


def index_path(storage_uri: str, dagster_home: str | None = None) -> Path:
    """Where the index lives: beside the transcripts when they are local, else on this machine
    (SQLite needs a local file; `opentr search --rebuild` makes it from the transcripts)."""
    if "://" not in storage_uri or storage_uri.startswith("file://"):
        return Path(storage_uri.removeprefix("file://")) / "search" / "index.sqlite"
    digest = hashlib.sha1(storage_uri.encode()).hexdigest()[:12]
    home = Path(dagster_home or os.environ.get("DAGSTER_HOME") or Path.home() / ".cache" / "opentr")
    return home / f"search-{digest}.sqlite"
