"""The embedded search engine: SQLite's FTS5 in one file (Python's standard library, no server).
Any number of processes may read and write it (WAL; a writer waits for the lock).

An external-content FTS5 table: the turns live in an ordinary table (`turn_rows`, indexed by file,
so replacing a file's turns touches those rows only), the full-text index beside it, kept in step
by triggers. A file of the first layout (one FTS5 table holding everything) is dropped on first
use: the index is derived, `opentr search --rebuild` makes it again."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from opentr_pipeline.outputs.search import (MARK, RANK_WINDOW, Filters, Hit, Part, QueryError, Term, by_meaning,
                                           filter_sql, parse_query, rows_of)
from opentr_pipeline.outputs.search_meaning import WINDOW, Meanings

LAYOUT = 5  # PRAGMA user_version of this layout
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS files (
        key TEXT PRIMARY KEY, version TEXT NOT NULL, source_uri TEXT, uploaded_at TEXT, turns INTEGER, indexed_at TEXT)""",
    """CREATE TABLE IF NOT EXISTS turn_rows (
        id INTEGER PRIMARY KEY, text TEXT NOT NULL, key TEXT NOT NULL, path TEXT, source_uri TEXT, start REAL,
        end REAL, speaker TEXT, name TEXT, language TEXT, uploaded_at TEXT, scope TEXT, vector BLOB)""",
    "CREATE INDEX IF NOT EXISTS turn_rows_key ON turn_rows (key)",
    """CREATE VIRTUAL TABLE IF NOT EXISTS turns USING fts5(
        text, scope, content = 'turn_rows', content_rowid = 'id', tokenize = 'porter unicode61 remove_diacritics 2')""",
    """CREATE TRIGGER IF NOT EXISTS turn_rows_added AFTER INSERT ON turn_rows BEGIN
        INSERT INTO turns (rowid, text, scope) VALUES (new.id, new.text, new.scope); END""",
    """CREATE TRIGGER IF NOT EXISTS turn_rows_removed AFTER DELETE ON turn_rows BEGIN
        INSERT INTO turns (turns, rowid, text, scope) VALUES ('delete', old.id, old.text, old.scope); END""",
]


def fts_query(text: str) -> str:
    """A query as FTS5 MATCH text: every word and phrase quoted (so no character of it is FTS5
    syntax), a prefix's star after its quotes, OR and NOT as FTS5's operators."""
    return " ".join(fts_part(part) for part in parse_query(text))


def scope_token(kind: str, name: str) -> str:
    """One word standing for a file's key, its path or a folder above it (letters and digits only,
    so the tokenizer keeps it whole): a file filter becomes a term the full-text index intersects
    with the query's, rather than a condition checked on every match."""
    return kind + hashlib.sha1(name.encode()).hexdigest()[:16]


def scope_of(key: str, path: str) -> str:
    parts = path.split("/")
    return " ".join([scope_token("k", key)] + [scope_token("p", "/".join(parts[:n])) for n in range(1, len(parts) + 1)])


def fts_part(part: Part) -> str:
    if isinstance(part, Term):
        return '"' + " ".join(part.words).replace('"', "") + '"' + ("*" if part.prefix else "")
    return part


