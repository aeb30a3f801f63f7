"""The meaning leg of search: where no turn holds all of a question's words ("how long may we keep
customer audio"), the turns closest to it in meaning, from wordllama's static embeddings
(l2_supercat_256, MIT, 16 MB, shipped in its wheel: no download).

Measured before it was kept (benchmarks/search_recall.py, README "Search"): merged with keyword
hits by rank fusion it answered every query, nonsense included, with 50 hits, because static
embeddings do not separate an answer from noise well (cosine of answers 0.13-0.57, of the best
wrong turn 0.15-0.37); used where the words find no turn, with a floor, it found 0.47 of the
questions asked in other words at 5 hits (keyword search: 0.00), lost none of those typed as
keywords, and answered 1 nonsense query of 8. So: plain questions only (no search syntax), when
the words found nothing, cosine >= FLOOR, newest WINDOW turns; hits say they were found by meaning.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

FLOOR = 0.2
WINDOW = 200_000  # the newest turns looked through (about 5,000 ten-minute meetings; 100 MB)
DIMENSIONS = 256
_PLAIN = re.compile(r"^[\w\s',.?!-]+$", re.UNICODE)


def plain_question(query: str) -> str | None:
    """The query as words when it is plain language of two words or more; None when it uses
    search syntax (quotes, prefix*, OR / NOT, other signs): that asks for exact words."""
    words = re.findall(r"[\w']+", query or "")
    if len(words) < 2 or not _PLAIN.match(query) or {"OR", "NOT", "AND"} & set(words):
        return None
    return " ".join(words)


class Meanings:
    """One model per process (loaded on first use), and the newest WINDOW turns' vectors in memory,
    topped up with the turns indexed since (`newer(after_id)` gives them)."""

    _model = None
    _model_lock = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = np.zeros(0, dtype=np.int64)
        self._matrix = np.zeros((0, DIMENSIONS), dtype=np.float16)

    @classmethod
    def model(cls):
        with cls._model_lock:
            if cls._model is None:
                import wordllama
                from wordllama import WordLlama

                # The weights and tokenizer ship in the wheel; with the cache pointed at the package
                # both are found there (0.4.0 looks for the tokenizer under a name the wheel's folder
                # lacks otherwise, then tries the network).
                cls._model = WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)
            return cls._model

    @classmethod
    def vectors(cls, texts: list[str]) -> list[bytes]:
        """Each text's unit vector, float16, as bytes for the index."""
        if not texts:
            return []
        matrix = np.asarray(cls.model().embed(texts, norm=True), dtype=np.float16)
        return [row.tobytes() for row in matrix]

    def nearest(self, question: str, newer: Callable[[int], Iterable[tuple[int, bytes]]], count: int) -> list[tuple[int, float]]:
        """(turn id, cosine) of the `count` turns closest to `question`, at least FLOOR."""
        with self._lock:
            after = int(self._ids[-1]) if len(self._ids) else 0
            fresh = [(i, v) for i, v in newer(after) if v]
            if fresh:
                fresh.sort()
                ids = np.fromiter((i for i, _ in fresh), dtype=np.int64, count=len(fresh))
                matrix = np.frombuffer(b"".join(v for _, v in fresh), dtype=np.float16).reshape(-1, DIMENSIONS)
                self._ids = np.concatenate([self._ids, ids])[-WINDOW:]
                self._matrix = np.concatenate([self._matrix, matrix])[-WINDOW:]
            ids, matrix = self._ids, self._matrix
        if not len(ids):
            return []
        target = np.frombuffer(self.vectors([question])[0], dtype=np.float16).astype(np.float32)
        scores = matrix.astype(np.float32) @ target if len(ids) < 50_000 else _chunked(matrix, target)
        best = np.argsort(-scores)[:count]
        return [(int(ids[i]), float(scores[i])) for i in best if scores[i] >= FLOOR]


def _chunked(matrix: np.ndarray, target: np.ndarray, rows: int = 50_000) -> np.ndarray:
    """Scores without a float32 copy of the whole matrix at once."""
    return np.concatenate([matrix[i:i + rows].astype(np.float32) @ target for i in range(0, len(matrix), rows)])
