"""`opentr run`: every new upload through the pipeline once, in runs the UI shows as its own.

It records everything in the Dagster instance at DAGSTER_HOME, so its runs, materializations and
failures show in the UI exactly as if launched from there. Runs go to a pool of processes (each
keeps its model between runs); a failed run's unfinished files run again, a bounded number of times.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from opentr_pipeline.cli.instance import prepare_instance, set_gpu_pool_limit
from opentr_pipeline.engine.local import die_with_parent
from opentr_pipeline.outputs.search import open_search
from opentr_pipeline.settings import Settings, SettingsError
from opentr_pipeline.storage import StorageFull

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
    from opentr_pipeline.defs.names import LAUNCHED_BY, RANGE_END, RANGE_START, RUN_PID, TRANSCRIBE_JOB

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
    # SIGKILL when this process dies: Dagster maps SIGTERM to KeyboardInterrupt in a run, the
    # pool's worker takes that as its run's result and then waits for ever for the next run.
    pool = ProcessPoolExecutor(at_once, mp_context=multiprocessing.get_context("spawn"),
                               initializer=die_with_parent, initargs=(os.getpid(), signal.SIGKILL))
    try:
        for (_, number, total, spec), done in [(job, pool.submit(execute_run, *job)) for job in jobs]:
            try:
                done.result()
            except BrokenProcessPool:  # killed (out of memory, say): its runs are rerun below
                print(f"run {number}/{total}: {len(spec.keys)} file(s) not finished: "
                      f"a process running the runs died", flush=True)
    except BaseException:  # Ctrl-C or SIGTERM: the children stop now, not after their runs
        for child in list(pool._processes.values()):
            child.kill()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def failure_reasons(store, keys: list[str]) -> dict[str, str]:
    from opentr_pipeline.defs.names import PIPELINE_ASSETS
    from opentr_pipeline.defs.outcomes import failure_path

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

    from opentr_pipeline.defs.names import INVOCATION
    from opentr_pipeline.defs.reruns import rerun_unfinished

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


def fail_dead_runs(instance) -> list:
    """`opentr run` runs are not watched by run monitoring: a killed one (this command's, or an
    earlier command's that was killed itself) is marked failed here and its pool slots freed.
    Returns the runs so failed."""
    import dagster as dg

    from opentr_pipeline.defs.names import RUN_PID
    from opentr_pipeline.defs.reruns import dead_run_reason, fail_dead_run

    failed = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        if RUN_PID in run.tags and (reason := dead_run_reason(instance, run)):
            fail_dead_run(instance, run, reason)
            failed.append(run)
    return failed


def count_earlier_deaths(settings: Settings, instance, store) -> None:
    """Runs of an earlier `opentr run` that died with it (a file that kills the process running
    it kills the command too, when the command ran that run itself): the files they had in hand
    are counted as suspects, as the rerun sensor does, so a file that kills every command that
    tries it becomes a poison file, named, not a file tried for ever. They are pending anyway, so
    no rerun is launched for them here."""
    from opentr_pipeline.defs.reruns import rerun_unfinished

    for run in fail_dead_runs(instance):
        rerun_unfinished(instance, store, run, settings.max_attempts, settings.files_per_run)


def changed_since_probed(store, uploads: list) -> list:
    """Known uploads whose file is not the version last probed: a replaced file is a new version.

    The probe record names the version it read; one from before it did is compared through the
    source record (size and mtime)."""
    from opentr_pipeline.intake.keys import key_path
    from opentr_pipeline.intake.uploads import same_version, source_path

    def changed(upload) -> bool:
        probed = store.read_json_or_none(key_path("media", upload.key))
        if probed is None:
            return False  # never probed: pending anyway
        if probed.get("source_version"):
            return not same_version(probed["source_version"], upload)
        return not same_version(store.read_json_or_none(source_path(upload.key)), upload)

    return those_where(changed, uploads)


def those_where(predicate, uploads: list) -> list:
    """The uploads for which `predicate` (a small storage read or two) holds, read side by side:
    on S3 each read is a round trip."""
    with ThreadPoolExecutor(16) as pool:
        return [upload for upload, holds in zip(uploads, pool.map(predicate, uploads)) if holds]


def failed_for_good(store, uploads: list) -> list:
    """Uploads that failed for good in any step (bad media, a poison file) and have not changed
    since: a run would fail them again, or be killed by them again, so `opentr run` leaves them
    (and can exit 0 with them there), and they never take a new file's place in a run."""
    from opentr_pipeline.defs.names import PIPELINE_ASSETS
    from opentr_pipeline.defs.outcomes import kept_verdict

    def unchanged_bad(upload) -> bool:
        return any(kept_verdict(store, asset, upload.key, upload.version) for asset in PIPELINE_ASSETS)

    return those_where(unchanged_bad, uploads)


def without_a_sound_transcript(store, keys: list[str]) -> list[str]:
    """Files marked done whose transcript record is missing or damaged (a disk that filled, a
    copy that stopped): done again, as if never done."""
    from opentr_pipeline.intake.keys import key_path

    return those_where(lambda key: store.read_json_or_none(key_path("transcripts", key)) is None, keys)


def add_partitions(instance, keys: list[str], attempts: int = 5) -> None:
    """Register new partitions; a second `opentr run` started at the same moment may register
    some of them between our read and our insert (a UNIQUE constraint), so read again and add
    only what is still missing."""
    from opentr_pipeline.defs.names import PARTITIONS

    for attempt in range(attempts):
        missing = [k for k in keys if k not in set(instance.get_dynamic_partitions(PARTITIONS))]
        if not missing:
            return
        try:
            instance.add_dynamic_partitions(PARTITIONS, missing)
            return
        except Exception as error:  # sqlalchemy's IntegrityError, without importing it here
            if "UNIQUE constraint" not in str(error) and "IntegrityError" not in type(error).__name__ or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def run_pipeline(settings: Settings, retranscribe: bool = False, retry_failed: bool = False) -> int:
    import uuid

    import dagster as dg

    from opentr_pipeline.defs.names import INVOCATION, PARTITIONS, REPORT_JOB, RETRANSCRIBE, RETRY_FAILED
    from opentr_pipeline.defs.partitions import contiguous_chunks
    from opentr_pipeline.engine.devices import describe_plan
    from opentr_pipeline.engine.transcription import check_model_loads
    from opentr_pipeline.intake.uploads import register_sources, scan_uploads
    from opentr_pipeline.storage import Storage

    defs, instance = pipeline_for(settings)
    gpu = defs.resources["gpu"]
    if settings.engine.resident:
        from opentr_pipeline.engine.broker import check_broker

        check_broker(settings.engine)
    else:  # a model that cannot load fails the command, not the files
        check_model_loads(settings.decoding, {device.kind for device in gpu.plan()})
    if "://" not in settings.upload_uri and not os.path.isdir(settings.upload_uri):
        raise SettingsError(f"UPLOAD_URI={settings.upload_uri!r}: no such folder; create it (mkdir -p) "
                            "or point UPLOAD_URI at the folder your recordings are in")
    set_gpu_pool_limit(instance, gpu.total_workers())
    print(f"device plan: {describe_plan(gpu.plan())}")
    print(f"model: {settings.decoding.whisper_model}; uploads: {settings.upload_uri}; storage: {settings.storage_uri}")

    store = Storage(settings.storage_uri)
    count_earlier_deaths(settings, instance, store)
    listing = scan_uploads(settings.upload_uri)
    uploads = listing.uploads
    for name in sorted(listing.partial + listing.not_media):
        print(f"skipped (not a media file name, or still uploading): {name!r}")
    for name, reason in sorted(listing.skipped.items()):
        print(f"skipped {name!r}: {reason}")
    known = set(instance.get_dynamic_partitions(PARTITIONS))
    new = [u for u in uploads if u.key not in known]
    changed = changed_since_probed(store, [u for u in uploads if u.key in known])
    register_sources(store, new + changed)
    if new:
        add_partitions(instance, [u.key for u in new])
    all_keys = list(instance.get_dynamic_partitions(PARTITIONS))
    done = instance.get_materialized_partitions(dg.AssetKey("subtitles")) - {u.key for u in changed}
    if retranscribe:  # every file in the upload area, afresh
        done -= {u.key for u in uploads}
    unsound = without_a_sound_transcript(store, sorted(done & {u.key for u in uploads}))
    for uri, reason in store.damaged.items():
        print(f"damaged record, read as missing: {uri}: {reason}")
    done -= set(unsound)
    pending = [k for k in all_keys if k not in done]
    bad = [] if retry_failed else failed_for_good(store, [u for u in uploads if u.key in set(pending)])
    pending = [k for k in pending if k not in {u.key for u in bad}]
    print(f"{len(uploads)} media file(s) in uploads, {len(new)} new, {len(changed)} changed since they were "
          f"done{f', {len(unsound)} with a missing or damaged transcript' if unsound else ''}; {len(pending)} to process")
    if bad:
        print(f"{len(bad)} file(s) failed for good before and have not changed, so not tried again "
              f"(opentr run --retry-failed tries them): {', '.join(u.relative_path for u in bad)}")

    started = time.perf_counter()
    invocation = uuid.uuid4().hex[:12]
    tags = {INVOCATION: invocation, **({RETRANSCRIBE: "true"} if retranscribe else {}),
            **({RETRY_FAILED: "true"} if retry_failed else {})}
    specs = [RunSpec(chunk, tags)
             for chunk in contiguous_chunks(all_keys, set(pending), settings.files_per_run)]
    at_once = settings.runs_at_once or runs_at_once(gpu.total_workers(), settings.files_per_run)
    handled: set[str] = set()
    full: StorageFull | None = None
    try:
        while specs:  # bounded: every rerun counts an attempt, at most OPENTR_MAX_ATTEMPTS per file
            execute_runs(settings, specs, at_once)
            specs = reruns_of_failed_runs(settings, instance, store, invocation, handled)
            if specs:
                print(f"again: {sum(len(s.keys) for s in specs)} unfinished file(s) in {len(specs)} run(s)")
    except StorageFull as error:  # no reruns into a full disk: say what is done and what is not
        full = error
    done = instance.get_materialized_partitions(dg.AssetKey("subtitles"))
    not_done = [k for k in pending if k not in done]
    reasons = failure_reasons(store, not_done)

    report_failed = None
    if full is None and (len(not_done) < len(pending) or not store.exists("reports/throughput.parquet")):
        print("updating throughput_report", flush=True)
        report = defs.resolve_job_def(REPORT_JOB).execute_in_process(
            instance=instance, run_config=QUIET_DAGSTER, raise_on_error=False
        )
        if not report.success:
            report_failed = report_failure(report)
    if full is not None:
        print(f"\nstopped: {full}")
        reasons = {key: reasons.get(key, f"not finished: {full}") for key in not_done}
    elapsed = time.perf_counter() - started
    print(f"\n{len(pending) - len(not_done)} of {len(pending)} file(s) done in {elapsed:.1f} s")
    print(f"transcripts: {store.uri('transcripts')}\nsubtitles:   {store.uri('subtitles')}")
    print(f"report:      {store.uri('reports/throughput.md')}")
    print(f"search:      opentr search WORDS (index {open_search(settings.search_uri, settings.storage_uri, meaning=False).where})")
    if report_failed:
        print(f"\nthe throughput report could not be updated (run {report_failed}); the report on disk "
              "is older than these transcripts")
    if not_done:
        print(f"\n{len(not_done)} file(s) failed:")
        for key in not_done:
            print(f"  {key}: {reasons.get(key, 'failed (see the run in the Dagster UI)')}")
        return 1
    return 1 if report_failed else 0


def report_failure(result) -> str:
    """The report run's id and the first error it met, in one line."""
    for event in result.all_events:
        if event.is_step_failure or event.is_failure:
            error = getattr(event.event_specific_data, "error", None)
            if error is not None:
                return f"{result.run_id[:8]}: {error.message.strip().splitlines()[-1]}"
    return f"{result.run_id[:8]}: see the run in the Dagster UI"
