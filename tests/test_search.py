"""Find it again (outputs/search.py, the search_index asset, `opentr search`): queries rewritten so
they are only ever data, then real transcripts from the real pipeline (`opentr run` with speakers):
a phrase found at its second, a speaker filter, a replaced file found by its new words only, hostile
queries that find nothing and break nothing, and the index made again from the transcripts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from opentr_pipeline.outputs.search import Filters, QueryError, turns_of
from opentr_pipeline.outputs.search_sqlite import SqliteSearch, fts_query

HOSTILE = ['"; DROP TABLE turns; --', "') OR 1=1 --", 'text: "budget', "NEAR(a b", "x OR OR", "*", "a AND",
           "speaker:SPEAKER_00", "\\\"'`", "%_", "ü\u0000x"]


def test_a_query_is_rewritten_into_quoted_words_and_operators_only():
    assert fts_query("budget launch") == '"budget" "launch"'
    assert fts_query('"the launch date" Maria') == '"the launch date" "Maria"'
    assert fts_query("laun* OR budget NOT travel") == '"laun"* OR "budget" NOT "travel"'
    assert fts_query("Größe über") == '"Größe" "über"'
    for query in HOSTILE:  # every character that means something to FTS5 is gone or quoted
        try:
            rewritten = fts_query(query)
        except QueryError as error:
            assert str(error), query
            continue
        outside = "".join(part for i, part in enumerate(rewritten.split('"')) if i % 2 == 0)
        assert set(outside) <= set(" *ORNTAD"), (query, rewritten)
    for query, reason in [("", "nothing to search for"), ("((( )))", "nothing to search for"),
                          ("NOT travel", "NOT needs something before it")]:
        with pytest.raises(QueryError, match=reason):
            fts_query(query)


def test_turns_join_one_speakers_segments_and_cut_long_ones():
    doc = {"language": "en", "speakers": [{"id": "SPEAKER_00", "name": "Maria"}], "segments": [
        {"start": 0.0, "end": 5.0, "text": "one", "speaker": "SPEAKER_00"},
        {"start": 5.0, "end": 9.0, "text": "two", "speaker": "SPEAKER_00"},
        {"start": 9.0, "end": 12.0, "text": "three", "speaker": "SPEAKER_01"},
        {"start": 12.0, "end": 40.0, "text": "four", "speaker": "SPEAKER_01"},  # past 30 s from its turn's start
        {"start": 40.0, "end": 41.0, "text": " ", "speaker": "SPEAKER_01"}]}
    assert [(t.start, t.end, t.speaker, t.name, t.text) for t in turns_of(doc)] == [
        (0.0, 9.0, "SPEAKER_00", "Maria", "one two"), (9.0, 12.0, "SPEAKER_01", None, "three"),
        (12.0, 40.0, "SPEAKER_01", None, "four")]


@pytest.fixture(scope="module")
def library(tmp_path_factory, fixtures_dir):
    """A small library through `opentr run` with speakers on: JFK, a meeting of three voices with
    known turns, and talk.wav (Mr. Quilter), in the folder team/."""
    from corpus import write_wav
    from meetings import meetings_from_fixtures

    root = tmp_path_factory.mktemp("search")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_", "WHISPER_", "OPENTR_")) or k == "OPENTR_FIXTURES"}
    env.update(UPLOAD_URI=str(root / "uploads"), STORAGE_URI=str(root / "store"), DAGSTER_HOME=str(root / "home"),
               WHISPER_MULTILINGUAL_MODEL="off")
    (root / "uploads" / "team").mkdir(parents=True)
    (root / "home").mkdir()
    from conftest import PROJECT_ROOT

    shutil.copy(PROJECT_ROOT / "dagster.yaml", root / "home" / "dagster.yaml")
    shutil.copy(fixtures_dir / "jfk.flac", root / "uploads" / "jfk.flac")
    meeting = meetings_from_fixtures(fixtures_dir, 1, speakers=3, seconds=60, seed=5)[0]
    write_wav(root / "uploads" / "team" / "meeting.wav", meeting.audio)
    shutil.copy(fixtures_dir / "librispeech_dev-clean_1272-128104-0000_mr_quilter.wav", root / "uploads" / "team" / "talk.wav")
    opentr = str(Path(sys.executable).with_name("opentr"))

    def run(*args: str, **more_env: str) -> subprocess.CompletedProcess:
        return subprocess.run([opentr, *args], capture_output=True, text=True, timeout=600, env={**env, **more_env})

    done = run("run")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "search:      opentr search WORDS" in done.stdout
    return root, run


def transcript(root: Path, path: str) -> dict:
    """The transcript record of the upload at `path` (nested paths have hashed partition keys)."""
    from opentr_pipeline.intake.keys import key_for_path, key_path

    return json.loads((root / "store" / key_path("transcripts", key_for_path(path))).read_text())


def test_a_spoken_phrase_is_found_in_its_file_at_its_second(library):
    root, run = library
    done = run("search", '"what your country can do"', "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    hits = json.loads(done.stdout)
    # JFK's own recording, and the meeting, which has his voice among others
    assert {h["path"] for h in hits} == {"jfk.flac", "team/meeting.wav"}, hits
    words = [w for s in transcript(root, "jfk.flac")["segments"] for w in s["words"]]
    country = next(w for w in words if "country" in w["word"].lower())
    hit = next(h for h in hits if h["path"] == "jfk.flac")
    assert hit["start"] <= country["start"] < country["end"] <= hit["end"] + 0.5
    assert hit["source_uri"].endswith("jfk.flac") and hit["speaker"] == "SPEAKER_00" and hit["language"] == "en"
    assert "«what your country can do»" in hit["marked"].lower()  # the phrase marked as one
    printed = run("search", "countri*")  # a prefix, as a person reads it
    assert printed.returncode == 0 and "jfk.flac  00:00:" in printed.stdout and "#t=" in printed.stdout, printed.stdout


def test_a_speaker_filter_keeps_only_that_speakers_turns(library):
    root, _run = library
    index = SqliteSearch(root / "store" / "search" / "index.sqlite")
    doc = transcript(root, "team/meeting.wav")
    speakers = {s["speaker"] for s in doc["segments"]}
    assert len(speakers) >= 2, speakers
    others_found, tried = False, 0
    for speaker in sorted(speakers):  # words this speaker said, searched with and without the filter
        said = sorted({w.strip(".,?!").lower() for s in doc["segments"] if s["speaker"] == speaker
                       for w in s["text"].split() if len(w.strip(".,?!")) > 2})[:12]
        if not said:
            continue
        tried += 1
        words = " OR ".join(said)
        everyone = index.search(words, limit=500)
        theirs = index.search(words, Filters(speaker=speaker.lower()), limit=500)
        assert theirs and all(h.speaker == speaker for h in theirs), (speaker, theirs)
        assert len(theirs) == sum(h.speaker == speaker for h in everyone)
        others_found |= any(h.speaker != speaker for h in everyone)
    assert tried >= 2 and others_found, "the filter was never needed: no word was said by two speakers"
    in_team = {h.path for h in index.search(words, Filters(file="team"), limit=200)}
    assert "team/meeting.wav" in in_team and in_team <= {"team/meeting.wav", "team/talk.wav"}
    assert index.search(words, Filters(file="tea"), limit=200) == []  # a folder is a whole name
    assert index.search(words, Filters(language="de"), limit=200) == []


def test_hostile_queries_find_nothing_and_break_nothing(library):
    root, run = library
    index = SqliteSearch(root / "store" / "search" / "index.sqlite")
    for query in HOSTILE:  # through the index (a page would send these), then the command line
        try:
            assert index.search(query) == [] or query == "ü\u0000x", query
        except QueryError as error:
            assert str(error), query
    for query in [q for q in HOSTILE if "\u0000" not in q]:  # no NUL in a command's arguments
        done = run("search", query)
        assert done.returncode in (0, 2) and "Traceback" not in done.stderr + done.stdout, (query, done.stderr)
        assert done.returncode == 0 or done.stdout.startswith("opentr search: "), done.stdout
    assert json.loads(run("search", "apostle", "--json").stdout)[0]["path"] == "team/talk.wav"  # the index is whole


def test_a_replaced_file_is_found_by_its_new_words_only_and_the_index_can_be_made_again(library, fixtures_dir):
    root, run = library
    shutil.copy(fixtures_dir / "librispeech_test-clean_8455-210777-0068.wav", root / "uploads" / "team" / "talk.wav")
    done = run("run")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(run("search", "apostle", "--json").stdout) == []
    assert [h["path"] for h in json.loads(run("search", "sufficient", "--json").stdout)] == ["team/talk.wav"]
    index = SqliteSearch(root / "store" / "search" / "index.sqlite")
    before = index.files()
    assert len(before) == 3 and "jfk.flac" in before  # each file once
    (root / "store" / "search" / "index.sqlite").write_bytes(b"damaged")  # the index is derived:
    rebuilt = run("search", "--rebuild", "sufficient")
    assert rebuilt.returncode == 0 and "indexed 3 transcript(s)" in rebuilt.stdout, rebuilt.stdout + rebuilt.stderr
    assert "team/talk.wav" in rebuilt.stdout and index.files() == before


# -- PostgreSQL: the same queries, the same hits (after the replacement above) -----------------------

SAME_QUERIES = [("country", Filters()), ('"what your country can do"', Filters()), ("countri*", Filters()),
                ("sufficient OR country", Filters()), ("country NOT ask", Filters()), ("the", Filters()),
                ("power", Filters(file="team")), ("country", Filters(speaker="SPEAKER_00")),
                ("country", Filters(language="en", since="2020-01-01")), ("country", Filters(since="2999-01-01"))]


@pytest.fixture(scope="module")
def postgres(library):
    from pg_server import postgres_server

    from opentr_pipeline.outputs.search_postgres import PostgresSearch

    with postgres_server() as url:
        index = PostgresSearch(url)
        yield url, index
        index.close()


def test_postgresql_finds_what_sqlite_finds_for_the_same_queries(library, postgres):
    root, _run = library
    url, index = postgres
    from opentr_pipeline.storage import Storage

    records, _ = Storage(str(root / "store")).list_records("transcripts")
    files, _turns = index.rebuild(records, str(root / "uploads"))
    sqlite = SqliteSearch(root / "store" / "search" / "index.sqlite")
    assert files == 3 and index.files() == sqlite.files()
    found = 0
    for query, filters in SAME_QUERIES:
        ours = {(h.key, h.start, h.speaker, h.text) for h in index.search(query, filters, limit=500)}
        theirs = {(h.key, h.start, h.speaker, h.text) for h in sqlite.search(query, filters, limit=500)}
        assert ours == theirs, (query, filters, ours ^ theirs)
        found += bool(ours)
    assert found >= 7, "the comparison found too little to mean anything"
    hit = index.search('"what your country can do"', limit=1)[0]
    assert "«what» «your» «country» «can» «do»" in hit.marked.lower() and hit.path in ("jfk.flac", "team/meeting.wav")
    assert hit.to_dict().keys() == sqlite.search("country", limit=1)[0].to_dict().keys()
    for query in HOSTILE:  # quoted words only: nothing PostgreSQL could read as anything else
        try:
            assert index.search(query) == [] or query == "ü\u0000x", query
        except QueryError as error:
            assert str(error), query
    assert index.files() == sqlite.files()  # and nothing was dropped by them


def test_search_uri_chooses_postgresql_for_the_asset_and_the_command(library, postgres, fixtures_dir):
    root, run = library
    url, index = postgres
    (root / "uploads" / "extra").mkdir()
    shutil.copy(fixtures_dir / "librispeech_test-clean_61-70968-0002.wav", root / "uploads" / "extra" / "fortune.wav")
    done = run("run", SEARCH_URI=url)  # the search_index asset writes to PostgreSQL now
    assert done.returncode == 0, done.stdout + done.stderr
    assert "127.0.0.1" in done.stdout  # the runner names the index it wrote to
    assert "extra/fortune.wav" in {h.path for h in index.search("golden fortune", limit=50)}
    assert "extra/fortune.wav" not in {h.path for h in SqliteSearch(root / "store" / "search" / "index.sqlite")
                                       .search("golden fortune", limit=50)}
    index.remove(next(iter(index.files())))  # made again whole by the command
    rebuilt = run("search", "--rebuild", SEARCH_URI=url)
    assert rebuilt.returncode == 0 and "indexed 4 transcript(s)" in rebuilt.stdout, rebuilt.stdout + rebuilt.stderr
    hits = json.loads(run("search", "sufficient", "--json", SEARCH_URI=url).stdout)
    assert [h["path"] for h in hits] == ["team/talk.wav"] and "«sufficient»" in hits[0]["marked"].lower()
    refused = run("search", "power", SEARCH_URI=url.replace("opentr@", "opentr:secret@"))
    assert refused.returncode == 2 and "PGPASSWORD" in refused.stdout + refused.stderr
    assert "secret" not in refused.stdout + refused.stderr
    down = run("search", "power", SEARCH_URI="postgresql://opentr@127.0.0.1:9/none")
    assert down.returncode == 2 and "cannot be used" in down.stdout and "Traceback" not in down.stderr, down.stdout
