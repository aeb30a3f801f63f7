"""Find it again (outputs/search.py, the search_index asset, `opentr search`): queries rewritten so
they are only ever data, then real transcripts from the real pipeline (`opentr run` with speakers):
a phrase found at its second, a speaker filter, a replaced file found by its new words only, hostile
queries that find nothing and break nothing, and the index made again from the transcripts."""

from __future__ import annotations

import json
import os
import re
import shutil
import http.client
import subprocess
import sys
import time
import urllib.parse
import urllib.request
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


def test_the_page_links_to_the_ui_opentr_dev_starts_and_reads_media_paths_strictly():
    from opentr_pipeline.cli.main import dagster_ui_url
    from opentr_pipeline.outputs.search_page import Refused, checked_relative

    assert dagster_ui_url([]) == "http://127.0.0.1:3000"
    assert dagster_ui_url(["-p", "3001", "-h", "0.0.0.0"]) == "http://{host}:3001"  # the page fills in its host
    assert dagster_ui_url(["--port=4000", "--host=10.0.0.5"]) == "http://10.0.0.5:4000"
    assert checked_relative("team/weekly%20call.m4a") == "team/weekly call.m4a"
    for raw in ["", "/etc/passwd", "../x", "team/../../x", "team/./x", "team//x", "team%2fx", "team%5Cx", "a\\b", "x%00"]:
        with pytest.raises(Refused):
            checked_relative(raw)


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

    run.env = env

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


# -- the search page: hits as you type, a click that plays the moment, nothing else readable ---------

