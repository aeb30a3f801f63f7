"""The search index past one machine: PostgreSQL's full text in the PostgreSQL the production shape
already runs (SEARCH_URI=postgresql://user@host:port/db). A generated `tsvector` column with a GIN
index; one text search configuration, `opentr`, that folds accents (unaccent) and stems English
(snowball, with no stop words, so that "the" finds what it finds in SQLite). The same parsed query
as SQLite's, written as a tsquery of quoted words: the query stays data."""

from __future__ import annotations

import csv
import io
import os
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterable, Iterator

from opentr_pipeline.outputs.search import (MARK, RANK_WINDOW, Filters, Hit, QueryError, Term, by_meaning, filter_sql,
                                           parse_query, rows_of)
from opentr_pipeline.outputs.search_meaning import WINDOW, Meanings

COLUMNS = "text, key, path, source_uri, start, \"end\", speaker, name, language, uploaded_at, vector"
FILES = "opentr_search_files"
TURNS = "opentr_search_turns"
RECENT_ROWS = 50_000  # where a query's newest matches are looked for first, walked newest first
CONFIGURATION = """
CREATE EXTENSION IF NOT EXISTS unaccent;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_ts_dict WHERE dictname = 'opentr_stem') THEN
        CREATE TEXT SEARCH DICTIONARY opentr_stem (TEMPLATE = snowball, Language = english);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_ts_config WHERE cfgname = 'opentr') THEN
        CREATE TEXT SEARCH CONFIGURATION opentr (COPY = simple);
        ALTER TEXT SEARCH CONFIGURATION opentr ALTER MAPPING
            FOR asciiword, asciihword, hword_asciipart, word, hword, hword_part WITH unaccent, opentr_stem;
    END IF;
END $$;
"""


