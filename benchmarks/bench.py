"""`opentr bench`: raw faster-whisper against the pipeline end to end, in one run.

The claim to prove is that Dagster costs (almost) nothing: the pipeline should transcribe at
0.9 or more of what a plain script gets from the same model and settings, and N workers sharing
one model should beat one worker by 1.6x or more on a 2-core CPU. So one run measures, on one
corpus, side by side:

- raw faster-whisper: one `WhisperModel` loaded once with `num_workers` = N and the pipeline's
  thread split, N threads taking files from a queue, each decoding its file and running a fresh
  `BatchedInferencePipeline` with the pipeline's settings;
- the pipeline: `opentr run` as a subprocess on fresh upload, storage and Dagster folders, with
  `GPU_SCALE_ENABLED=true GPU_SCALE_WORKERS=N`, timed as a whole command and, from the
  transcripts' `started_at`/`finished_at`, as a transcription span.

On a CPU it also measures raw faster-whisper with one worker on one thread, and prints each
configuration's throughput against (cores used x that one-core figure): near 1.0 means the
workers scale with the cores, so a low N-vs-1 ratio is the single worker's doing, not theirs.

Both "transcription span" figures are measured the same way: from the first transcription's
start to the last one's end. The model load and the first file's decoding fall outside it; the
decoding of every later file falls inside it (its worker decodes it while the others keep
transcribing), in raw and in the pipeline alike. "whole command" is everything `opentr run`
does: Python and Dagster start-up, probing, model load, subtitles and the throughput report.

Nothing here imports Dagster: the raw side must not pay for it, and the pipeline side runs in
its own process exactly as a person would start it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import wave
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from opentr_pipeline.core.throughput import peak_overlap
from opentr_pipeline.settings import PROJECT_ROOT, DecodingSettings, DeviceSettings, Settings

SAMPLE_RATE = 16000
NO_SPEECH = "squirrel_nospeech.wav"  # silence-like noise: it would only pad the corpus
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".opus")
DEFAULT_FIXTURES = PROJECT_ROOT.parent / "shared" / "fixtures" / "audio"
SPAN_TARGET = 0.9  # pipeline span x realtime / raw x realtime, same workers
SCALING_TARGET = 1.6  # N workers x realtime / 1 worker x realtime
RAW = "raw faster-whisper (transcription span)"
PIPELINE_SPAN = "pipeline (transcription span)"
PIPELINE_WHOLE = "pipeline (whole command)"
RESIDENT_SPAN = "pipeline, resident worker (transcription span)"
RESIDENT_WHOLE = "pipeline, resident worker (whole command)"
RESIDENT_TARGET = 0.95  # resident pipeline span x realtime / raw x realtime, same workers
# On a CPU, how far N workers are from N x one core says whether the workers or the cores are
# the limit: one worker with all the cores cannot keep them all busy (the beam search barely
# speeds up with more threads), so N-vs-1 understates how well the workers scale.
RAW_ONE_CORE = "raw faster-whisper, 1 thread (one core)"


class BenchError(RuntimeError):
    """The benchmark could not measure what it set out to measure."""


# --- the corpus -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    duration_s: float
    sha256: str


def fixtures_folder() -> Path:
    return Path(os.environ.get("OPENTR_FIXTURES") or DEFAULT_FIXTURES).resolve()


def speech_fixtures(folder: Path) -> list[Path]:
    """Every speech recording in the fixtures folder (the no-speech clip left out)."""
    if not folder.is_dir():
        raise BenchError(f"fixtures folder {folder} not found: set OPENTR_FIXTURES to it")
    found = sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES and p.name != NO_SPEECH
    )
    if not found:
        raise BenchError(f"no speech recordings ({', '.join(AUDIO_SUFFIXES)}) in {folder}")
    return found


def _write_wav(path: Path, audio) -> None:
    import numpy as np

    samples = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(samples.tobytes())


def build_corpus(fixtures: list[Path], out_dir: Path, files: int = 8, seconds: float = 120.0,
                 seed: int = 0) -> list[CorpusFile]:
    """Distinct recordings of at least `seconds` each, 16 kHz mono WAV, made from the fixtures.

    File i plays the clips rotated by i (reversed on every second pass over the rotations),
    with a random 0.3-0.8 s silence after each clip, until it is `seconds` long. Distinct
    bytes matter: the pipeline reuses the transcript of a file it has already seen.
    """
    import numpy as np
    from faster_whisper import decode_audio

    clips = [decode_audio(str(p), sampling_rate=SAMPLE_RATE) for p in fixtures]
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus: list[CorpusFile] = []
    target = int(seconds * SAMPLE_RATE)
    for i in range(files):
        rng = random.Random(f"{seed}-{i}")
        shift = i % len(clips)
        order = clips[shift:] + clips[:shift]
        if (i // len(clips)) % 2:
            order.reverse()
        pieces, length, n = [], 0, 0
        while length < target:
            clip = order[n % len(order)]
            silence = np.zeros(int(rng.uniform(0.3, 0.8) * SAMPLE_RATE), dtype=np.float32)
            pieces += [clip, silence]
            length += len(clip) + len(silence)
            n += 1
        audio = np.concatenate(pieces[:-1])  # no silence after the last clip
        path = out_dir / f"bench-{i + 1:03d}.wav"
        _write_wav(path, audio)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        corpus.append(CorpusFile(path, round(len(audio) / SAMPLE_RATE, 3), digest))
    if len({c.sha256 for c in corpus}) != len(corpus):
        raise BenchError("corpus files are not distinct; the pipeline would reuse transcripts")
    return corpus


# --- measurements -----------------------------------------------------------------------------


@dataclass
class Measurement:
    configuration: str
    workers: int
    files: int
    audio_s: float
    wall_s: float
    includes: str
    details: dict = field(default_factory=dict)

    @property
    def x_realtime(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "x_realtime": round(self.x_realtime, 2)}


@dataclass(frozen=True)
class BenchPlan:
    """What both sides run: model, device, compute type and the pipeline's own options."""

    model: str
    device: str  # "cpu" or "cuda"
    device_index: int
    compute_type: str
    beam_size: int
    batch_size: int
    vad_filter: bool
    language: str | None

    def device_for(self, workers: int):
        """The pipeline's device plan for N workers, so raw gets the same thread split."""
        from opentr_pipeline.core.devices import plan_devices

        (device,) = plan_devices(self.devices(workers))
        return device

    def devices(self, workers: int) -> DeviceSettings:
        return DeviceSettings(gpu_scale_enabled=True, gpu_scale_workers=workers,
                              gpu_scale_device_id=self.device_index, gpu_device_id=self.device_index,
                              whisper_device=self.device)

    def pipeline_env(self, workers: int) -> dict[str, str]:
        """The settings' own variables (settings.py), so the pipeline runs exactly this plan."""
        decoding = DecodingSettings(whisper_model=self.model, whisper_compute_type=self.compute_type,
                                    beam_size=self.beam_size, batch_size=self.batch_size,
                                    vad_filter=self.vad_filter, language=self.language)
        return {**self.devices(workers).to_env(), **decoding.to_env()}


