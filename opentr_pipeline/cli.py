"""`opentr`: run the pipeline once over the upload area, or print the throughput report.

`opentr run` records everything in the Dagster instance at DAGSTER_HOME, so its runs,
materializations and failures show in the UI exactly as if launched from there.
"""

from __future__ import annotations

import argparse
import functools
import logging
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from opentr_pipeline.settings import PROJECT_ROOT, Settings, SettingsError

log = logging.getLogger("opentr")
PIPELINE_ASSETS = ("media_file", "transcript", "subtitles")
# Dagster's console logger repeats every failure with a stack trace; the run records them all
# in the instance, and `opentr run` prints one line per failed file at the end instead.
QUIET_DAGSTER = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def show_progress() -> None:
    """The per-file lines (`[3/16] talk.mp3: ... x realtime`) go to stdout, indented."""
    if log.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("  %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def prepare_instance(settings: Settings):
    """The instance at DAGSTER_HOME, created with the project's dagster.yaml on first use."""
    home = Path(settings.dagster_home)
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    import dagster as dg

    return dg.DagsterInstance.get()


def set_gpu_pool_limit(instance, workers: int) -> None:
    """The `gpu` pool's limit is the plan's total workers; the UI's concurrency page shows it."""
    instance.event_log_storage.set_concurrency_slots("gpu", workers)


def run_queue_advice(instance, workers: int) -> str | None:
    """The daemon starts at most max_concurrent_runs runs; single-file runs need workers + 1
    (the report run too) to fill every worker. Said at start-up rather than changed behind the
    user's back: each run is a process with a model of its own."""
    limit = instance.get_concurrency_config().run_queue_config.max_concurrent_runs
    if limit < 0 or limit > workers:
        return None
    return (f"note: the run queue starts {limit} run(s) at a time, so runs holding fewer files than "
            f"workers can leave some of the {workers} workers idle; set concurrency.runs."
            f"max_concurrent_runs to {workers + 1} or more in {instance.root_directory}/dagster.yaml")


def contiguous_chunks(all_keys: list[str], pending: set[str], size: int) -> list[list[str]]:
    """Runs cover a range of partitions, so split the pending keys into unbroken stretches."""
    chunks: list[list[str]] = []
    current: list[str] = []
    for key in all_keys:
        if key in pending and len(current) < size:
            current.append(key)
            continue
        if current:
            chunks.append(current)
        current = [key] if key in pending else []
    if current:
        chunks.append(current)
    return chunks


def runs_at_once(workers: int, files_per_run: int) -> int:
    """Enough runs to give every worker a file, plus one: while a run probes its files or
    finishes its last ones, the next run's threads already wait for the free workers."""
    return -(-workers // files_per_run) + 1


@functools.cache
def pipeline_for(settings: Settings):
    """This process's definitions and instance, made once: `opentr run` and each child process
    running its runs share them from run to run (the model cache lives in this process)."""
    from opentr_pipeline.definitions import build_defs

    instance = prepare_instance(settings)  # sets DAGSTER_HOME first
    return build_defs(settings), instance


def execute_run(settings: Settings, number: int, total: int, chunk: list[str]) -> None:
    """One run of `transcribe_media` over a stretch of partitions, recorded in the instance."""
    show_progress()
    defs, instance = pipeline_for(settings)
    label = chunk[0] if len(chunk) == 1 else f"{chunk[0]} ... {chunk[-1]}"
    result = defs.resolve_job_def("transcribe_media").execute_in_process(
        instance=instance,
        run_config=QUIET_DAGSTER,
        raise_on_error=False,
        tags={
            "dagster/asset_partition_range_start": chunk[0],
            "dagster/asset_partition_range_end": chunk[-1],
            "opentr/launched_by": "opentr run",
        },
    )
    print(f"run {number}/{total}: {len(chunk)} file(s) ({label}) "
          f"{'succeeded' if result.success else 'had failures'} (run {result.run_id[:8]})", flush=True)


def execute_runs(settings: Settings, chunks: list[list[str]], at_once: int) -> None:
    """One run per chunk; with several chunks, `at_once` runs side by side.

    Dagster's in-process execution is not thread-safe (two runs in two threads deadlock on its
    logging set-up), so side by side means child processes, each loading the model once for
    all the runs it takes. The device leases hold the worker limit across them, and no worker
    idles at one run's tail while the next run's files wait.
    """
    at_once = min(at_once, len(chunks))
    jobs = [(settings, number, len(chunks), chunk) for number, chunk in enumerate(chunks, start=1)]
    if at_once <= 1:
        for job in jobs:
            execute_run(*job)
        return
    print(f"{len(chunks)} runs, {at_once} at a time", flush=True)
    # Spawned, not forked: this process has already asked CUDA for its devices, and CUDA does
    # not work in a child forked after that. Each child pays its imports once (seconds).
    with ProcessPoolExecutor(at_once, mp_context=multiprocessing.get_context("spawn")) as pool:
        for (_, number, total, chunk), done in [(job, pool.submit(execute_run, *job)) for job in jobs]:
            try:
                done.result()
            except BrokenProcessPool as error:  # killed (out of memory, say): its files stay to do
                print(f"run {number}/{total}: {len(chunk)} file(s) not processed: "
                      f"the process running it died ({error})", flush=True)


def failure_reasons(store, keys: list[str]) -> dict[str, str]:
    from opentr_pipeline.assets.batch import failure_path

    reasons = {}
    for key in keys:
        for asset in PIPELINE_ASSETS:
            record = store.read_json_or_none(failure_path(asset, key))
            if record:
                reasons[key] = record["reason"]
                break
    return reasons


def run_pipeline(settings: Settings) -> int:
    import dagster as dg

    from opentr_pipeline.core.devices import describe_plan
    from opentr_pipeline.storage import Storage
    from opentr_pipeline.uploads import register_sources, scan_uploads

    defs, instance = pipeline_for(settings)
    gpu = defs.resources["gpu"]
    set_gpu_pool_limit(instance, gpu.total_workers())
    print(f"device plan: {describe_plan(gpu.plan())}")
    print(f"model: {settings.whisper_model}; uploads: {settings.upload_uri}; storage: {settings.storage_uri}")

    store = Storage(settings.storage_uri)
    listing = scan_uploads(settings.upload_uri)
    uploads = listing.uploads
    for name in sorted(listing.partial + listing.not_media):
        print(f"skipped (not a media file name, or still uploading): {name}")
    known = set(instance.get_dynamic_partitions("media_files"))
    new = [u for u in uploads if u.key not in known]
    register_sources(store, new)
    if new:
        instance.add_dynamic_partitions("media_files", [u.key for u in new])
    all_keys = list(instance.get_dynamic_partitions("media_files"))
    done = instance.get_materialized_partitions(dg.AssetKey("subtitles"))
    pending = [k for k in all_keys if k not in done]
    print(f"{len(uploads)} media file(s) in uploads, {len(new)} new; {len(pending)} to process")

    started = time.perf_counter()
    to_run, not_done, reasons = set(pending), list(pending), {}
    for attempt in range(2):
        if attempt:
            print(f"again without the failed files: {len(to_run)} file(s)")
        chunks = contiguous_chunks(all_keys, to_run, settings.files_per_run)
        execute_runs(settings, chunks,
                     settings.runs_at_once or runs_at_once(gpu.total_workers(), settings.files_per_run))
        done = instance.get_materialized_partitions(dg.AssetKey("subtitles"))
        not_done = [k for k in pending if k not in done]
        reasons = failure_reasons(store, not_done)
        # Good files that only shared a run with a bad one: run them again without it.
        to_run = {k for k in not_done if k not in reasons}
        if not to_run:
            break

    if len(not_done) < len(pending) or not store.exists("reports/throughput.parquet"):
        print("updating throughput_report", flush=True)
        defs.resolve_job_def("throughput_report_job").execute_in_process(
            instance=instance, run_config=QUIET_DAGSTER, raise_on_error=False
        )
    elapsed = time.perf_counter() - started
    print(f"\n{len(pending) - len(not_done)} of {len(pending)} file(s) done in {elapsed:.1f} s")
    print(f"transcripts: {store.uri('transcripts')}\nsubtitles:   {store.uri('subtitles')}")
    print(f"report:      {store.uri('reports/throughput.md')}")
    if not_done:
        print(f"\n{len(not_done)} file(s) failed:")
        for key in not_done:
            print(f"  {key}: {reasons.get(key, 'failed (see the run in the Dagster UI)')}")
        return 1
    return 0


def print_report(settings: Settings) -> int:
    from opentr_pipeline.core.throughput import markdown_summary, transcripts_frame
    from opentr_pipeline.definitions import build_defs
    from opentr_pipeline.storage import Storage

    gpu = build_defs(settings).resources["gpu"]
    frame = transcripts_frame(Storage(settings.storage_uri).list_json("transcripts"))
    print(markdown_summary(frame, {d.label: d.workers for d in gpu.plan()}))
    return 0


def start_dev(settings: Settings, extra_args: list[str]) -> int:
    """`dagster dev` on the project's instance, with the gpu pool limit set from the plan."""
    from opentr_pipeline.core.devices import describe_plan
    from opentr_pipeline.gpu import GpuExecutor

    instance = prepare_instance(settings)
    gpu = GpuExecutor.from_settings(settings)
    set_gpu_pool_limit(instance, gpu.total_workers())
    print(f"device plan: {describe_plan(gpu.plan())} (pool 'gpu' limit {gpu.total_workers()})")
    advice = run_queue_advice(instance, gpu.total_workers())
    if advice:
        print(advice)
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), *extra_args]
    print(f"DAGSTER_HOME={settings.dagster_home}\n$ {' '.join(command)}", flush=True)
    os.execv(command[0], command)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opentr", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="transcribe every new file under UPLOAD_URI, then the report")
    commands.add_parser("report", help="print the throughput summary")
    # No -h of its own: `opentr dev -h 0.0.0.0` is dagster dev's --host (and --help its help).
    commands.add_parser("dev", add_help=False,
                        help="the Dagster UI and daemon on this project's instance; "
                             "other options (-p 3001, -h 0.0.0.0) go to dagster dev")
    bench = commands.add_parser("bench", help="raw faster-whisper against the pipeline, 1 and N workers")
    from opentr_pipeline.bench import add_arguments as add_bench_arguments

    add_bench_arguments(bench)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "dev":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    show_progress()
    from dotenv import load_dotenv  # dagster dev reads .env too; the process environment wins

    load_dotenv(Path.cwd() / ".env", override=False)
    try:
        settings = Settings.from_env()
        if args.command == "run":
            return run_pipeline(settings)
        if args.command == "dev":
            return start_dev(settings, [a for a in extra if a != "--"])
        if args.command == "bench":
            from opentr_pipeline.bench import bench_command

            return bench_command(args, settings)
        return print_report(settings)
    except SettingsError as error:
        print(f"opentr: configuration error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
