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
from dataclasses import dataclass
from pathlib import Path

from opentr_pipeline.core.devices import DeviceMemoryError
from opentr_pipeline.settings import PROJECT_ROOT, Settings, SettingsError

log = logging.getLogger("opentr")
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


def monitoring_advice(instance) -> str | None:
    """An instance made before run monitoring came (its dagster.yaml is kept as it was) would
    leave a killed run STARTED for ever: say so at start-up."""
    from opentr_pipeline.launcher import WatchedRunLauncher

    if instance.run_monitoring_enabled and isinstance(instance.run_launcher, WatchedRunLauncher):
        return None
    return (f"note: {instance.root_directory}/dagster.yaml does not watch run processes, so a killed "
            f"run would never be rerun; copy run_launcher and run_monitoring from {PROJECT_ROOT}/dagster.yaml")


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


@dataclass(frozen=True)
class RunSpec:
    """One run to make: its stretch of partitions and its tags (a rerun's attempt, say)."""

    keys: list[str]
    tags: dict[str, str]


def execute_run(settings: Settings, number: int, total: int, spec: RunSpec) -> None:
    """One run of the transcription job over a stretch of partitions, recorded in the instance.

    Tagged with this process's pid, so that if the process dies the run is seen to be dead."""
    from opentr_pipeline.names import LAUNCHED_BY, RANGE_END, RANGE_START, RUN_PID, TRANSCRIBE_JOB

    show_progress()
    defs, instance = pipeline_for(settings)
    chunk = spec.keys
    label = chunk[0] if len(chunk) == 1 else f"{chunk[0]} ... {chunk[-1]}"
    result = defs.resolve_job_def(TRANSCRIBE_JOB).execute_in_process(
        instance=instance,
        run_config=QUIET_DAGSTER,
        raise_on_error=False,
        tags={RANGE_START: chunk[0], RANGE_END: chunk[-1], LAUNCHED_BY: "opentr run",
              RUN_PID: str(os.getpid()), **spec.tags},
    )
    print(f"run {number}/{total}: {len(chunk)} file(s) ({label}) "
          f"{'succeeded' if result.success else 'had failures'} (run {result.run_id[:8]})", flush=True)


def execute_runs(settings: Settings, specs: list[RunSpec], at_once: int) -> None:
    """One run per spec; with several, `at_once` runs side by side.

    Dagster's in-process execution is not thread-safe (two runs in two threads deadlock on its
    logging set-up), so side by side means child processes, each loading the model once for
    all the runs it takes. The device leases hold the worker limit across them, and no worker
    idles at one run's tail while the next run's files wait.
    """
    at_once = min(at_once, len(specs))
    jobs = [(settings, number, len(specs), spec) for number, spec in enumerate(specs, start=1)]
    if at_once <= 1:
        for job in jobs:
            execute_run(*job)
        return
    print(f"{len(specs)} runs, {at_once} at a time", flush=True)
    # Spawned, not forked: this process has already asked CUDA for its devices, and CUDA does
    # not work in a child forked after that. Each child pays its imports once (seconds).
    with ProcessPoolExecutor(at_once, mp_context=multiprocessing.get_context("spawn")) as pool:
        for (_, number, total, spec), done in [(job, pool.submit(execute_run, *job)) for job in jobs]:
            try:
                done.result()
            except BrokenProcessPool:  # killed (out of memory, say): its runs are rerun below
                print(f"run {number}/{total}: {len(spec.keys)} file(s) not finished: "
                      f"a process running the runs died", flush=True)


def failure_reasons(store, keys: list[str]) -> dict[str, str]:
    from opentr_pipeline.assets.batch import failure_path
    from opentr_pipeline.names import PIPELINE_ASSETS

    reasons = {}
    for key in keys:
        for asset in PIPELINE_ASSETS:
            record = store.read_json_or_none(failure_path(asset, key))
            if record:
                reasons[key] = record["reason"]
                break
    return reasons


def reruns_of_failed_runs(settings: Settings, instance, store, invocation: str, handled: set[str]) -> list[RunSpec]:
    """The rerun sensor's decisions, taken here for this command's own failed runs: runs whose
    process died are marked failed first, as run monitoring does under `opentr dev`."""
    import dagster as dg

    from opentr_pipeline.names import INVOCATION
    from opentr_pipeline.reruns import rerun_unfinished

    fail_dead_runs(instance)
    specs = []
    failed = instance.get_runs(filters=dg.RunsFilter(tags={INVOCATION: invocation},
                                                     statuses=[dg.DagsterRunStatus.FAILURE]))
    for run in failed:
        if run.run_id in handled:
            continue
        handled.add(run.run_id)
        for rerun in rerun_unfinished(instance, store, run, settings.max_attempts, settings.files_per_run):
            specs.append(RunSpec(rerun.keys, {**rerun.tags, INVOCATION: invocation}))
    return specs


