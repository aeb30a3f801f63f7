"""The plain side: the best faster-whisper script a user would write with the same model and
settings (one model, N threads sharing it), timed the same way as the pipeline."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from corpus import SAMPLE_RATE, CorpusFile, wer_by_file
from plan import RAW, RAW_ONE_CORE, RAW_SEQUENTIAL, RAW_SEQUENTIAL_NO_VAD, BenchError, BenchPlan, Measurement, _cpu_s

from opentr_pipeline.outputs.throughput import peak_overlap


def raw_faster_whisper(corpus: list[CorpusFile], plan: BenchPlan, workers: int,
                       one_core: bool = False, sequential: bool = False, vad: bool = True) -> Measurement:
    """N threads over one shared model, the way a plain script would do it: batched
    (`BatchedInferencePipeline`, the pipeline's batch size) or `sequential` (`model.transcribe`,
    with the pipeline's VAD setting, or with none when `vad` is false).

    `one_core` pins CTranslate2 to one thread: the per-core reference on a CPU.
    """
    from faster_whisper import BatchedInferencePipeline, WhisperModel, decode_audio

    from opentr_pipeline.engine.transcription import model_location, resolve_batch_size

    device = plan.device_for(workers)
    if one_core:
        device = replace(device, cpu_threads=1)
    batch = resolve_batch_size(plan.batch_size, device)
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
    texts: dict[str, str] = {}

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
                              vad_filter=plan.vad_filter and vad, word_timestamps=True)
                if plan.vad_filter and not sequential:
                    segments, _ = BatchedInferencePipeline(model).transcribe(audio, batch_size=batch, **common)
                else:
                    segments, _ = model.transcribe(audio, **common)
                text = " ".join(segment.text for segment in segments)  # the generator does the work
                intervals.append((started, time.perf_counter()))
                texts[item.path.name] = text
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
        configuration=(RAW_ONE_CORE if one_core else RAW if not sequential
                       else RAW_SEQUENTIAL if vad else RAW_SEQUENTIAL_NO_VAD), workers=workers,
        files=len(corpus), wer=wer_by_file(corpus, texts),
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


PLAIN_SCRIPT = Path(__file__).with_name("plain_script.py")


def plain_command(corpus: list[CorpusFile], plan: BenchPlan, workers: int, sequential: bool = False,
                  vad: bool = True, batch: int | None = None, beam: int | None = None) -> Measurement:
    """The same decoding as `raw_faster_whisper`, as the whole command a user runs on a pile
    (plain_script.py): timed from the process's start to its exit, imports and model load in.
    `batch`, `beam`: another batch or beam than the pipeline's (faster-whisper's own defaults, say)."""
    from opentr_pipeline.engine.transcription import model_location

    device = plan.device_for(workers)
    with tempfile.TemporaryDirectory(prefix="opentr-plain-") as folder:
        out = Path(folder) / "texts.json"
        command = [sys.executable, str(PLAIN_SCRIPT), *(str(c.path) for c in corpus), "--model", model_location(plan.model),
                   "--device", device.kind, "--device-index", str(device.index if device.kind == "cuda" else 0),
                   "--compute-type", plan.compute_type, "--cpu-threads", str(device.cpu_threads),
                   "--workers", str(workers), "--beam-size", str(beam or plan.beam_size), "--batch-size", str(batch or plan.batch_for(workers)),
                   "--out", str(out), *(["--language", plan.language] if plan.language else []),
                   *(["--sequential"] if sequential or not plan.vad_filter else []),
                   *([] if vad and plan.vad_filter else ["--no-vad"])]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise BenchError(f"plain_script.py failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        by_path = json.loads(out.read_text())
    texts = {Path(path).name: text for path, text in by_path.items()}
    if len(texts) != len(corpus):
        raise BenchError(f"plain_script.py transcribed {len(texts)} of {len(corpus)} files")
    kind = RAW_SEQUENTIAL if sequential and vad else RAW_SEQUENTIAL_NO_VAD if sequential else RAW
    label = kind.replace("(transcription span)", "(whole command)")
    if batch is not None:
        label = label.replace("batched", f"batched at batch {batch}")
    if beam is not None:
        label = label.replace("(whole command)", f"at beam {beam} (whole command)")
    return Measurement(
        configuration=label, workers=workers, files=len(corpus),
        wer=wer_by_file(corpus, texts), audio_s=round(sum(c.duration_s for c in corpus), 3), wall_s=round(wall, 3),
        includes="the script's process from start to exit: imports, model load, every file's decoding and transcription",
        details={"cpu_threads_per_worker": device.cpu_threads, "num_workers": workers})
