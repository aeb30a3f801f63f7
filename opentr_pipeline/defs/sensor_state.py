"""The upload sensor's memory of each file, kept in the instance's key-value table, not its cursor.

Dagster stores a sensor's cursor with every tick (4 a minute), so a cursor that maps every
upload to its last-seen version grows per file: about 40 bytes each, 4 MB per tick at 100,000
files. Here each file has one row, written only when its state changes, and the cursor holds a
generation number and a digest of the last listing.

Ticks stay idempotent: rows written by a tick carry the next generation and the value they
replace. Until the daemon commits that tick's cursor, an evaluation from the old cursor reads
the replaced values, so a tick evaluated again (a daemon that died mid-tick) decides the same.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterable

import dagster as dg

PREFIX = "opentr/upload_sensor/"
CHUNK = 500  # keys per query: SQLite limits the variables of one statement


@dataclass(frozen=True)
class SensorCursor:
    generation: int = 0
    digest: str = ""  # of the last listing, to end a tick early when nothing moved
    waiting: int = 0  # files that needed another look at that listing

    @classmethod
    def parse(cls, raw: str | None) -> "SensorCursor":
        if not raw or not raw.startswith("{") or '"generation"' not in raw:
            return cls()  # a cursor from before the state moved here: start afresh
        return cls(**json.loads(raw))

    def dump(self) -> str:
        return json.dumps({"generation": self.generation, "digest": self.digest, "waiting": self.waiting})


def listing_digest(entries: Iterable[tuple]) -> str:
    return hashlib.sha1(json.dumps(sorted(entries), ensure_ascii=True).encode()).hexdigest()


def _row_key(kind: str, name: str) -> str:
    return PREFIX + kind + "/" + json.dumps(name)[1:-1]  # ASCII: names need not be UTF-8


class UploadState:
    """Read the committed state of some files; write the changes under the next generation."""

    def __init__(self, instance: dg.DagsterInstance, cursor: SensorCursor):
        self.storage = instance.run_storage
        self.generation = cursor.generation
        self._rows: dict[str, list] = {}

    def load(self, kind: str, names: Iterable[str]) -> dict[str, list]:
        """name -> its value (any JSON) as of the committed generation; absent names are new."""
        wanted = {_row_key(kind, name): name for name in names}
        found: dict[str, list] = {}
        keys = list(wanted)
        for start in range(0, len(keys), CHUNK):
            for row_key, raw in self.storage.get_cursor_values(set(keys[start : start + CHUNK])).items():
                generation, value, replaced = json.loads(raw)
                self._rows[row_key] = [generation, value, replaced]
                committed = value if generation <= self.generation else replaced
                if committed is not None:
                    found[wanted[row_key]] = committed
        return found

    def save(self, kind: str, before: dict[str, list], after: dict[str, list]) -> int:
        """Write the names whose value changed; returns how many rows were written."""
        new, existing = {}, {}
        for name, value in after.items():
            row_key = _row_key(kind, name)
            stored = self._rows.get(row_key)
            if stored is None and before.get(name) == value or stored is not None and stored[1] == value:
                continue  # what a reader sees once this tick's cursor is committed is already right
            row = json.dumps([self.generation + 1, value, before.get(name)])
            (existing if stored is not None else new)[row_key] = row
        # set_cursor_values inserts, and on any existing key updates instead: give it one kind at a time
        for rows in (new, existing):
            items = list(rows.items())
            for start in range(0, len(items), CHUNK):
                self.storage.set_cursor_values(dict(items[start : start + CHUNK]))
        return len(new) + len(existing)