def tables(files: str, turns: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {files} (
    key text PRIMARY KEY, version text NOT NULL, source_uri text, uploaded_at text, turns integer, indexed_at text
);
CREATE TABLE IF NOT EXISTS {turns} (
    id bigserial PRIMARY KEY, text text NOT NULL, key text NOT NULL, path text, source_uri text,
    start double precision, "end" double precision, speaker text, name text, language text, uploaded_at text,
    vector bytea, tsv tsvector GENERATED ALWAYS AS (to_tsvector('opentr'::regconfig, text)) STORED
);
CREATE INDEX IF NOT EXISTS {turns}_key ON {turns} (key);
CREATE INDEX IF NOT EXISTS {turns}_path ON {turns} (path COLLATE "C");
"""


def gin_index(turns: str) -> str:
    return f"CREATE INDEX IF NOT EXISTS {turns}_tsv ON {turns} USING GIN (tsv)"


def tsquery(text: str) -> str:
    """A query as to_tsquery text: each word quoted (its apostrophes spaces: no quote can close
    one), a phrase's words joined by <->, a prefix :*, implicit AND &, OR |, NOT & !. Precedence
    matches FTS5's (NOT, then AND, then OR)."""
    written: list[str] = []
    for part in parse_query(text):
        if isinstance(part, Term):
            if written and written[-1] not in ("|", "& !", "&"):
                written.append("&")
            written.append(ts_term(part))
        else:
            written.append({"OR": "|", "NOT": "& !", "AND": "&"}[part])
    return " ".join(written)


def ts_term(term: Term) -> str:
    words = [f"'{word.replace(chr(39), ' ')}'" for word in term.words]
    if term.prefix:
        words[-1] += ":*"
    return "(" + " <-> ".join(words) + ")"


class PostgresSearch:
    def __init__(self, url: str, meaning: bool = True):
        self.meanings = Meanings() if meaning else None
        self.url = url.replace("postgresql+psycopg2://", "postgresql://", 1)
        from opentr_pipeline.settings import mask_url

        self.where = mask_url(self.url)
        self._connection = None
        self._lock = threading.Lock()

    @contextmanager
    def connect(self) -> Iterator:
        """This object's one connection (made on first use, made again after a failure), inside a
        transaction that commits on leaving and rolls back on an error."""
        import psycopg2

        with self._lock:
            if self._connection is None or self._connection.closed:
                self._connection = psycopg2.connect(self.url, connect_timeout=10)
                self._prepare(self._connection)
            connection = self._connection
            try:
                with connection.cursor() as cursor:
                    yield cursor
                connection.commit()
            except BaseException:
                if not connection.closed:
                    connection.rollback()
                raise

    @staticmethod
    def _prepare(connection) -> None:
        with connection.cursor() as cursor:  # one process at a time makes the schema
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext('opentr search schema'))")
            cursor.execute(CONFIGURATION)
            cursor.execute(tables(FILES, TURNS))
            cursor.execute(gin_index(TURNS))
        connection.commit()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()

    def index(self, doc: dict, upload_uri: str = "") -> int | None:
        files, turns = self._put_many([doc], upload_uri, FILES, TURNS)
        return turns if files else None

    def index_many(self, docs: Iterable[dict], upload_uri: str = "", batch: int = 500) -> tuple[int, int]:
        return self._fill(docs, upload_uri, FILES, TURNS, batch)

    def _fill(self, docs: Iterable[dict], upload_uri: str, files_table: str, turns_table: str,
              batch: int = 500) -> tuple[int, int]:
        files = turns = 0
        pending: list[dict] = []
        for doc in docs:
            pending.append(doc)
            if len(pending) == batch:
                turns += self._put_many(pending, upload_uri, files_table, turns_table)[1]
                files, pending = files + len(pending), []
        if pending:
            turns += self._put_many(pending, upload_uri, files_table, turns_table)[1]
            files += len(pending)
        return files, turns

    def _put_many(self, docs: list[dict], upload_uri: str, files_table: str, turns_table: str) -> tuple[int, int]:
        """Files not yet there in this version, their rows sent with COPY, in one transaction;
        (files changed, their turns). Each file's key is locked first, so two processes indexing
        the same file one after the other never leave its turns twice."""
        with self.connect() as cursor:
            shaped = [rows_of(doc, upload_uri) for doc in docs]
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(k)) FROM unnest(%s::text[]) AS k ORDER BY k",
                           ([s[0] for s in shaped],))
            cursor.execute(f"SELECT key, version FROM {files_table} WHERE key = ANY(%s)", ([s[0] for s in shaped],))
            have = dict(cursor.fetchall())
            fresh = [(doc, s) for doc, s in zip(docs, shaped) if have.get(s[0]) != s[1]]
            if not fresh:
                return 0, 0
            cursor.execute(f"DELETE FROM {turns_table} WHERE key = ANY(%s)", ([s[0] for _, s in fresh],))
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            for _, (_, _, rows) in fresh:
                vectors = self._vectors(rows)
                writer.writerows((*row, "\\x" + vector.hex() if vector else None) for row, vector in zip(rows, vectors))
            buffer.seek(0)
            cursor.copy_expert(f"COPY {turns_table} ({COLUMNS}) FROM STDIN WITH (FORMAT csv)", buffer)
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            cursor.executemany(
                f"INSERT INTO {files_table} VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO UPDATE SET "
                "version = EXCLUDED.version, source_uri = EXCLUDED.source_uri, uploaded_at = EXCLUDED.uploaded_at, "
                "turns = EXCLUDED.turns, indexed_at = EXCLUDED.indexed_at",
                [(key, version, doc.get("source_uri", ""), doc.get("finished_at") or "", len(rows), now)
                 for doc, (key, version, rows) in fresh])
            return len(fresh), sum(len(rows) for _, (_, _, rows) in fresh)

    def _vectors(self, rows: list[tuple]) -> list[bytes | None]:
        return Meanings.vectors([row[0] for row in rows]) if self.meanings else [None] * len(rows)

    def _newer_vectors(self, after: int) -> list[tuple[int, bytes]]:
        with self.connect() as cursor:
            cursor.execute(f"SELECT id, vector FROM {TURNS} WHERE id > %s AND vector IS NOT NULL "
                           f"ORDER BY id DESC LIMIT {WINDOW}", (after,))
            return [(i, bytes(v)) for i, v in cursor.fetchall()]

    def _rows_by_ids(self, ids: list[int], filters: Filters) -> list[tuple]:
        where, values = filter_sql(filters, "%s", ' COLLATE "C"')
        with self.connect() as cursor:
            cursor.execute(f"SELECT key, path, source_uri, start, \"end\", coalesce(name, speaker), language, text, id "
                           f"FROM {TURNS} WHERE id = ANY(%s) {''.join(' AND ' + w for w in where)}", [ids, *values])
            return [list(r) for r in cursor.fetchall()]

    def remove(self, key: str) -> None:
        with self.connect() as cursor:
            cursor.execute(f"DELETE FROM {TURNS} WHERE key = %s", (key,))
            cursor.execute(f"DELETE FROM {FILES} WHERE key = %s", (key,))

    def files(self) -> dict[str, str]:
        with self.connect() as cursor:
            cursor.execute(f"SELECT key, version FROM {FILES}")
            return dict(cursor.fetchall())

    def search(self, query: str, filters: Filters = Filters(), limit: int = 20) -> list[Hit]:
        where, values = filter_sql(filters, "%s", ' COLLATE "C"')
        matching = f"FROM {TURNS}, to_tsquery('opentr', %s) AS q WHERE tsv @@ q AND {' AND '.join(where or ['true'])}"
        text = tsquery(query)
        import psycopg2

        try:
            with self.connect() as cursor:
                cursor.execute(f"SELECT coalesce(max(id), 0) FROM {TURNS}")
                newest = cursor.fetchone()[0]
                # The newest RANK_WINDOW matches. First the newest RECENT_ROWS turns, walked newest
                # first (no bitmap: the GIN index's bitmap of a common word or phrase is every match
                # in the library, rechecked row by row, which is what made those queries slow);
                # where they hold fewer, everywhere through the GIN index (cheap for rarer words).
                window: list[int] = []
                if newest > RECENT_ROWS:
                    cursor.execute("SET LOCAL enable_bitmapscan = off")
                    cursor.execute(f"SELECT id {matching} AND id > %s ORDER BY id DESC LIMIT {RANK_WINDOW}",
                                   [text, *values, newest - RECENT_ROWS])
                    window = [row[0] for row in cursor.fetchall()]
                    cursor.execute("SET LOCAL enable_bitmapscan = on")
                if len(window) < RANK_WINDOW:
                    cursor.execute(f"SELECT id {matching} ORDER BY id DESC LIMIT {RANK_WINDOW}", [text, *values])
                    window = [row[0] for row in cursor.fetchall()]
                # Ranked and cut; marked last (ts_headline for the hits shown only).
                cursor.execute(
                    f"SELECT key, path, source_uri, start, \"end\", coalesce(name, speaker), language, text, "
                    f"ts_headline('opentr', text, q, %s), rank FROM (SELECT *, ts_rank_cd(tsv, q) AS rank "
                    f"FROM {TURNS}, to_tsquery('opentr', %s) AS q WHERE id = ANY(%s) ORDER BY rank DESC, id "
                    f"LIMIT %s) AS best ORDER BY rank DESC, id",
                    [f"StartSel={MARK[0]}, StopSel={MARK[1]}, HighlightAll=true", text, window, max(1, int(limit))])
                rows = cursor.fetchall()
        except psycopg2.DataError as error:  # a tsquery PostgreSQL will not read (never seen: words are quoted)
            raise QueryError(f"cannot search for {query!r}: {str(error).strip()}") from None
        return [Hit(r[0], r[1], r[2], float(r[3]), float(r[4]), r[5], r[6], r[7], r[8], -round(float(r[9]), 4))
                for r in rows] or by_meaning(self, query, filters, limit)

    def rebuild(self, docs: Iterable[dict], upload_uri: str = "") -> tuple[int, int]:
        """Into new tables, GIN index built once at the end (faster than kept row by row), which
        then replace the old ones in one transaction: searches never see half an index."""
        suffix = f"_building_{os.getpid()}"
        files_table, turns_table = FILES + suffix, TURNS + suffix
        with self.connect() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {files_table}, {turns_table}")
            cursor.execute(tables(files_table, turns_table))
        files, turns = self._fill(docs, upload_uri, files_table, turns_table)
        with self.connect() as cursor:
            cursor.execute(gin_index(turns_table))
            cursor.execute(f"ANALYZE {files_table}, {turns_table}")  # the planner's word counts, at once
        with self.connect() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {FILES}, {TURNS}")
            for table in (files_table, turns_table):
                cursor.execute(f"ALTER TABLE {table} RENAME TO {table.removesuffix(suffix)}")
            for index in (f"{turns_table}_key", f"{turns_table}_path", f"{turns_table}_tsv", f"{turns_table}_pkey", f"{files_table}_pkey"):
                cursor.execute(f"ALTER INDEX {index} RENAME TO {index.replace(suffix, '')}")
            cursor.execute(f"ALTER SEQUENCE {turns_table}_id_seq RENAME TO {TURNS}_id_seq")
        return files, turns
