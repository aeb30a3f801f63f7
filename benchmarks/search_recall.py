"""Does a semantic leg find more of what a person means? Recall at 5 and 10 of keyword search
alone against keyword + wordllama merged by reciprocal rank fusion, on questions with known answers.

    python benchmarks/search_recall.py

The library: 20 meetings of filler talk and the corpus's sentences, 40 facts said once each
(benchmarks/search_questions.py). Each fact is asked twice: as typed keywords and as a question in
other words. A question is answered at k when a turn holding its fact is among the first k hits.
Legs: keyword (the index as it is: every word must be there), keyword with any word (OR, what a
BM25 engine such as OpenSearch does by default), semantic alone (wordllama l2_supercat_256, the
model in its wheel, cosine over every turn), and hybrid (keyword + semantic, RRF k=60), and the
cost of the semantic leg: embedding time per turn, memory per turn, and time per query.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_questions import FACTS, FILLER, QUESTIONS  # noqa: E402
from search_scale import ENGLISH  # noqa: E402

from opentr_pipeline.outputs.search import QueryError, turns_of  # noqa: E402
from opentr_pipeline.outputs.search_sqlite import SqliteSearch  # noqa: E402

RRF_K = 60
# Queries that mean nothing in this library: a leg that answers them shows noise as hits.
NONSENSE = ['"; DROP TABLE turns; --', "speaker:SPEAKER_00", "xyzzy", "asdf qwer", "%_", "zebra giraffe",
            "quantum chromodynamics", "Lorem ipsum dolor"]
DEPTH = 50  # hits each leg gives to the fusion


def library(meetings: int = 20, seed: int = 11) -> list[dict]:
    rng = random.Random(seed)
    facts = list(FACTS.values())
    rng.shuffle(facts)
    docs = []
    for number in range(meetings):
        mine = facts[number::meetings]
        lines = [rng.choice(FILLER + ENGLISH) for _ in range(40)]
        for fact in mine:
            lines.insert(rng.randrange(len(lines)), fact)
        speakers = [f"SPEAKER_{i:02d}" for i in range(rng.randint(2, 4))]
        segments, at, who = [], 0.0, speakers[0]
        for text in lines:
            if rng.random() < 0.5:
                who = rng.choice(speakers)
            segments.append({"start": at, "end": at + 4.0, "text": text, "speaker": who, "language": "en"})
            at += 4.5
        docs.append({"partition_key": f"meeting-{number:02d}.wav", "source_uri": f"/uploads/meeting-{number:02d}.wav",
                     "language": "en", "finished_at": "2026-12-01T10:00:00", "segments": segments,
                     "speakers": [{"id": s, "name": None} for s in speakers]})
    return docs


def load_wordllama():
    import wordllama
    from wordllama import WordLlama

    # The weights and tokenizer ship in the wheel; pointing the cache at the package finds both
    # (0.4.0 looks for the tokenizer in a folder the wheel does not name) with no download.
    return WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)


def rank_of(hits: list[tuple[str, float]], fact: str) -> int | None:
    """The 1-based place of the first hit holding `fact` (hits: (turn id, ...))."""
    for place, (text, _start) in enumerate(hits, 1):
        if fact in text:
            return place
    return None


def fuse(*legs: list[tuple[str, float]]) -> list[tuple[str, float]]:
    scores: dict[tuple[str, float], float] = {}
    for leg in legs:
        for place, hit in enumerate(leg, 1):
            scores[hit] = scores.get(hit, 0.0) + 1.0 / (RRF_K + place)
    return sorted(scores, key=lambda hit: -scores[hit])


def main() -> None:
    docs = library()
    folder = Path(tempfile.mkdtemp(prefix="opentr-recall-"))
    index = SqliteSearch(folder / "index.sqlite")
    index.index_many(docs)
    turns = [(t.text, t.start, doc["partition_key"]) for doc in docs for t in turns_of(doc)]
    texts = [t[0] for t in turns]

    started = time.perf_counter()
    model = load_wordllama()
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    vectors = np.asarray(model.embed(texts, norm=True), dtype=np.float32)
    embed_ms = (time.perf_counter() - started) * 1000 / len(texts)

    def keyword(query: str) -> list[tuple[str, float]]:
        try:
            return [(h.text, h.start) for h in index.search(query, limit=DEPTH)]
        except QueryError:
            return []

    def any_word(query: str) -> list[tuple[str, float]]:
        return keyword(" OR ".join(query.split()))

    query_ms = []

    def semantic(query: str, floor: float = -1.0) -> list[tuple[str, float]]:
        clock = time.perf_counter()
        scores = vectors @ np.asarray(model.embed([query], norm=True), dtype=np.float32)[0]
        best = [i for i in np.argsort(-scores)[:DEPTH] if scores[i] >= floor]
        query_ms.append((time.perf_counter() - clock) * 1000)
        return [(texts[i], turns[i][1]) for i in best]

    def fallback(floor: float):
        """Meaning only where the words found nothing: keyword hits untouched when there are any."""
        return lambda q: keyword(q) or semantic(q, floor)

    legs = {
        "keyword (all words)": keyword,
        "keyword (any word, OR)": any_word,
        "semantic alone": semantic,
        "hybrid: keyword + semantic (RRF)": lambda q: fuse(keyword(q), semantic(q)),
        "hybrid: any word + semantic (RRF)": lambda q: fuse(any_word(q), semantic(q)),
        **{f"meaning where the words find nothing (cosine >= {floor})": fallback(floor) for floor in (0.0, 0.2, 0.25)},
    }
    print(f"{len(docs)} meetings, {len(turns)} speaker turns, {len(QUESTIONS)} facts asked two ways\n")
    print("| leg | typed: recall@5 | typed: recall@10 | asked: recall@5 | asked: recall@10 | nonsense answered |\n"
          "|---|---|---|---|---|---|")
    for name, leg in legs.items():
        cells = []
        for style in (1, 2):
            places = [rank_of(leg(q[style]), FACTS[q[0]]) for q in QUESTIONS]
            for k in (5, 10):
                cells.append(f"{sum(1 for p in places if p and p <= k) / len(places):.2f}")
        noise = sum(1 for q in NONSENSE if leg(q))
        print(f"| {name} | " + " | ".join(cells) + f" | {noise} of {len(NONSENSE)} |")
    per_turn_bytes = vectors.shape[1] * 4
    print(f"\nsemantic leg's cost: model load {load_s:.2f} s; embedding {embed_ms:.3f} ms per turn; "
          f"{per_turn_bytes} bytes per turn in memory (float32 x {vectors.shape[1]}); query "
          f"{np.median(query_ms):.2f} ms over {len(turns)} turns (brute force: grows with the library; "
          f"at 4,000,000 turns {per_turn_bytes * 4e6 / 2**30:.1f} GiB)")


if __name__ == "__main__":
    main()