def start_page(env: dict[str, str], dagster_url: str = "http://127.0.0.1:3000") -> tuple[subprocess.Popen, str]:
    from dev_server import free_port, wait_for

    port = free_port()
    page = subprocess.Popen([str(Path(sys.executable).with_name("opentr")), "search-page", "--port", str(port),
                             "--dagster-url", dagster_url], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        if page.poll() is not None:
            raise RuntimeError(f"opentr search-page stopped: {page.stdout.read()}")
        try:
            return urllib.request.urlopen(f"{url}/api/status", timeout=2).status == 200
        except OSError:
            return False

    wait_for(answering, 60, f"the search page at {url}", interval=0.2)
    return page, url


@pytest.fixture(scope="module")
def search_page(library):
    root, run = library
    page, url = start_page(run.env)
    yield url
    page.terminate()
    page.wait(10)


def raw_get(url: str, path: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    """A GET with the path sent exactly as written (no client normalises it first)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("GET", path, skip_accept_encoding=True)
    for name, value in (headers or {}).items():
        connection.putheader(name, value)
    connection.endheaders()
    answer = connection.getresponse()
    body = answer.read()
    connection.close()
    return answer.status, body, dict(answer.getheaders())


def listening_addresses(port: int) -> set[str]:
    """The local addresses a TCP port is listened on, from /proc (IPv4 and IPv6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_the_search_page_serves_recordings_from_under_the_upload_folder_only(library, search_page):
    root, _run = library
    meeting = (root / "uploads" / "team" / "meeting.wav").read_bytes()
    status, body, headers = raw_get(search_page, "/media/team/meeting.wav", {"Range": "bytes=1000-1999"})
    assert status == 206 and body == meeting[1000:2000] and headers["content-range"].endswith(f"/{len(meeting)}")
    secret = root / "store" / "secret.txt"
    secret.write_text("not for the page")
    (root / "uploads" / "team" / "link-out.wav").symlink_to(secret)
    (root / "uploads" / "team" / "folder-out").symlink_to(root / "store", target_is_directory=True)
    for path in ["/media/../store/secret.txt", "/media/team/../../store/secret.txt", "/media/%2e%2e/store/secret.txt",
                 "/media/team%2f..%2f..%2fstore%2fsecret.txt", "/media/team%2Fmeeting.wav", "/media//etc/passwd",
                 "/media/%2Fetc%2Fpasswd", f"/media/{root}/store/secret.txt", "/media/team/link-out.wav",
                 "/media/team/folder-out/secret.txt", "/media/team\\..\\..\\store\\secret.txt", "/media/%00",
                 "/media/team/meeting.wav%00.txt", "/media/", "/media/team", "/media/./team/meeting.wav",
                 "/media/%252e%252e/store/secret.txt", "/../store/secret.txt", "/media/team/missing.wav"]:
        status, body, _ = raw_get(search_page, path)
        assert status in (400, 404) and b"not for the page" not in body and b"root:" not in body, (path, status, body[:80])
    for query in HOSTILE:  # the page's API: a reason (400) or hits, never a server error
        status, body, _ = raw_get(search_page, "/api/search?" + urllib.parse.urlencode({"q": query}))
        assert status in (200, 400) and "error" in json.loads(body) or json.loads(body)["hits"] == [], (query, body)
    port = int(search_page.rsplit(":", 1)[1])
    assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1 alone: nothing off this machine reaches it


def test_the_search_page_in_a_browser_plays_a_hit_from_its_second(library, search_page, tmp_path):
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    root, _run = library
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed: run scripts/install-test-deps.sh as root")
    doc = transcript(root, "team/meeting.wav")
    later = next(s for s in doc["segments"] if s["start"] > 5 and len(s["text"].split()) >= 4)
    words = " ".join(w.strip(".,?!") for w in later["text"].split()[:4])
    shots = Path(__file__).resolve().parent.parent / ".test-artifacts"
    shots.mkdir(exist_ok=True)
    with sync_playwright() as driver:
        try:
            browser = driver.chromium.launch(executable_path=chromium, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"])
        except PlaywrightError as error:
            pytest.skip(f"chromium at {chromium} cannot start here: {error}")
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(search_page, wait_until="domcontentloaded")
            page.get_by_text("transcribed files indexed").wait_for(timeout=30_000)
            page.locator("#query").press_sequentially(f'"{words}"', delay=40)  # typed: hits come as it is typed
            hit = page.locator(".hit").filter(has_text="team/meeting.wav").first
            hit.wait_for(timeout=30_000)
            start = float(hit.get_attribute("data-start"))
            assert start > 5 and abs(start - later["start"]) < 31, (start, later)
            marked = re.findall(r"[\w']+", " ".join(hit.locator("mark").all_inner_texts()).lower())
            assert marked == re.findall(r"[\w']+", words.lower()), marked  # the typed words marked
            assert hit.locator("a", has_text="open in Dagster").get_attribute("href") == (
                f"http://127.0.0.1:3000/assets/transcript?view=partitions&partition={urllib.parse.quote(doc['partition_key'])}")
            hit.click()
            page.wait_for_function("() => document.querySelector('#player').currentTime > 0", timeout=30_000)
            at = page.evaluate("() => document.querySelector('#player').currentTime")
            assert start - 0.05 <= at < start + 5, (at, start)  # playing from the hit's second
            assert page.evaluate("() => document.querySelector('#player').error") is None
            page.screenshot(path=shots / "search-page.png")
            page.locator("#query").fill("what could citizens do for the nation")  # a question in other words
            page.get_by_text("closest in meaning").wait_for(timeout=30_000)
            assert page.locator(".hit .meaning").count() >= 1
            page.screenshot(path=shots / "search-page-meaning.png")
            page.locator("#query").fill('((( "')  # a query it cannot read says why
            page.get_by_text("nothing to search for").wait_for(timeout=10_000)
        except PlaywrightError:
            page.screenshot(path=shots / "search-page-failure.png")
            raise
        finally:
            browser.close()


def test_the_search_page_links_s3_recordings_for_minutes_only(library):
    from s3_server import moto_s3_server, new_bucket

    root, run = library
    with moto_s3_server() as endpoint:
        import s3fs

        bucket = new_bucket()
        data = (root / "uploads" / "jfk.flac").read_bytes()
        s3fs.S3FileSystem().pipe(f"{bucket}/uploads/team/jfk.flac", data)
        s3fs.S3FileSystem().pipe(f"{bucket}/private/secret.txt", b"not for the page")
        env = {**run.env, **{k: v for k, v in os.environ.items() if k.startswith("AWS_")},
               "UPLOAD_URI": f"s3://{bucket}/uploads", "SEARCH_URI": str(root / "s3-index.sqlite")}
        page, url = start_page(env)
        try:
            status, _body, headers = raw_get(url, "/media/team/jfk.flac")
            assert status == 307 and headers["location"].startswith(endpoint), headers
            signed = urllib.parse.parse_qs(urllib.parse.urlsplit(headers["location"]).query)
            lasts = (int(signed["X-Amz-Expires"][0]) if "X-Amz-Expires" in signed  # signature v4, or v2's deadline
                     else int(signed["Expires"][0]) - time.time())
            assert 200 < lasts <= 300, signed  # five minutes
            with urllib.request.urlopen(headers["location"], timeout=30) as answer:
                assert answer.read() == data
            for path in ["/media/../private/secret.txt", "/media/%2e%2e/private/secret.txt",
                         "/media/team%2f..%2f..%2fprivate%2fsecret.txt", "/media/team/missing.flac"]:
                status, body, headers = raw_get(url, path)
                assert status == 404 and "location" not in headers, (path, status)
        finally:
            page.terminate()
            page.wait(10)


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


def test_a_question_in_other_words_finds_the_moment_by_meaning_in_both_engines(library, postgres):
    root, run = library
    url, index = postgres
    sqlite = SqliteSearch(root / "store" / "search" / "index.sqlite")
    question = "what could citizens do for the nation"  # JFK's words are "ask what you can do for your country"
    assert sqlite.search(f'"{question}"') == []  # its words are not there together
    hits = sqlite.search(question, limit=5)
    assert hits and all(h.found_by == "meaning" and -h.score >= 0.2 for h in hits), hits
    assert "country" in hits[0].text.lower(), hits[0]
    assert [(h.key, h.start) for h in index.search(question, limit=5)] == [(h.key, h.start) for h in hits]
    assert all(h.speaker == "SPEAKER_00" for h in sqlite.search(question, Filters(speaker="SPEAKER_00"), limit=5))
    assert sqlite.search(question, Filters(language="de")) == []  # filters hold for the meaning leg too
    printed = run("search", question)
    assert "closest in meaning" in printed.stdout and "country" in printed.stdout.lower(), printed.stdout
    # search syntax asks for exact words: nothing by meaning; nor with the leg turned off
    assert sqlite.search(f"{question} NOT zebra") == [] and SqliteSearch(sqlite.path, meaning=False).search(question) == []


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