def make_plan(settings: Settings, device: str | None, model: str | None,
              compute_type: str | None) -> BenchPlan:
    from opentr_pipeline.core.devices import cuda_device_count
    from opentr_pipeline.core.transcription import resolve_compute_type
    from opentr_pipeline.settings import SettingsError, check_model

    devices, decoding = settings.devices, settings.decoding
    wanted = device or devices.whisper_device
    cuda = cuda_device_count()
    if wanted == "cuda" and cuda == 0:
        raise SettingsError("--device cuda: no CUDA device is visible on this machine")
    kind = "cuda" if wanted != "cpu" and cuda > 0 else "cpu"
    index = devices.gpu_scale_device_id if devices.gpu_scale_enabled else devices.gpu_device_id
    return BenchPlan(
        model=check_model(model, "--model") if model else decoding.whisper_model,
        device=kind,
        device_index=index if kind == "cuda" else 0,
        compute_type=resolve_compute_type(compute_type or decoding.whisper_compute_type, kind),
        beam_size=decoding.beam_size,
        batch_size=decoding.batch_size,
        vad_filter=decoding.vad_filter,
        language=decoding.language,
    )


def raw_faster_whisper(corpus: list[CorpusFile], plan: BenchPlan, workers: int,
                       one_core: bool = False) -> Measurement:
    """N threads over one shared model, the way a plain script would do it.

    `one_core` pins CTranslate2 to one thread: the per-core reference on a CPU.
    """
    from faster_whisper import BatchedInferencePipeline, WhisperModel, decode_audio

    from opentr_pipeline.core.transcription import model_location

    device = plan.device_for(workers)
    if one_core:
        device = replace(device, cpu_threads=1)
    clock = time.perf_counter()
    model = WhisperModel(
        model_location(plan.model),
        device=device.kind,
        device_index=device.index if device.kind == "cuda" else 0,
        compute_type=plan.compute_type,
        cpu_threads=device.cpu_threads,
        num_workers=workers,
    )
    load_s = time.perf_counter() - clock
    todo: queue.Queue[CorpusFile] = queue.Queue()
    for item in corpus:
        todo.put(item)
    intervals: list[tuple[float, float]] = []
    errors: list[BaseException] = []
    decode_s: list[float] = []

    def work() -> None:
        while True:
            try:
                item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                before_decode = time.perf_counter()
                audio = decode_audio(str(item.path), sampling_rate=SAMPLE_RATE)
                started = time.perf_counter()
                common = dict(beam_size=plan.beam_size, language=plan.language,
                              vad_filter=plan.vad_filter, word_timestamps=True)
                if plan.batch_size > 1 and plan.vad_filter:
                    segments, _ = BatchedInferencePipeline(model).transcribe(
                        audio, batch_size=plan.batch_size, **common)
                else:
                    segments, _ = model.transcribe(audio, **common)
                for segment in segments:  # the generator does the work
                    _ = segment.words
                intervals.append((started, time.perf_counter()))
                decode_s.append(started - before_decode)
            except BaseException as error:  # noqa: BLE001 - reported after the join
                errors.append(error)

    threads = [threading.Thread(target=work, name=f"raw-worker-{n}") for n in range(workers)]
    cpu_before = _cpu_s(os.times())
    first = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with_decoding_s = time.perf_counter() - first
    cpu_s = _cpu_s(os.times()) - cpu_before
    model = None  # freed before the pipeline side loads its own  # noqa: F841
    if errors:
        raise BenchError(f"raw faster-whisper failed: {errors[0]!r}")
    span = max(end for _, end in intervals) - min(start for start, _ in intervals)
    return Measurement(
        configuration=RAW_ONE_CORE if one_core else RAW, workers=workers, files=len(corpus),
        audio_s=round(sum(c.duration_s for c in corpus), 3), wall_s=round(span, 3),
        includes="first transcription start to last end; model load and first decode outside",
        details={
            "model_load_s": round(load_s, 3),
            "cpu_s": round(cpu_s, 2),
            "cores_busy": round(cpu_s / with_decoding_s, 2),
            "wall_with_all_decoding_s": round(with_decoding_s, 3),
            "decode_s_total": round(sum(decode_s), 3),
            "mean_file_transcription_s": round(sum(e - s for s, e in intervals) / len(intervals), 3),
            "peak_concurrency": peak_overlap(intervals),
            "cpu_threads_per_worker": device.cpu_threads,
            "num_workers": workers,
        },
    )


