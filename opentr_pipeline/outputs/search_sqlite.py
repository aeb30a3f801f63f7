"""The embedded search engine: SQLite's FTS5 in one file (Python's standard library, no server).
Any number of processes may read and write it (WAL; a writer waits for the lock)."""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from opentr_pipeline.outputs.search import (MARK, Filters, Hit, Part, QueryError, Term, filter_sql, parse_query,
                                           rows_of)

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


def fts_query(text: str) -> str:
    """A query as FTS5 MATCH text: every word and phrase quoted (so no character of it is FTS5
    syntax), a prefix's star after its quotes, OR and NOT as FTS5's operators."""
    return " ".join(fts_part(part) for part in parse_query(text))


def fts_part(part: Part) -> str:
    if isinstance(part, Term):
        return '"' + " ".join(part.words).replace('"', "") + '"' + ("*" if part.prefix else "")
    return part


class SqliteSearch:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.where = str(self.path)

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
        """Many transcripts over one connection, `batch` files a transaction."""
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
        key, version, rows = rows_of(doc, upload_uri)
        row = db.execute("SELECT version FROM files WHERE key = ?", (key,)).fetchone()
        if row and row[0] == version:
            return None
        db.execute("DELETE FROM turns WHERE key = ?", (key,))
        db.executemany(
            "INSERT INTO turns (text, key, path, source_uri, start, end, speaker, name, language, uploaded_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
                   (key, version, doc.get("source_uri", ""), doc.get("finished_at") or "", len(rows),
                    datetime.now(timezone.utc).isoformat(timespec="seconds")))
        return len(rows)

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
        where, values = filter_sql(filters, "?")
        where, values = ["turns MATCH ?", *where], [fts_query(query), *values]
        sql = (f"SELECT key, path, source_uri, start, end, coalesce(name, speaker), language, text, "
               f"highlight(turns, 0, ?, ?), bm25(turns) FROM turns WHERE {' AND '.join(where)} "
               f"ORDER BY bm25(turns) LIMIT ?")
        with self.connect() as db:
            try:
                rows = db.execute(sql, [*MARK, *values, max(1, int(limit))]).fetchall()
            except sqlite3.OperationalError as error:
                raise QueryError(f"cannot search for {query!r}: {error}") from None
        return [Hit(r[0], r[1], r[2], float(r[3]), float(r[4]), r[5], r[6], r[7], r[8], round(float(r[9]), 4))
                for r in rows]

    def rebuild(self, docs: Iterable[dict], upload_uri: str = "") -> tuple[int, int]:
        """Into a new file beside the index, which then replaces the old one whole."""
        building = self.path.with_name(f".{self.path.name}.{os.getpid()}.building")
        for leftover in (building, Path(f"{building}-wal"), Path(f"{building}-shm")):
            leftover.unlink(missing_ok=True)
        fresh = SqliteSearch(building)
        files, turns = fresh.index_many(docs, upload_uri)
        with fresh.connect() as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.execute("PRAGMA journal_mode=DELETE")
        for stale in (Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            stale.unlink(missing_ok=True)
        os.replace(building, self.path)
        return files, turns

