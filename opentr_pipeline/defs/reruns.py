"""Every file counts: after a transcription run fails, its files that can still succeed run again.

A run fails for three kinds of reasons, and each file's fate is decided on its own:

- some of its files are bad (failure records marked permanent): the others run again without them;
  their finished outputs are reused, so this costs a run's start, not the work again;
- a transient error (storage down past its retries, a file changed while read): run again;
- its process died (OOM killer, SIGKILL, reboot): run monitoring marks the run failed (see
  launcher.py), and the files it had in hand (`inflight/` records naming the run) are suspects.
  A suspect runs again alone in a run of its own, so if it kills that run too, it takes no
  neighbour with it; a file that has killed its run POISON_AFTER times is failed for good, named.

Each file gets at most `max_attempts` runs (OPENTR_MAX_ATTEMPTS), so this always ends.
`plan_rerun` decides (pure); `rerun_unfinished` reads and writes the records; the sensor and
`opentr run` both use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import dagster as dg

from opentr_pipeline.defs.claims import in_flight_path, process_is_gone, was_in_hand
from opentr_pipeline.defs.names import ATTEMPT, LAUNCHED_BY, PARTITIONS, PIPELINE_ASSETS, RERUN_OF, RUN_PID
from opentr_pipeline.defs.outcomes import failure_path, record_failure
from opentr_pipeline.defs.partitions import contiguous_chunks, keys_of_run
from opentr_pipeline.engine.failures import FileFailure
from opentr_pipeline.intake.keys import key_path
from opentr_pipeline.storage import Storage

POISON_AFTER = 2  # deaths of a run with the file in hand, the last time alone in its run


@dataclass(frozen=True)
class Rerun:
    """One run to launch again: the rerun sensor makes it a RunRequest, `opentr run` runs it."""

    keys: list[str]
    tags: dict[str, str]
    run_key: str


@dataclass
class RerunPlan:
    chunks: list[list[str]] = field(default_factory=list)  # runs to launch; a suspect is alone in one
    crashes: dict[str, int] = field(default_factory=dict)  # suspect -> times its run has died with it
    poison: list[str] = field(default_factory=list)  # failed for good: it kills its run
    given_up: list[str] = field(default_factory=list)  # out of attempts


def plan_rerun(run_keys: Sequence[str], order: Sequence[str], permanent: set[str], in_flight: set[str],
               crashes: dict[str, int], attempt: int, max_attempts: int, files_per_run: int) -> RerunPlan:
    """Which of a failed run's files run again, and how (no I/O)."""
    plan = RerunPlan()
    remaining = [key for key in run_keys if key not in permanent]
    for key in remaining:
        if key in in_flight:
            plan.crashes[key] = crashes.get(key, 0) + 1
            if plan.crashes[key] >= POISON_AFTER:
                plan.poison.append(key)
    remaining = [key for key in remaining if key not in plan.poison]
    if attempt >= max_attempts:
        plan.given_up = remaining
        return plan
    suspects = [key for key in remaining if key in in_flight]
    plan.chunks = [[key] for key in suspects]
    plan.chunks += contiguous_chunks(order, set(remaining) - set(suspects), files_per_run)
    return plan


def rerun_unfinished(instance: dg.DagsterInstance, store: Storage, run: dg.DagsterRun,
                     max_attempts: int, files_per_run: int) -> list[Rerun]:
    """Plan the reruns of one failed run, record poison and given-up files, return the reruns."""
    order = instance.get_dynamic_partitions(PARTITIONS)
    run_keys = keys_of_run(run.tags, order)
    if not run_keys:
        return []
    permanent: set[str] = set()
    for key in run_keys:
        for asset in PIPELINE_ASSETS:
            record = store.read_json_or_none(failure_path(asset, key))
            if record and record.get("run_id") == run.run_id and record.get("permanent"):
                permanent.add(key)
    in_flight, claimed = {}, []  # in hand when the run ended, or only claimed for later
    for key in run_keys:
        record = store.read_json_or_none(in_flight_path(key))
        if record and record.get("run_id") == run.run_id:
            if was_in_hand(record):
                in_flight[key] = record
            else:
                claimed.append(key)
    crashes = {key: (store.read_json_or_none(crash_path(key)) or {}).get("count", 0) for key in in_flight}
    attempt = int(run.tags.get(ATTEMPT, "1"))
    plan = plan_rerun(run_keys, order, permanent, set(in_flight), crashes, attempt, max_attempts, files_per_run)

    for key, count in plan.crashes.items():
        store.write_json(crash_path(key), {"partition_key": key, "count": count, "last_run_id": run.run_id})
    for key in plan.poison:  # recorded for this version of the file: every path leaves it until it changes
        record_failure(store, in_flight[key].get("asset", "transcript"), key, FileFailure(
            f"{key}: its run's process died {plan.crashes[key]} times while it was being processed "
            f"(the last time alone in its run), so it is not tried again (a poison file)", True), run.run_id,
            version_of_record(store, key))
    for key in plan.given_up:
        if key in in_flight:
            record_failure(store, in_flight[key].get("asset", "transcript"), key, FileFailure(
                f"{key}: its run's process died with it in hand; {attempt} attempt(s) used "
                f"(OPENTR_MAX_ATTEMPTS={max_attempts})", False), run.run_id)
    for key in [*in_flight, *claimed]:
        store.delete(in_flight_path(key))

    tags = {LAUNCHED_BY: "rerun", RERUN_OF: run.run_id, ATTEMPT: str(attempt + 1)}
    return [Rerun(chunk, tags, f"rerun-{run.run_id}-{number}") for number, chunk in enumerate(plan.chunks)]


def version_of_record(store: Storage, key: str) -> list | None:
    """The version of the file last probed, or else last listed ([size, mtime, change])."""
    probed = store.read_json_or_none(key_path("media", key))
    if probed and probed.get("source_version"):
        return list(probed["source_version"])
    source = store.read_json_or_none(key_path("sources", key))
    return [source.get("size"), source.get("mtime"), source.get("change")] if source else None


def crash_path(key: str) -> str:
    return key_path("crashes", key)


# --- runs whose process is gone ---------------------------------------------------------------


def run_process(instance: dg.DagsterInstance, run: dg.DagsterRun) -> tuple[int, float] | None:
    """The pid of the process executing a run and when it was recorded, if this host knows it:
    `opentr run` tags its in-process runs; a launched run logs "Started process for run"."""
    if RUN_PID in run.tags:
        record = instance.get_run_record_by_id(run.run_id)
        started = (record.start_time or record.create_timestamp.timestamp()) if record else 0.0
        return int(run.tags[RUN_PID]), float(started)
    for entry in reversed(instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)):
        data = entry.dagster_event.engine_event_data if entry.dagster_event else None
        pid = data.metadata.get("pid") if data is not None else None  # EngineEventData.in_process
        if pid is not None and "Started process for run" in entry.message:
            return int(pid.value), entry.timestamp
    return None


def dead_run_reason(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str | None:
    found = run_process(instance, run)
    if found and process_is_gone(*found):
        return f"the process executing this run (pid {found[0]}) is gone: killed, out of memory or rebooted"
    return None


def fail_dead_run(instance: dg.DagsterInstance, run: dg.DagsterRun, reason: str) -> None:
    """What run monitoring does for a launched run, for an `opentr run` child that died."""
    instance.report_run_failed(run, reason)
    instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