def _cpu_s(times: os.times_result, children: bool = False) -> float:
    """CPU seconds (user + system): a cost that other people's load on the machine cannot inflate."""
    if children:
        return times.children_user + times.children_system
    return times.user + times.system


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def pipeline_end_to_end(corpus: list[CorpusFile], plan: BenchPlan, workers: int,
                        work_dir: Path, resident: bool = False) -> list[Measurement]:
    """`opentr run` on fresh folders: the whole command, and the span its transcripts record.

    `resident`: a resident worker with N slots is started first (Redis and `opentr worker`, its
    model loaded once, as under `make dev` or a cluster), and `opentr run` sends it the files.
    """
    if resident:
        from opentr_pipeline.workers import local_engine

        root = work_dir / f"engine-{workers}w-{time.time_ns()}"
        environ = {**os.environ, **plan.pipeline_env(workers), "UPLOAD_URI": str(root / "uploads"),
                   "STORAGE_URI": str(root / "store"), "DAGSTER_HOME": str(root / "home")}
        device = plan.device_for(workers)
        with local_engine(Settings.from_env(environ), root / "engine", [device.label], device.cpu_threads) as broker:
            return pipeline_end_to_end_on(corpus, plan, workers, root, {"OPENTR_BROKER_URL": broker})
    return pipeline_end_to_end_on(corpus, plan, workers, work_dir / f"pipeline-{workers}w-{time.time_ns()}", {})


