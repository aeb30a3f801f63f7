"""`opentr bench`: plain faster-whisper against the pipeline end to end, in one run, speed and words.

No speed figure without its accuracy figure: every row carries the word error rate (mean and
worst file) of what it produced, on long recordings with known text and several speakers taking
turns (corpus.py), because that is where batched decoding drops words and single clips never
show it. One run measures, on one corpus, side by side:

- plain faster-whisper, the script a user would write: one `WhisperModel` loaded once with
  `num_workers` = N and the pipeline's thread split, N threads taking files from a queue, each
  decoding its file batched (a fresh `BatchedInferencePipeline`) or sequentially
  (`model.transcribe`), with the pipeline's beam, VAD and word timings;
- the pipeline: `opentr run` as a subprocess on fresh upload, storage and Dagster folders, with
  `GPU_SCALE_ENABLED=true GPU_SCALE_WORKERS=N`, the model in the run process or on a resident
  worker, timed as a whole command and, from the transcripts' `started_at`/`finished_at`, as a
  transcription span.

The yardstick for the pipeline is the fastest plain script whose worst-file WER is as good
(within 1.25x): a decoding that drops words is fast and useless. On a CPU it also measures plain
batched decoding on one thread, and prints each configuration's throughput against (cores used x
that one-core figure): near 1.0 means the workers scale with the cores.

Both "transcription span" figures are measured the same way: from the first transcription's
start to the last one's end. The model load and the first file's decoding fall outside it; the
decoding of every later file falls inside it (its worker decodes it while the others keep
transcribing), in plain and pipeline alike. "whole command" is everything `opentr run` does:
Python and Dagster start-up, probing, model load, subtitles and the throughput report.

Nothing here imports Dagster: the plain side must not pay for it, and the pipeline side runs in
its own process exactly as a person would start it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from corpus import fixtures_folder, speech_clips
from held_apart import CORPORA, build_named
from languages import english_ratio
from languages import table as language_table
from pipeline import pipeline_end_to_end
from plain import raw_faster_whisper
from plan import BenchError, Measurement, make_plan
from report import best_of, build_report, comparisons, format_table, machine_facts

from opentr_pipeline.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=2, help="N, compared with 1 (default 2)")
    parser.add_argument("--files", type=int, default=6, help="recordings in the corpus (default 6)")
    parser.add_argument("--seconds", type=float, default=240.0,
                        help="length of each recording, several speakers taking turns (default 240)")
    parser.add_argument("--corpus", choices=CORPORA, default="conversations",
                        help="corpus.py's conversations (default) or a split of the held-apart meetings (held_apart.py)")
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
    parser.add_argument("--languages", default="de,fr",
                        help="other languages, beside English, for the languages table (tiny.en alone, bundled-base "
                             "alone, the default), comma-separated espeak-ng codes; none: no languages table")
    parser.add_argument("--language-seconds", type=float, default=60.0, help="length of each recording of that table")
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
          f"beam {plan.beam_size}, batch {plan.batch_size}"
          f"{' (' + ', '.join(f'{n} worker(s): {plan.batch_for(n)}' for n in worker_counts) + ')' if plan.batch_size == 'auto' else ''}, "
          f"VAD {plan.vad_filter}; "
          f"load average {facts['load_average_at_start'][0]}; work folder {work_dir}", flush=True)
    try:
        clock = time.perf_counter()
        clips = speech_clips(fixtures_folder())
        corpus = build_named(args.corpus, clips, work_dir / "corpus", args.files, args.seconds)
        audio_s = sum(c.duration_s for c in corpus)
        print(f"corpus: {len(corpus)} distinct conversations, {audio_s:.1f} s of audio with reference text, "
              f"{len(clips)} clips in shuffled turns ({time.perf_counter() - clock:.1f} s to build)", flush=True)
        measurements: list[Measurement] = []
        for round_number in range(1, args.repeat + 1):
            label = f"[{round_number}/{args.repeat}] " if args.repeat > 1 else ""
            # Every other round runs in the opposite order, so neither side always goes first.
            plain = ("raw", "sequential", "sequential, no VAD")
            sides = {"in-process": (*plain, "pipeline", "speakers"), "resident": (*plain, "resident"),
                     "both": (*plain, "pipeline", "speakers", "resident")}[args.engine]
            steps = [(w, side) for w in worker_counts for side in sides]
            if plan.device == "cpu" and args.workers > 1:
                steps.insert(0, (1, "one core"))
            for workers, side in steps if round_number % 2 else steps[::-1]:
                if side in ("raw", "one core") or side.startswith("sequential"):
                    print(f"{label}plain faster-whisper, {side if side.startswith('sequential') else 'batched'}, "
                          f"{workers} worker(s){', 1 thread' if side == 'one core' else ''} ...", flush=True)
                    measurements.append(raw_faster_whisper(corpus, plan, workers, side == "one core",
                                                           sequential=side.startswith("sequential"),
                                                           vad=side != "sequential, no VAD"))
                    print(f"  {measurements[-1].x_realtime:.1f}x realtime, WER mean {measurements[-1].wer_mean:.3f}, "
                          f"worst {measurements[-1].wer_worst:.3f}", flush=True)
                    continue
                if side == "speakers":
                    print(f"{label}opentr run, GPU_SCALE_WORKERS={workers}, with speakers ...", flush=True)
                    measurements += pipeline_end_to_end(corpus, plan, workers, work_dir, speakers=True)
                    found = measurements[-1].details
                    print(f"  whole command {measurements[-1].x_realtime:.1f}x realtime, DER {found['der_mean']:.3f} "
                          f"mean ({found['der_worst']:.3f} worst), WDER {found['wder_mean']:.3f}, voices right "
                          f"{found['voices_right']}", flush=True)
                    continue
                print(f"{label}opentr run, GPU_SCALE_WORKERS={workers}"
                      f"{' on a resident worker' if side == 'resident' else ''} ...", flush=True)
                measurements += pipeline_end_to_end(corpus, plan, workers, work_dir, side == "resident")
                print(f"  span {measurements[-2].x_realtime:.1f}x, whole command {measurements[-1].x_realtime:.1f}x "
                      f"realtime, WER mean {measurements[-1].wer_mean:.3f}, worst {measurements[-1].wer_worst:.3f}; "
                      f"{measurements[-1].details['chunks_decoded_again']} chunk(s) decoded again", flush=True)
    finally:
        if own_dir and not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)

    languages = measure_languages(args, plan) if args.languages != "none" else []
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
    print("WER: word error rate against the recordings' reference text (mean, and the worst file); 'vs fastest")
    print("plain, same WER': against the fastest plain script whose worst-file WER is within 1.25x of the row's.")
    print("DER / WDER / voices right: the pipeline with speakers (the default; the other pipeline rows run without,")
    print("as the plain script finds none) against who truly speaks when: diarization error (0.25-s collar), the")
    print("share of words on the wrong speaker, and the files whose number of voices was found right.")
    if args.repeat > 1:
        print(f"best of {args.repeat} interleaved repetitions per row; every repetition is in the JSON.")
    for name, value in figures["ratio_to_cores_x_one_core"].items():
        print(f"per-core scaling  {name}: {value:.2f} of cores x one core")
    for target in figures["targets"]:
        print(f"{'PASS' if target['pass'] else 'MISS'}  {target['target']}: {target['value']:.3f}")
    facts["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average (1, 5, 15 min): {facts['load_average_at_start']} at start, "
          f"{facts['load_average_at_end']} at end, on {facts['cpu_count']} CPU(s)")
    if languages:
        print("\nLanguages (benchmarks/languages.py): each recording through the engine, one worker, models loaded;")
        print("language right: files whose language was detected right (switching: the share of speech put in the")
        print("right language); WER after a normalisation that keeps every alphabet.\n")
        print(language_table(languages))
    report = build_report(facts, plan, vars(args), corpus, [c.name for c in clips], measurements)
    if languages:
        report["languages"] = languages
        report["languages_english_ratio"] = round(english_ratio(languages), 3)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nfigures: {out}")
    return 0


def measure_languages(args: argparse.Namespace, plan) -> list[dict]:
    """tiny.en alone, bundled-base alone and the default on English, the languages asked and
    recordings that switch from English to them, side by side (benchmarks/languages.py)."""
    from languages import build, rows, run

    device = plan.device_for(1)
    print(f"languages: English, {args.languages}, {args.language_seconds:.0f} s each, through tiny.en alone, "
          "bundled-base alone and the default ...", flush=True)
    return rows(run(build(args.language_seconds, 1, args.languages.split(",")), device.cpu_threads, device))


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
