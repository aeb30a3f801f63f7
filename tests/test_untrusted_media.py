"""Issue 26 as users meet it, through `opentr run` and `opentr report` (subprocesses on one upload
area, in order) and a real `opentr dev` with its resident worker: a recording with 8 channels, a
file that kills every process that transcribes it, a WAV whose header understates its length, a
FIFO in the upload folder, and transcript records cut in half. Each used to cost other files or
say nothing; each now fails alone, named, or is transcribed."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT, SPEECH, word_error_rate
from test_every_file_counts import PoisonKiller
from test_isolation import multichannel_speech, write_wav

pytestmark = pytest.mark.slow
OPENTR = Path(os.environ.get("VIRTUAL_ENV", PROJECT_ROOT / ".venv")) / "bin" / "opentr"
JFK = SPEECH["jfk.flac"]
GOOD = ["librispeech_test-clean_61-70968-0002.wav", "librispeech_test-clean_2830-3980-0043.wav"]
POISON = "librispeech_test-clean_4507-16021-0012.wav"


def opentr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(OPENTR), *args], capture_output=True, text=True, timeout=600, env=os.environ.copy())


def stale_length_wav(path: Path, fixtures_dir: Path) -> Path:
    """The JFK clip as 16-bit mono WAV whose data chunk says 1 s: a recorder that died before
    fixing its header."""
    from opentr_pipeline.engine.transcription import load_audio

    write_wav(path, load_audio(fixtures_dir / "jfk.flac").samples)
    data = bytearray(path.read_bytes())
    at = data.index(b"data")
    data[at + 4:at + 8] = struct.pack("<I", 32000)
    path.write_bytes(bytes(data))
    return path


def add_awkward_uploads(uploads: Path, fixtures_dir: Path) -> None:
    write_wav(uploads / "multitrack.wav", multichannel_speech(fixtures_dir, 8))
    stale_length_wav(uploads / "recorder.wav", fixtures_dir)
    for name in GOOD:
        shutil.copy(fixtures_dir / name, uploads / name)
    os.mkfifo(uploads / "pipe.wav")


def check_awkward_transcripts(store: Path) -> None:
    multitrack = json.loads((store / "transcripts" / "multitrack.wav.json").read_text())
    assert word_error_rate(JFK, multitrack["text"]) < 0.2, multitrack["text"]
    recorder = json.loads((store / "transcripts" / "recorder.wav.json").read_text())
    assert recorder["duration_s"] == pytest.approx(11.0, abs=0.1), "speech past the stale length was dropped"
    assert any("WAV header says 1.0 s" in note for note in recorder["audio_notes"]), recorder["audio_notes"]
    assert word_error_rate(JFK, recorder["text"]) < 0.2, recorder["text"]
    for name in GOOD:
        doc = json.loads((store / "transcripts" / f"{name}.json").read_text())
        assert word_error_rate(SPEECH[name], doc["text"]) < 0.2, name


def test_opentr_run_keeps_verdicts_transcribes_what_is_audio_and_reads_records_with_suspicion(
        pipeline_env, fixtures_dir):
    uploads, store = Path(pipeline_env["UPLOAD_URI"]), Path(pipeline_env["STORAGE_URI"])
    shutil.copy(fixtures_dir / POISON, uploads / "poison.wav")
    killer = PoisonKiller(store, "poison.wav")  # kills whatever process is transcribing it
    killer.start()
    try:
        # Item 4. The poison file kills the command that runs it, twice (a file that crashes the
        # model, say). The second death makes it a poison file, for this version of it.
        for attempt in (1, 2):
            died = opentr("run")
            assert died.returncode == -9, (attempt, died.stdout, died.stderr)
        assert len(killer.kills) == 2

        # Four new files beside it, and a FIFO: the poison is left, named; the new files all done.
        add_awkward_uploads(uploads, fixtures_dir)
        third = opentr("run")
        assert third.returncode == 0, third.stdout + third.stderr
        assert "4 new" in third.stdout and "4 to process" in third.stdout, third.stdout
        assert "1 file(s) failed for good before and have not changed, so not tried again" in third.stdout
        assert "poison.wav" in third.stdout and "4 of 4 file(s) done" in third.stdout, third.stdout
        assert len(killer.kills) == 2, "the poison file was tried again"
        verdict = json.loads((store / "failures" / "transcript" / "poison.wav.json").read_text())
        assert verdict["permanent"] and "poison file" in verdict["reason"] and verdict["source_version"]
        # Items 2, 6, 7: eight channels transcribed, speech past a stale length kept, the FIFO named.
        check_awkward_transcripts(store)
        assert "skipped 'pipe.wav': a named pipe (FIFO), not a regular file: not opened" in third.stdout

        # Item 5. One transcript cut in half, one missing a field the report needs.
        cut = store / "transcripts" / f"{GOOD[0]}.json"
        cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
        foreign = store / "transcripts" / f"{GOOD[1]}.json"
        doc = json.loads(foreign.read_text())
        del doc["started_at"]
        foreign.write_text(json.dumps(doc))
        report = opentr("report")
        assert report.returncode == 0 and "Traceback" not in report.stdout + report.stderr, report.stderr
        assert "**2 damaged transcript record(s) skipped**" in report.stdout, report.stdout
        assert f"{GOOD[0]}.json`: not valid JSON" in report.stdout
        assert f"{GOOD[1]}.json`: started_at: field required" in report.stdout
        assert "**2 files**" in report.stdout  # the two sound ones still counted

        fourth = opentr("run")
        assert fourth.returncode == 0, fourth.stdout + fourth.stderr
        assert "2 with a missing or damaged transcript; 2 to process" in fourth.stdout, fourth.stdout
        for name in GOOD:
            assert word_error_rate(SPEECH[name], json.loads((store / "transcripts" / f"{name}.json").read_text())["text"]) < 0.2
        assert "**4 files**" in (store / "reports" / "throughput.md").read_text()
        assert "damaged" not in (store / "reports" / "throughput.md").read_text()

        # A report that cannot be written: the command says so and exits 1, though its files are done.
        (store / "reports" / "throughput.md").unlink()
        (store / "reports" / "throughput.md").mkdir()
        cut.write_text("{")
        fifth = opentr("run")
        assert fifth.returncode == 1, fifth.stdout + fifth.stderr
        assert "1 of 1 file(s) done" in fifth.stdout
        assert "the throughput report could not be updated" in fifth.stdout, fifth.stdout
        assert len(killer.kills) == 2
    finally:
        killer.stop.set()


def test_opentr_dev_with_its_resident_worker_transcribes_awkward_uploads_and_nothing_restarts(tmp_path, fixtures_dir):
    """The 8-channel WAV killed the resident worker's process (and every file it held) before."""
    from dev_server import DevServer, dev_home, wait_for

    env = dev_home(tmp_path, OPENTR_BROKER_URL="embedded")
    store = tmp_path / "store"
    with DevServer(PROJECT_ROOT, env, tmp_path / "dev.log") as dev:
        staging = tmp_path / "staging"
        staging.mkdir()
        add_awkward_uploads(staging, fixtures_dir)
        for path in staging.iterdir():
            os.rename(path, tmp_path / "uploads" / path.name)
        names = ["multitrack.wav", "recorder.wav", *GOOD]
        done = lambda: all((store / "transcripts" / f"{name}.json").is_file() for name in names)  # noqa: E731
        started = time.monotonic()
        wait_for(done, 240, "every awkward upload transcribed by the resident worker", interval=1)
        print(f"\nawkward uploads transcribed {time.monotonic() - started:.1f} s after the drop")
        check_awkward_transcripts(store)
        assert not list(store.glob("failures/*/*.json")), [p.read_text() for p in store.glob("failures/*/*.json")]
        log = dev.log_tail(200000)
        assert "starting it again" not in log, log[-3000:]  # the worker never died
        worker_log = (tmp_path / "home" / "engine" / "worker-cpu0.log").read_text()
        assert "multitrack.wav" in worker_log and "Traceback" not in worker_log, worker_log[-3000:]