def pipeline_end_to_end_on(corpus: list[CorpusFile], plan: BenchPlan, workers: int, root: Path,
                           extra_env: dict[str, str]) -> list[Measurement]:
    resident = bool(extra_env)
    uploads, store, home = root / "uploads", root / "store", root / "home"
    uploads.mkdir(parents=True)
    for item in corpus:
        shutil.copy(item.path, uploads / item.path.name)
    env = {**os.environ, **plan.pipeline_env(workers), **extra_env,
           "UPLOAD_URI": str(uploads), "STORAGE_URI": str(store), "DAGSTER_HOME": str(home)}
    log_path = root / "opentr-run.log"
    command = [sys.executable, "-m", "opentr_pipeline.cli", "run"]
    cpu_before = _cpu_s(os.times(), children=True)
    clock = time.perf_counter()
    with open(log_path, "w") as log:
        finished = subprocess.run(command, env=env, cwd=PROJECT_ROOT, stdout=log,
                                  stderr=subprocess.STDOUT, check=False)
    whole_s = time.perf_counter() - clock
    cpu_s = _cpu_s(os.times(), children=True) - cpu_before
    output = log_path.read_text()
    if finished.returncode != 0:
        raise BenchError(f"opentr run exited with {finished.returncode}; its output ends:\n"
                         + "\n".join(output.splitlines()[-25:]))
    docs = [json.loads(p.read_text()) for p in sorted((store / "transcripts").glob("*.json"))]
    if len(docs) != len(corpus):
        raise BenchError(f"opentr run wrote {len(docs)} transcripts for {len(corpus)} files")
    intervals = [(_seconds(d["started_at"]), _seconds(d["finished_at"])) for d in docs]
    audio_s = round(sum(float(d["duration_s"]) for d in docs), 3)
    span = max(end for _, end in intervals) - min(start for start, _ in intervals)
    shared = {
        "cpu_threads_per_worker": plan.device_for(workers).cpu_threads,
        "devices": sorted({d["device"] for d in docs}),
        "workers_used": sorted({int(d["worker"]) for d in docs}),
        "peak_concurrency": peak_overlap(intervals),
        "mean_file_transcription_s": round(sum(float(d["wall_s"]) for d in docs) / len(docs), 3),
        "runs": output.count("\nrun ") + output.startswith("run "),
    }
    return [
        Measurement(
            configuration=RESIDENT_SPAN if resident else PIPELINE_SPAN, workers=workers, files=len(docs), audio_s=audio_s,
            wall_s=round(span, 3),
            includes="first transcription start to last end (transcripts' started_at/finished_at)",
            details=shared,
        ),
        Measurement(
            configuration=RESIDENT_WHOLE if resident else PIPELINE_WHOLE, workers=workers, files=len(docs), audio_s=audio_s,
            wall_s=round(whole_s, 3),
            includes="the whole `opentr run` subprocess: start-up, Dagster, probing, "
                     + ("transcription on the resident worker (model loaded before), " if resident
                        else "model load, transcription, ") + "subtitles, throughput report",
            details={**shared, "overhead_outside_span_s": round(whole_s - span, 3),
                     "cpu_s": round(cpu_s, 2), "cores_busy": round(cpu_s / whole_s, 2)},
        ),
    ]


