"""One file, one transcription at a time: the `inflight/<key>.json` record is a claim.

A run claims each file it is about to transcribe (or probe) by creating the record, an
exclusive create (a hard link locally, a conditional PUT on S3), so of two commands, sensors or
backfills racing for one file exactly one does the work; the other waits for it and takes its
transcript. A claim whose holder is gone (its run finished or failed, or its process on this
host died) is stale and taken over. The claim says whether the file is only planned or already
in hand ("started"): only a started file is a suspect when its run's process dies (reruns.py).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from opentr_pipeline.intake.keys import key_path
from opentr_pipeline.storage import Storage

# A claim from another host whose run this instance does not know (another DAGSTER_HOME on one
# bucket) is trusted this long: the broker's redelivery bound (OPENTR_VISIBILITY_TIMEOUT_S).
FOREIGN_CLAIM_TRUSTED_S = 6 * 3600
log = logging.getLogger("opentr")
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def in_flight_path(key: str) -> str:
    return key_path("inflight", key)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _started_after(pid: int, timestamp: float) -> bool:
    """Whether the process now holding `pid` began after `timestamp` (the pid was reused)."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        booted = next(float(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    return booted + ticks / os.sysconf("SC_CLK_TCK") > timestamp + 1.0


def process_is_gone(pid: int, since: float) -> bool:
    """Dead, a zombie, or a different process that got the same pid later."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("Z", "X") or _started_after(pid, since)


def _record(asset: str, key: str, run_id: str, state: str) -> dict:
    return {"partition_key": key, "asset": asset, "run_id": run_id, "state": state, "at": now(),
            "since": time.time(), "host": socket.gethostname(), "pid": os.getpid()}


def holder_is_gone(holder: dict, instance: dg.DagsterInstance | None) -> bool:
    run = instance.get_run_by_id(holder["run_id"]) if instance is not None else None
    if run is not None and run.status in FINISHED:
        return True  # a finished run holds nothing; its record was left by a crash
    if holder.get("host") == socket.gethostname() and "pid" in holder:
        return process_is_gone(int(holder["pid"]), float(holder.get("since", 0.0)))
    if run is None:
        return time.time() - float(holder.get("since", 0.0)) > FOREIGN_CLAIM_TRUSTED_S
    return False  # a run in progress on another host


def claim(store: Storage, instance: dg.DagsterInstance | None, asset: str, key: str, run_id: str,
          state: str = "claimed") -> dict | None:
    """Take `key` for this run. None: it is ours now. Otherwise the live holder's record."""
    path = in_flight_path(key)
    holder: dict | None = None
    for _ in range(5):
        if store.create_json(path, _record(asset, key, run_id, state)):
            return None
        holder = store.read_json_or_none(path)
        if holder is None:
            if store.exists(path):  # damaged (records.py): nobody's claim, so it goes
                store.delete(path)
            continue  # released between the two calls
        if holder.get("run_id") == run_id:
            if state == "started":
                mark_started(store, asset, key, run_id)
            return None
        if not holder_is_gone(holder, instance):
            return holder
        # Stale: removed only if it is still the same record (another taker may have been faster).
        if store.read_json_or_none(path) == holder:
            store.delete(path)
    return holder


def mark_started(store: Storage, asset: str, key: str, run_id: str) -> None:
    """The claimed file is in a worker's hands now: a suspect if this run's process dies."""
    store.write_json(in_flight_path(key), _record(asset, key, run_id, "started"))


def release(store: Storage, key: str, run_id: str) -> None:
    """Done with the file, either way; another run's claim is left alone."""
    record = store.read_json_or_none(in_flight_path(key))
    if record is not None and record.get("run_id") == run_id:
        store.delete(in_flight_path(key))


def was_in_hand(record: dict) -> bool:
    return record.get("state", "started") == "started"  # records from before claims were started


def wait_for_holders(context: dg.AssetExecutionContext, store: Storage, held: dict[str, dict],
                     poll_s: float = 1.0) -> list[str]:
    """Wait until each held file is released by its holder (or the holder is gone); return them."""
    for key, holder in held.items():
        message = (f"{key}: already being worked on by run {holder['run_id'][:8]} "
                   f"({holder.get('host')}, pid {holder.get('pid')}); this run takes its result")
        context.log.info(message)
        log.info(message)
    waiting = dict(held)
    while waiting:
        time.sleep(poll_s)
        for key in list(waiting):
            holder = store.read_json_or_none(in_flight_path(key))
            if holder is None or holder.get("run_id") != waiting[key]["run_id"] or holder_is_gone(holder, context.instance):
                del waiting[key]
    return list(held)