def fail_dead_runs(instance) -> None:
    """`opentr run` runs are not watched by run monitoring: a killed one (this command's, or an
    earlier command's that was killed itself) is marked failed here and its pool slots freed."""
    import dagster as dg

    from opentr_pipeline.names import RUN_PID
    from opentr_pipeline.reruns import dead_run_reason, fail_dead_run

    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        if RUN_PID in run.tags and (reason := dead_run_reason(instance, run)):
            fail_dead_run(instance, run, reason)


def run_pipeline(settings: Settings) -> int:
    import uuid

    import dagster as dg

    from opentr_pipeline.core.devices import DeviceMemoryError, describe_plan
    from opentr_pipeline.names import INVOCATION, PARTITIONS, REPORT_JOB
    from opentr_pipeline.partitions import contiguous_chunks
    from opentr_pipeline.storage import Storage
    from opentr_pipeline.uploads import register_sources, scan_uploads

    defs, instance = pipeline_for(settings)
    gpu = defs.resources["gpu"]
    set_gpu_pool_limit(instance, gpu.total_workers())
    print(f"device plan: {describe_plan(gpu.plan())}")
    print(f"model: {settings.decoding.whisper_model}; uploads: {settings.upload_uri}; storage: {settings.storage_uri}")

    store = Storage(settings.storage_uri)
    fail_dead_runs(instance)
    listing = scan_uploads(settings.upload_uri)
    uploads = listing.uploads
    for name in sorted(listing.partial + listing.not_media):
        print(f"skipped (not a media file name, or still uploading): {name!r}")
    for name, reason in sorted(listing.skipped.items()):
        print(f"skipped {name!r}: {reason}")
    known = set(instance.get_dynamic_partitions(PARTITIONS))
    new = [u for u in uploads if u.key not in known]
    register_sources(store, new)
    if new:
        instance.add_dynamic_partitions(PARTITIONS, [u.key for u in new])
    all_keys = list(instance.get_dynamic_partitions(PARTITIONS))
    done = instance.get_materialized_partitions(dg.AssetKey("subtitles"))
    pending = [k for k in all_keys if k not in done]
    print(f"{len(uploads)} media file(s) in uploads, {len(new)} new; {len(pending)} to process")

    started = time.perf_counter()
    invocation = uuid.uuid4().hex[:12]
    specs = [RunSpec(chunk, {INVOCATION: invocation})
             for chunk in contiguous_chunks(all_keys, set(pending), settings.files_per_run)]
    at_once = settings.runs_at_once or runs_at_once(gpu.total_workers(), settings.files_per_run)
    handled: set[str] = set()
    while specs:  # bounded: every rerun counts an attempt, at most OPENTR_MAX_ATTEMPTS per file
        execute_runs(settings, specs, at_once)
        specs = reruns_of_failed_runs(settings, instance, store, invocation, handled)
        if specs:
            print(f"again: {sum(len(s.keys) for s in specs)} unfinished file(s) in {len(specs)} run(s)")
    done = instance.get_materialized_partitions(dg.AssetKey("subtitles"))
    not_done = [k for k in pending if k not in done]
    reasons = failure_reasons(store, not_done)

    if len(not_done) < len(pending) or not store.exists("reports/throughput.parquet"):
        print("updating throughput_report", flush=True)
        defs.resolve_job_def(REPORT_JOB).execute_in_process(
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
    from opentr_pipeline.core.devices import DeviceMemoryError, describe_plan
    from opentr_pipeline.gpu import GpuExecutor

    instance = prepare_instance(settings)
    gpu = GpuExecutor.from_settings(settings)
    set_gpu_pool_limit(instance, gpu.total_workers())
    print(f"device plan: {describe_plan(gpu.plan())} (pool 'gpu' limit {gpu.total_workers()})")
    for advice in (run_queue_advice(instance, gpu.total_workers()), monitoring_advice(instance)):
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
    worker = commands.add_parser("worker", help="a resident transcription worker for one device "
                                 "(holds one model; needs OPENTR_BROKER_URL)")
    worker.add_argument("--device", help="cpu:N or cuda:N (default: the plan's first device)")
    worker.add_argument("--queues", help="comma-separated queues to take files from (default OPENTR_QUEUE)")
    worker.add_argument("--cpu-threads", type=int, help="CTranslate2 threads per slot (default: cores / slots)")
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
        if args.command == "worker":
            from opentr_pipeline.workers import serve

            serve(settings, args.device, args.queues.split(",") if args.queues else None, args.cpu_threads)
            return 0
        if args.command == "bench":
            from opentr_pipeline.bench import bench_command

            return bench_command(args, settings)
        return print_report(settings)
    except SettingsError as error:
        print(f"opentr: configuration error: {error}", file=sys.stderr)
        return 2
    except DeviceMemoryError as error:
        print(f"opentr: {error}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