# --- the report -------------------------------------------------------------------------------


def best_of(measurements: list[Measurement]) -> list[Measurement]:
    """Per configuration and worker count, the fastest repetition (noise only ever slows down)."""
    best: dict[tuple[str, int], Measurement] = {}
    for m in measurements:
        key = (m.configuration, m.workers)
        if key not in best or m.x_realtime > best[key].x_realtime:
            best[key] = m
    order = {RAW_ONE_CORE: -1, RAW: 0, PIPELINE_SPAN: 1, PIPELINE_WHOLE: 2, RESIDENT_SPAN: 3, RESIDENT_WHOLE: 4}
    return sorted(best.values(), key=lambda m: (m.workers, order.get(m.configuration, 9)))


def comparisons(rows: list[Measurement], workers: int) -> dict:
    """Ratios to raw with the same workers, N against 1, and the targets with PASS or MISS."""
    by = {(m.configuration, m.workers): m for m in rows}
    to_raw: dict[str, float] = {}
    scaling: dict[str, float] = {}
    targets: list[dict] = []
    for m in rows:
        raw = by.get((RAW, m.workers))
        if raw and m.configuration != RAW:
            to_raw[f"{m.configuration} / raw, {m.workers} worker(s)"] = round(m.x_realtime / raw.x_realtime, 3)
        one = by.get((m.configuration, 1))
        if one and m.workers != 1:
            scaling[f"{m.configuration}, {m.workers} vs 1 worker(s)"] = round(m.x_realtime / one.x_realtime, 3)
    for n in sorted({m.workers for m in rows}):
        raw, span = by.get((RAW, n)), by.get((PIPELINE_SPAN, n))
        if raw and span:
            value = span.x_realtime / raw.x_realtime
            targets.append({"target": f"pipeline span >= {SPAN_TARGET} x raw, {n} worker(s)",
                            "value": round(value, 3), "pass": value >= SPAN_TARGET})
        resident = by.get((RESIDENT_SPAN, n))
        if raw and resident:
            value = resident.x_realtime / raw.x_realtime
            targets.append({"target": f"resident pipeline span >= {RESIDENT_TARGET} x raw, {n} worker(s)",
                            "value": round(value, 3), "pass": value >= RESIDENT_TARGET})
    if workers > 1:
        for configuration in (RAW, PIPELINE_SPAN):
            one, many = by.get((configuration, 1)), by.get((configuration, workers))
            if one and many:
                value = many.x_realtime / one.x_realtime
                targets.append({"target": f"{configuration}: {workers} workers >= {SCALING_TARGET} x 1 worker",
                                "value": round(value, 3), "pass": value >= SCALING_TARGET})
    per_core: dict[str, float] = {}
    one_core = by.get((RAW_ONE_CORE, 1))
    for m in rows:
        if one_core and m.configuration in (RAW, PIPELINE_SPAN, RESIDENT_SPAN) and "cpu_threads_per_worker" in m.details:
            cores = m.workers * m.details["cpu_threads_per_worker"]
            per_core[f"{m.configuration}, {m.workers} worker(s) on {cores} core(s)"] = round(
                m.x_realtime / (cores * one_core.x_realtime), 3)
    return {"ratio_to_raw_same_workers": to_raw, "ratio_n_vs_1": scaling,
            "ratio_to_cores_x_one_core": per_core, "targets": targets}


