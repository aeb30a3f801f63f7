"""The search index at a library's size: N transcripts of about ten minutes each, made from the
corpus text (never decoded), indexed from nothing, one file added, and queries timed.

    python benchmarks/search_scale.py --files 100000

Prints the time to build the index from nothing, to add one file (median of 20), its size on disk,
and query latency p50 / p95 / p99 for a mix of words, phrases, prefixes and filtered queries (limit
20, as the command line asks). The transcripts are made deterministically: speakers taking turns
of one to four sentences of the fixtures' and the language corpus's text, in folders of 100 files,
one file in ten in German.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from spoken_languages import TEXTS  # noqa: E402

from opentr_pipeline.outputs.search import Filters, SearchIndex, rebuild  # noqa: E402

ENGLISH = [
    "And so my fellow Americans ask not what your country can do for you ask what you can do for your country.",
    "Mister Quilter is the apostle of the middle classes and we are glad to welcome his gospel.",
    "A golden fortune and a happy life.", "Experience proves this.", "Why should one halt on the way?",
    "Your power is sufficient I said.", "We agreed on the budget for the launch next quarter.",
    "The travel costs are higher than we planned for this year.", "Let us move the decision to next week.",
    "Maria will send the minutes to everyone after the call.", "The new school building opens in the spring.",
    "Can we review the contract with the supplier before Friday?",
]
SEGMENT_S = 4.0


def transcript(number: int, seconds: float) -> dict:
    rng = random.Random(number)
    language = "de" if number % 10 == 3 else "en"
    sentences = TEXTS["de"] if language == "de" else ENGLISH
    speakers = [f"SPEAKER_{i:02d}" for i in range(rng.randint(2, 4))]
    segments, at, who = [], 0.0, speakers[0]
    while at < seconds:
        if rng.random() < 0.35:
            who = rng.choice(speakers)
        text = rng.choice(sentences)
        segments.append({"id": len(segments), "start": round(at, 2), "end": round(at + SEGMENT_S, 2), "text": text,
                         "speaker": who, "language": language, "words": []})
        at += SEGMENT_S + rng.choice((0.2, 0.5, 1.0))
    folder = f"team-{number // 100:04d}"
    return {"partition_key": f"{folder}__call-{number}.wav", "source_uri": f"/uploads/{folder}/call-{number}.wav",
            "language": language, "finished_at": f"2026-{1 + number % 12:02d}-{1 + number % 28:02d}T10:00:00+00:00",
            "speakers": [{"id": s, "name": "Maria" if s == "SPEAKER_00" and number % 7 == 0 else None} for s in speakers],
            "segments": segments}


QUERIES = [
    ("word", "budget", Filters()), ("word", "apostle", Filters()), ("word, rare", "supplier contract", Filters()),
    ("phrase", '"ask not what your country"', Filters()), ("phrase", '"the middle classes"', Filters()),
    ("prefix", "decis*", Filters()), ("OR", "school OR launch", Filters()), ("NOT", "budget NOT travel", Filters()),
    ("German", "Renovierung", Filters(language="de")), ("speaker", "budget", Filters(speaker="Maria")),
    ("folder", "budget", Filters(file="team-0001")), ("since", "spring", Filters(since="2026-11-01")),
]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=600.0, help="length of each transcript")
    parser.add_argument("--rounds", type=int, default=25, help="times each query of the mix is timed")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="opentr-search-"))
    path = folder / "index.sqlite"
    started = time.perf_counter()
    files, turns = rebuild(path, (transcript(n, args.seconds) for n in range(args.files)), "/uploads")
    built = time.perf_counter() - started
    index = SearchIndex(path)
    adds = []
    for n in range(args.files, args.files + 20):
        clock = time.perf_counter()
        index.index(transcript(n, args.seconds), "/uploads")
        adds.append(time.perf_counter() - clock)
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    print(f"{files:,} transcripts of {args.seconds / 60:.0f} min, {turns:,} speaker turns: built from nothing in "
          f"{built:.0f} s ({files / built:,.0f} files/s); index {size:,.0f} MiB; adding one file: median "
          f"{statistics.median(adds) * 1000:.0f} ms, worst {max(adds) * 1000:.0f} ms")
    every, rows = [], []
    for kind, query, filters in QUERIES:
        timings, hits = [], 0
        for _ in range(args.rounds):
            clock = time.perf_counter()
            hits = len(index.search(query, filters, limit=20))
            timings.append((time.perf_counter() - clock) * 1000)
        every += timings
        rows.append(f"| {kind} | `{query}` | {hits} | {statistics.median(timings):.1f} | {percentile(timings, 0.95):.1f} |")
    print("\n| query | text | hits (limit 20) | p50 ms | p95 ms |\n|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nall {len(every)} queries: p50 {percentile(every, 0.5):.1f} ms, p95 {percentile(every, 0.95):.1f} ms, "
          f"p99 {percentile(every, 0.99):.1f} ms (aim: p95 under 50 ms; adding a file under 100 ms)")
    print(f"index kept at {path}")


if __name__ == "__main__":
    main()
