"""Every file counts, in the path users live in: a real `opentr dev` (webserver, daemon, upload
sensor, run monitoring, rerun sensor), files dropped into the upload folder, and faults mixed in:
a text file named `.mp3`, a name that is not UTF-8, and a run process SIGKILLed from outside
every time one particular file is being transcribed (a poison file: in real life a file that
crashes the decoder or exhausts memory). Nothing inside the pipeline is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT, SPEECH, word_error_rate
from dev_server import DevServer, dev_home
from opentr_pipeline.intake.keys import key_for_path, storage_name
from test_dagster_dev import asset_key, wait_or_fail
from opentr_pipeline.defs.names import LAUNCHED_BY

pytestmark = pytest.mark.slow

ARTIFACTS = PROJECT_ROOT / ".test-artifacts"
GOOD = {
    "librispeech_test-clean_61-70968-0002.wav": "golden.wav",
    "librispeech_test-clean_2830-3980-0043.wav": "experience.wav",
    "librispeech_test-clean_8455-210777-0068.wav": os.fsdecode(b"caf\xe9-power.wav"),  # Latin-1 name
}
POISON = ("librispeech_test-clean_4507-16021-0012.wav", "poison.wav")
BAD = "notes.mp3"  # a text file with a media name

PARTITION_STATUSES = """
query ($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses { materializedPartitions failedPartitions materializingPartitions }
      }
    }
  }
}
"""
POOL_SLOTS = """
query ($pool: String!) {
  instance { concurrencyLimit(concurrencyKey: $pool) { limit claimedSlots { runId } pendingSteps { runId } } }
}
"""


class PoisonKiller(threading.Thread):
    """SIGKILLs whatever process is transcribing the poison file, each time one starts."""

    def __init__(self, store: Path, key: str):
        super().__init__(daemon=True)
        self.record = store / "inflight" / f"{storage_name(key)}.json"
        self.kills: list[tuple[int, float]] = []  # (pid, when)
        self.finished_before_first_kill: dict[str, str] = {}  # transcript file -> its started_at
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                record = json.loads(self.record.read_text())
            except (OSError, ValueError):
                record = None
            if record and record["asset"] == "transcript" and record.get("state") == "started" and record["pid"] not in [p for p, _ in self.kills]:
                try:
                    os.kill(record["pid"], signal.SIGKILL)
                    self.kills.append((record["pid"], time.monotonic()))
                except ProcessLookupError:
                    continue
                if len(self.kills) == 1:
                    for path in self.record.parent.parent.glob("transcripts/*.json"):
                        self.finished_before_first_kill[path.name] = json.loads(path.read_text())["started_at"]
            time.sleep(0.05)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("every-file-counts")
    env = dev_home(root, GPU_SCALE_ENABLED="true", GPU_SCALE_WORKERS="2")
    with DevServer(PROJECT_ROOT, env, log_path=ARTIFACTS / "every-file-counts.log") as server:
        yield server, root / "uploads", root / "store"


def test_bad_killed_and_poison_files_fail_alone_and_nothing_else_is_lost(dev, fixtures_dir: Path):
    server, uploads, store = dev
    keys = {name: key_for_path(target) for name, target in GOOD.items()}
    poison_key, bad_key = key_for_path(POISON[1]), key_for_path(BAD)
    killer = PoisonKiller(store, poison_key)
    killer.start()

    # Dropped together, as an uploader does: written under temporary names, renamed at once.
    staged = []
    for name, target in [*GOOD.items(), POISON]:
        staged.append((uploads / (target + ".part"), uploads / target))
        shutil.copy(fixtures_dir / name, staged[-1][0])
    (uploads / "notes.part").write_text("meeting notes, not audio\n")
    staged.append((uploads / "notes.part", uploads / BAD))
    dropped = time.monotonic()
    for partial, final in staged:
        os.rename(partial, final)

    def statuses(asset: str) -> dict:
        node = server.graphql(PARTITION_STATUSES, {"key": asset_key(asset)})["assetNodeOrError"]
        return node["assetPartitionStatuses"]

    def settled() -> dict | None:
        subtitles = statuses("subtitles")
        done = set(subtitles["materializedPartitions"]) >= set(keys.values())
        named = (store / "failures" / "transcript" / f"{poison_key}.json").is_file()
        failed = {bad_key, poison_key} <= set(statuses("media_file")["failedPartitions"]) | set(
            statuses("transcript")["failedPartitions"])
        return subtitles if done and named and failed and not subtitles["materializingPartitions"] else None

    try:
        wait_or_fail(server, settled, timeout=420, what="good files transcribed, bad and poison failed")
    finally:
        killer.stop.set()
    finished = time.monotonic()

    # Every good file: transcribed, right, and materialized; only the bad ones failed, with reasons.
    for name, key in keys.items():
        doc = json.loads((store / "transcripts" / f"{key}.json").read_text())
        assert word_error_rate(SPEECH[name], doc["text"]) < 0.15, key
    for asset in ("media_file", "transcript", "subtitles"):
        failed = set(statuses(asset)["failedPartitions"])
        assert not failed & set(keys.values()), f"a good file shows failed in {asset}: {failed}"
    bad = json.loads((store / "failures" / "media_file" / f"{bad_key}.json").read_text())
    assert BAD in bad["reason"] and "not a readable media file" in bad["reason"] and bad["permanent"]
    poison = json.loads((store / "failures" / "transcript" / f"{poison_key}.json").read_text())
    assert "poison" in poison["reason"] and poison["permanent"], poison
    assert len(killer.kills) == 2, f"killed {len(killer.kills)} times: poison after 2, the last time alone"
    for name, started_at in killer.finished_before_first_kill.items():  # kept, not transcribed again
        assert json.loads((store / "transcripts" / name).read_text())["started_at"] == started_at, name

    # Slots of the killed runs were freed, and nothing is left in flight.
    wait_or_fail(server, lambda: not server.graphql(POOL_SLOTS, {"pool": "gpu"})["instance"]["concurrencyLimit"]["claimedSlots"],
                 timeout=60, what="the gpu pool's slots to be free")
    assert not list((store / "inflight").glob("*.json"))
    print(f"\ndrop to settled: {finished - dropped:.1f} s; first kill to settled: "
          f"{finished - killer.kills[0][1]:.1f} s; kills at "
          f"{[round(when - dropped, 1) for _, when in killer.kills]} s after the drop")


def test_everything_converges_after_the_whole_server_is_killed_and_started_again(tmp_path, fixtures_dir):
    """Webserver, daemon, code server and run processes all SIGKILLed at once (a reboot) while
    runs are going and more are queued; started again on the same instance, the queued runs run,
    the dead ones are failed by run monitoring and their files rerun, and the sensor does not
    request again what it had requested before."""
    env = dev_home(tmp_path, OPENTR_FILES_PER_RUN="1")
    store = tmp_path / "store"
    names = [name for name in SPEECH if name.startswith("librispeech")] + ["jfk.flac"]
    log = ARTIFACTS / "server-killed.log"

    server = DevServer(PROJECT_ROOT, env, log_path=log).start()
    try:
        for name in names:
            shutil.copy(fixtures_dir / name, tmp_path / "uploads" / (name + ".part"))
        for name in names:
            os.rename(tmp_path / "uploads" / (name + ".part"), tmp_path / "uploads" / name)

        def runs_by_status() -> dict[str, int]:
            found = server.graphql('query { runsOrError { ... on Runs { results { status } } } }')
            statuses = [run["status"] for run in found["runsOrError"]["results"]]
            return {status: statuses.count(status) for status in set(statuses)}

        wait_or_fail(server, lambda: runs_by_status().get("STARTED") and runs_by_status().get("QUEUED"),
                     timeout=180, what="runs going and runs queued", interval=0.5)
        before = runs_by_status()
    finally:
        os.killpg(os.getpgid(server.process.pid), signal.SIGKILL)
        server.process.wait(timeout=30)
    killed = time.monotonic()

    with DevServer(PROJECT_ROOT, env, log_path=log.with_name("server-restarted.log")) as again:
        def all_done() -> bool:
            return all((store / "transcripts" / f"{name}.json").is_file() for name in names)

        wait_or_fail(again, all_done, timeout=420, what="every file transcribed after the restart")
        runs = again.graphql('query { runsOrError { ... on Runs { results { status tags { key value } } } } }')
    for name in names:
        doc = json.loads((store / "transcripts" / f"{name}.json").read_text())
        assert word_error_rate(SPEECH[name], doc["text"]) < 0.15, name
    sensor_runs = [r for r in runs["runsOrError"]["results"]
                   if {"key": LAUNCHED_BY, "value": "upload_sensor"} in r["tags"]]
    assert len(sensor_runs) == len(names), "the sensor requested each file once, across the restart"
    print(f"\nbefore the kill: {before}; kill to every file done: {time.monotonic() - killed:.1f} s")