def format_table(rows: list[Measurement]) -> str:
    by = {(m.configuration, m.workers): m for m in rows}
    header = ("configuration", "workers", "audio s", "wall s", "x realtime", "vs raw (same workers)", "N vs 1",
              "CPU s")
    lines = []
    for m in rows:
        raw = by.get((RAW, m.workers))
        one = by.get((m.configuration, 1))
        vs_raw = f"{m.x_realtime / raw.x_realtime:.2f}" if raw and m.configuration != RAW else "-"
        vs_one = f"{m.x_realtime / one.x_realtime:.2f}x" if one and m.workers != 1 else "-"
        cpu = f"{m.details['cpu_s']:.1f}" if "cpu_s" in m.details else "-"
        lines.append((m.configuration, str(m.workers), f"{m.audio_s:.1f}", f"{m.wall_s:.1f}",
                      f"{m.x_realtime:.1f}", vs_raw, vs_one, cpu))
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    render = lambda row: "| " + " | ".join(  # noqa: E731
        cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([render(header), rule, *(render(row) for row in lines)])


def build_report(facts: dict, plan: BenchPlan, options: dict, corpus: list[CorpusFile],
                 fixtures: list[Path], measurements: list[Measurement]) -> dict:
    """The JSON document: machine, settings, corpus, best rows, ratios, targets, every run."""
    rows = best_of(measurements)
    chosen = {k: options[k] for k in ("workers", "files", "seconds", "repeat") if k in options}
    return {
        "machine": facts,
        "settings": {**asdict(plan), **chosen},
        "corpus": {"files": [{"name": c.path.name, "duration_s": c.duration_s, "sha256": c.sha256}
                             for c in corpus],
                   "audio_s": round(sum(c.duration_s for c in corpus), 3),
                   "fixtures": [p.name for p in fixtures]},
        "results": [m.to_dict() for m in rows],
        **comparisons(rows, max(m.workers for m in measurements)),
        "all_measurements": [m.to_dict() for m in measurements],
    }


def machine_facts(plan: BenchPlan) -> dict:
    import ctranslate2
    import faster_whisper

    from opentr_pipeline.core.transcription import model_location

    facts = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "faster_whisper": faster_whisper.__version__,
        "ctranslate2": ctranslate2.__version__,
        "model": plan.model,
        "model_location": model_location(plan.model),
        "device": plan.device,
        "device_index": plan.device_index,
        "compute_type": plan.compute_type,
        "cuda_devices": ctranslate2.get_cuda_device_count(),
    }
    if plan.device == "cuda":
        try:
            import torch

            facts["gpu_name"] = torch.cuda.get_device_name(plan.device_index)
        except Exception as error:  # noqa: BLE001 - a fact we could not read is not fatal
            facts["gpu_name"] = f"unknown ({error})"
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# --- the command ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=2, help="N, compared with 1 (default 2)")
    parser.add_argument("--files", type=int, default=8, help="recordings in the corpus (default 8)")
    parser.add_argument("--seconds", type=float, default=120.0, help="length of each recording (default 120)")
    parser.add_argument("--out", default="bench-results/bench.json", help="where the figures go as JSON")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure every configuration this many times, interleaved; the table shows the best")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="default: WHISPER_DEVICE (auto: CUDA where visible)")
    parser.add_argument("--model", default=None, help="default: WHISPER_MODEL (the bundled tiny.en)")
    parser.add_argument("--compute-type", default=None, help="default: WHISPER_COMPUTE_TYPE (auto)")
    parser.add_argument("--work-dir", default=None,
                        help="where the corpus and pipeline folders go (default: a fresh temp folder, removed after)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--engine", choices=("in-process", "resident", "both"), default="both",
                        help="where the pipeline's model lives: in each run process, on a resident "
                             "worker (Redis + `opentr worker`, model loaded before the command), or both")