class SqliteSearch:
    def __init__(self, path: str | Path, meaning: bool = True):
        self.path = Path(path)
        self.where = str(self.path)
        self.meanings = Meanings() if meaning else None

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA busy_timeout=30000")
            if connection.execute("PRAGMA user_version").fetchone()[0] != LAYOUT:
                self._lay_out(connection)
            yield connection
        finally:
            connection.close()

    @staticmethod
    def _lay_out(db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] != LAYOUT:  # another process may have done it
                for table in ("turns", "turn_rows", "files"):  # an earlier layout's, if there
                    db.execute(f"DROP TABLE IF EXISTS {table}")
                for statement in SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {LAYOUT}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

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

    def _put(self, db: sqlite3.Connection, doc: dict, upload_uri: str) -> int | None:
        key, version, rows = rows_of(doc, upload_uri)
        row = db.execute("SELECT version FROM files WHERE key = ?", (key,)).fetchone()
        if row and row[0] == version:
            return None
        db.execute("DELETE FROM turn_rows WHERE key = ?", (key,))
        vectors = Meanings.vectors([row[0] for row in rows]) if self.meanings else [None] * len(rows)
        db.executemany(
            "INSERT INTO turn_rows (text, key, path, source_uri, start, end, speaker, name, language, uploaded_at, scope,"
            " vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(*row, scope_of(row[1], row[2]), vector) for row, vector in zip(rows, vectors)])
        db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
                   (key, version, doc.get("source_uri", ""), doc.get("finished_at") or "", len(rows),
                    datetime.now(timezone.utc).isoformat(timespec="seconds")))
        return len(rows)

    def remove(self, key: str) -> None:
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM turn_rows WHERE key = ?", (key,))
            db.execute("DELETE FROM files WHERE key = ?", (key,))
            db.execute("COMMIT")

    def files(self) -> dict[str, str]:
        with self.connect() as db:
            return dict(db.execute("SELECT key, version FROM files").fetchall())

    def search(self, query: str, filters: Filters = Filters(), limit: int = 20) -> list[Hit]:
        where, values = filter_sql(filters, "?")
        match = fts_query(query)
        if filters.file:  # the file's or folder's word, then the exact condition on the rows found
            folder = filters.file.rstrip("/")
            match = f'({match}) AND scope : ("{scope_token("k", folder)}" OR "{scope_token("p", folder)}")'
        where, values = ["turns MATCH ?", *where], [match, *values]
        matching = f"FROM turns JOIN turn_rows ON turn_rows.id = turns.rowid WHERE {' AND '.join(where)}"
        with self.connect() as db:
            try:  # the newest RANK_WINDOW matches (walked in rowid order: no ranking), then ranked
                floor = db.execute(f"SELECT turns.rowid {matching} ORDER BY turns.rowid DESC LIMIT 1 OFFSET ?",
                                   [*values, RANK_WINDOW - 1]).fetchone()
                rows = db.execute(
                    f"SELECT key, path, source_uri, start, end, coalesce(name, speaker), language, turn_rows.text, "
                    f"highlight(turns, 0, ?, ?), bm25(turns, 1.0, 0.0) {matching} AND turns.rowid >= ? "
                    f"ORDER BY bm25(turns, 1.0, 0.0) LIMIT ?", [*MARK, *values, floor[0] if floor else 0, max(1, int(limit))],
                ).fetchall()
            except sqlite3.OperationalError as error:
                raise QueryError(f"cannot search for {query!r}: {error}") from None
        return [Hit(r[0], r[1], r[2], float(r[3]), float(r[4]), r[5], r[6], r[7], r[8], round(float(r[9]), 4))
                for r in rows] or by_meaning(self, query, filters, limit)

    def _newer_vectors(self, after: int) -> list[tuple[int, bytes]]:
        with self.connect() as db:
            return db.execute("SELECT id, vector FROM turn_rows WHERE id > ? AND vector IS NOT NULL "
                              f"ORDER BY id DESC LIMIT {WINDOW}", (after,)).fetchall()

    def _rows_by_ids(self, ids: list[int], filters: Filters) -> list[tuple]:
        where, values = filter_sql(filters, "?")
        marks = ", ".join("?" * len(ids))
        with self.connect() as db:
            return [list(r) for r in db.execute(
                "SELECT key, path, source_uri, start, end, coalesce(name, speaker), language, text, id FROM turn_rows "
                f"WHERE id IN ({marks}) {''.join(' AND ' + w for w in where)}", [*ids, *values]).fetchall()]

    def rebuild(self, docs: Iterable[dict], upload_uri: str = "") -> tuple[int, int]:
        """Into a new file beside the index, which then replaces the old one whole."""
        building = self.path.with_name(f".{self.path.name}.{os.getpid()}.building")
        for leftover in (building, Path(f"{building}-wal"), Path(f"{building}-shm")):
            leftover.unlink(missing_ok=True)
        fresh = SqliteSearch(building, self.meanings is not None)
        files, turns = fresh.index_many(docs, upload_uri)
        with fresh.connect() as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.execute("PRAGMA journal_mode=DELETE")
        for stale in (Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            stale.unlink(missing_ok=True)
        os.replace(building, self.path)
        return files, turns

