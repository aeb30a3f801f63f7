"""The search index at a library's size, SQLite and PostgreSQL side by side: N transcripts of about
ten minutes each, made from the corpus text (never decoded), indexed from nothing, one file added,
and a mix of queries timed.

    python benchmarks/search_scale.py --files 100000            # both engines
    python benchmarks/search_scale.py --files 100000 --keep /var/tmp/opentr-search   # build once, time again

Prints, per engine: the time to build the index from nothing, to add one file (median and worst
of 20), its size on disk, and query latency p50 / p95 / p99 over a mix of words, phrases,
prefixes, OR / NOT and filtered queries (limit 20, as the page and the command line ask).

The transcripts are made deterministically: speakers taking turns of the fixtures' and the
language corpus's sentences, in folders of 100 files, one file in ten in German; and, because a
real library's words are not twelve sentences over and over, each file talks about a few topics
(project names, customers, places) drawn from 20,000 made-up names with Zipf's frequencies, as
words are: a few names are in thousands of files, most in a handful. PostgreSQL is a throwaway
server on loopback (tests/pg_server.py), or --postgres URL.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from spoken_languages import TEXTS  # noqa: E402

from opentr_pipeline.outputs.search import Filters  # noqa: E402

ENGLISH = [
    "And so my fellow Americans ask not what your country can do for you ask what you can do for your country.",
    "Mister Quilter is the apostle of the middle classes and we are glad to welcome his gospel.",
    "A golden fortune and a happy life.", "Experience proves this.", "Why should one halt on the way?",
    "Your power is sufficient I said.", "We agreed on the budget for the launch next quarter.",
    "The travel costs are higher than we planned for this year.", "Let us move the decision to next week.",
    "Maria will send the minutes to everyone after the call.", "The new school building opens in the spring.",
    "Can we review the contract with the supplier before Friday?",
]
TOPIC_SENTENCES = [
    "The {} account asked again about the renewal.", "We should ask {} for the latest numbers.",
    "The {} rollout slipped by two weeks.", "Who owns the {} migration now?", "{} signed the order this morning.",
    "The office in {} reopens next month.", "I spoke with {} about the hiring plan.",
]
SYLLABLES = ["ka", "lo", "ri", "men", "tos", "va", "dur", "el", "shi", "no", "bra", "qui", "zan", "po", "ter", "fi",
             "gol", "mu", "ash", "ren", "dak", "ow", "sel", "tru"]
NAMES = sorted({"".join(random.Random(i).choices(SYLLABLES, k=3)).capitalize() for i in range(40_000)})[:20_000]
random.Random(7).shuffle(NAMES)  # rank = list order: NAMES[0] is the most talked about
WEIGHTS = [1 / (rank + 1) for rank in range(len(NAMES))]
SEGMENT_S = 4.0


def transcript(number: int, seconds: float) -> dict:
    rng = random.Random(number)
    language = "de" if number % 10 == 3 else "en"
    sentences = TEXTS["de"] if language == "de" else ENGLISH
    topics = rng.choices(NAMES, weights=WEIGHTS, k=4)
    speakers = [f"SPEAKER_{i:02d}" for i in range(rng.randint(2, 4))]
    segments, at, who = [], 0.0, speakers[0]
    while at < seconds:
        if rng.random() < 0.35:
            who = rng.choice(speakers)
        if language == "en" and rng.random() < 0.3:
            text = rng.choice(TOPIC_SENTENCES).format(rng.choice(topics))
        else:
            text = rng.choice(sentences)
        segments.append({"id": len(segments), "start": round(at, 2), "end": round(at + SEGMENT_S, 2), "text": text,
                         "speaker": who, "language": language, "words": []})
        at += SEGMENT_S + rng.choice((0.2, 0.5, 1.0))
    folder = f"team-{number // 100:04d}"
    return {"partition_key": f"{folder}__call-{number}.wav", "source_uri": f"/uploads/{folder}/call-{number}.wav",
            "language": language, "finished_at": f"2026-{1 + number % 12:02d}-{1 + number % 28:02d}T10:00:00+00:00",
            "speakers": [{"id": s, "name": "Maria" if s == "SPEAKER_00" and number % 7 == 0 else None} for s in speakers],
            "segments": segments}


def query_mix() -> list[tuple[str, str, Filters]]:
    """What people search for: mostly the names of things (some common, most rare), then phrases,
    prefixes and filters; the common-word queries stay in to show the worst case."""
    return [
        ("name, common", NAMES[0], Filters()), ("name, frequent", NAMES[20], Filters()),
        ("name, mid", NAMES[500], Filters()), ("name, rare", NAMES[9000], Filters()),
        ("two names", f"{NAMES[3]} {NAMES[40]}", Filters()), ("name OR name", f"{NAMES[100]} OR {NAMES[2000]}", Filters()),
        ("phrase + name", f'"rollout slipped" {NAMES[50]}', Filters()), ("prefix", NAMES[300][:5] + "*", Filters()),
        ("word, common", "budget", Filters()), ("phrase, common", '"ask not what your country"', Filters()),
        ("NOT", f"{NAMES[10]} NOT renewal", Filters()), ("German word", "Renovierung", Filters(language="de")),
        ("speaker", NAMES[5], Filters(speaker="Maria")), ("folder", "budget", Filters(file="team-0001")),
        ("since", NAMES[30], Filters(since="2026-11-01")),
        ("question, by meaning", "when do we look at the agreement with our vendor", Filters()),
    ]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def folder_size(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def measure(name: str, engine, size_of, args) -> dict:
    """Build (unless kept), add 20 files one at a time, time the query mix; a dict of figures."""
    figures: dict = {"engine": name}
    files = engine.files()
    if len(files) < args.files:
        started = time.perf_counter()
        built, turns = engine.rebuild((transcript(n, args.seconds) for n in range(args.files)), "/uploads")
        figures["build_s"] = time.perf_counter() - started
        figures["turns"] = turns
        print(f"{name}: built {built:,} transcripts ({turns:,} turns) in {figures['build_s']:.0f} s", flush=True)
    adds = []
    for n in range(args.files, args.files + 20):
        doc = transcript(n, args.seconds)
        doc["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")  # a new version each run
        clock = time.perf_counter()
        engine.index(doc, "/uploads")
        adds.append(time.perf_counter() - clock)
    figures["add_ms"] = (statistics.median(adds) * 1000, max(adds) * 1000)
    figures["size_mib"] = size_of()
    every, rows = [], {}
    for kind, query, filters in query_mix():
        engine.search(query, filters, limit=20)  # warm
        timings, hits = [], 0
        for _ in range(args.rounds):
            clock = time.perf_counter()
            hits = len(engine.search(query, filters, limit=20))
            timings.append((time.perf_counter() - clock) * 1000)
        every += timings
        rows[kind] = (query, hits, statistics.median(timings), percentile(timings, 0.95))
    figures["rows"] = rows
    figures["p"] = tuple(percentile(every, q) for q in (0.5, 0.95, 0.99))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=600.0, help="length of each transcript")
    parser.add_argument("--rounds", type=int, default=15, help="times each query of the mix is timed")
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--keep", help="a folder for the indexes, kept: a second run times them again unbuilt")
    parser.add_argument("--postgres", help="postgresql://... to use instead of a throwaway server")
    args = parser.parse_args()
    import tempfile
    from contextlib import ExitStack

    folder = Path(args.keep or tempfile.mkdtemp(prefix="opentr-search-"))
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # PostgreSQL's server runs as its own user, inside
    results = []
    with ExitStack() as stack:
        for name in args.engines.split(","):
            if name == "sqlite":
                from opentr_pipeline.outputs.search_sqlite import SqliteSearch

                engine = SqliteSearch(folder / "sqlite" / "index.sqlite")
                results.append(measure(name, engine, lambda: folder_size(folder / "sqlite"), args))
            else:
                from opentr_pipeline.outputs.search_postgres import PostgresSearch

                url = args.postgres or stack.enter_context(postgres_for(folder / "postgresql"))
                engine = PostgresSearch(url)
                results.append(measure(name, engine, lambda: postgres_size(engine), args))
                engine.close()
    print_table(results, args)


def postgres_for(data: Path):
    from pg_server import postgres_server

    return postgres_server(keep=data)


def postgres_size(engine) -> float:
    with engine.connect() as cursor:
        cursor.execute("SELECT pg_database_size(current_database())")
        return cursor.fetchone()[0] / 2**20


def print_table(results: list[dict], args) -> None:
    names = [r["engine"] for r in results]
    print(f"\n{args.files:,} transcripts of {args.seconds / 60:.0f} min"
          + (f", {results[0]['turns']:,} speaker turns" if "turns" in results[0] else "") + "\n")
    print("| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    print("| build from nothing | " + " | ".join(f"{r['build_s']:.0f} s" if "build_s" in r else "(kept)" for r in results) + " |")
    print("| add one file (median / worst of 20) | " + " | ".join(f"{r['add_ms'][0]:.0f} / {r['add_ms'][1]:.0f} ms" for r in results) + " |")
    print("| size on disk | " + " | ".join(f"{r['size_mib']:,.0f} MiB" for r in results) + " |")
    print("| queries p50 / p95 / p99 | " + " | ".join(f"{r['p'][0]:.1f} / {r['p'][1]:.1f} / {r['p'][2]:.1f} ms" for r in results) + " |")
    print("\n| query | text | " + " | ".join(f"{n} hits, p50 / p95 ms" for n in names) + " |\n|---|---|" + "---|" * len(names))
    for kind, (query, *_rest) in results[0]["rows"].items():
        cells = [f"{r['rows'][kind][1]}, {r['rows'][kind][2]:.1f} / {r['rows'][kind][3]:.1f}" for r in results]
        print(f"| {kind} | `{query}` | " + " | ".join(cells) + " |")
    print("\naim: p95 under 50 ms at 100,000 transcripts, adding a file under 100 ms")


if __name__ == "__main__":
    main()