def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    if args.workers < 1 or args.files < 1 or args.seconds <= 0 or args.repeat < 1:
        raise BenchError("--workers, --files and --repeat must be 1 or more, --seconds above 0")
    plan = make_plan(settings, args.device, args.model, args.compute_type)
    facts = machine_facts(plan)
    own_dir = args.work_dir is None
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="opentr-bench-")).resolve()
    worker_counts = [1] if args.workers == 1 else [1, args.workers]
    print(f"model {plan.model} on {plan.device} ({plan.compute_type}); {facts['cpu_count']} CPU(s); "
          f"beam {plan.beam_size}, batch {plan.batch_size}, VAD {plan.vad_filter}; "
          f"load average {facts['load_average_at_start'][0]}; work folder {work_dir}", flush=True)
    try:
        fixtures = speech_fixtures(fixtures_folder())
        clock = time.perf_counter()
        corpus = build_corpus(fixtures, work_dir / "corpus", args.files, args.seconds)
        audio_s = sum(c.duration_s for c in corpus)
        print(f"corpus: {len(corpus)} distinct recordings, {audio_s:.1f} s of audio from "
              f"{len(fixtures)} fixtures ({time.perf_counter() - clock:.1f} s to build)", flush=True)
        measurements: list[Measurement] = []
        for round_number in range(1, args.repeat + 1):
            label = f"[{round_number}/{args.repeat}] " if args.repeat > 1 else ""
            # Every other round runs in the opposite order, so neither side always goes first.
            sides = {"in-process": ("raw", "pipeline"), "resident": ("raw", "resident"),
                     "both": ("raw", "pipeline", "resident")}[args.engine]
            steps = [(w, side) for w in worker_counts for side in sides]
            if plan.device == "cpu" and args.workers > 1:
                steps.insert(0, (1, "one core"))
            for workers, side in steps if round_number % 2 else steps[::-1]:
                if side in ("raw", "one core"):
                    print(f"{label}raw faster-whisper, {workers} worker(s)"
                          f"{', 1 thread' if side == 'one core' else ''} ...", flush=True)
                    measurements.append(raw_faster_whisper(corpus, plan, workers, side == "one core"))
                    print(f"  {measurements[-1].x_realtime:.1f}x realtime", flush=True)
                    continue
                print(f"{label}opentr run, GPU_SCALE_WORKERS={workers}"
                      f"{' on a resident worker' if side == 'resident' else ''} ...", flush=True)
                measurements += pipeline_end_to_end(corpus, plan, workers, work_dir, side == "resident")
                print(f"  span {measurements[-2].x_realtime:.1f}x, whole command "
                      f"{measurements[-1].x_realtime:.1f}x realtime", flush=True)
    finally:
        if own_dir and not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)

    rows = best_of(measurements)
    figures = comparisons(rows, args.workers)
    print()
    print(format_table(rows))
    print()
    print("transcription span: first transcription start to last end, model load and the first file's")
    print("decoding outside, later files' decoding inside, in raw and pipeline alike; whole command:")
    print("the entire `opentr run` subprocess (start-up, Dagster, probing, model load, subtitles, report).")
    print("CPU s: user+system seconds, raw from its first decode to its last end, pipeline for the whole")
    print("command; unlike wall s, other people's load on the machine does not inflate it.")
    if args.repeat > 1:
        print(f"best of {args.repeat} interleaved repetitions per row; every repetition is in the JSON.")
    for name, value in figures["ratio_to_cores_x_one_core"].items():
        print(f"per-core scaling  {name}: {value:.2f} of cores x one core")
    for target in figures["targets"]:
        print(f"{'PASS' if target['pass'] else 'MISS'}  {target['target']}: {target['value']:.3f}")
    facts["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average (1, 5, 15 min): {facts['load_average_at_start']} at start, "
          f"{facts['load_average_at_end']} at end, on {facts['cpu_count']} CPU(s)")
    report = build_report(facts, plan, vars(args), corpus, fixtures, measurements)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nfigures: {out}")
    return 0


def bench_command(args: argparse.Namespace, settings: Settings) -> int:
    """`opentr bench`: a failed measurement is one clear line, not a traceback."""
    try:
        return run_bench(args, settings)
    except BenchError as error:
        print(f"opentr bench: {error}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    from opentr_pipeline.settings import SettingsError

    parser = argparse.ArgumentParser(prog="opentr bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return bench_command(args, Settings.from_env())
    except SettingsError as error:
        print(f"opentr bench: configuration error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
