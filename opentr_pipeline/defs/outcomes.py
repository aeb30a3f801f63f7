"""How a multi-file step ends: good files are written and kept, bad ones are named.

Dagster fails every partition of a step that raises (dagster-io/dagster#17836), so a step
writes each good file's output the moment it is done, records each bad file's reason under
`failures/`, and only then raises one error naming them all. The rerun sensor (and `opentr
run`) then runs the others again; their finished outputs are reused, so only the bad files
stay failed.

A file being worked on has an `inflight/<key>.json` claim naming the run (claims.py); it is
removed when the file is done either way. One left behind means the run's process died with
that file in hand: the rerun plan counts it as a suspect (reruns.py). How a failure is judged
(its reason, permanent or not) is the engine's: engine/failures.py.
"""

from __future__ import annotations

import dagster as dg

from opentr_pipeline.defs.claims import now
from opentr_pipeline.engine.failures import FileFailure
from opentr_pipeline.intake.keys import key_path
from opentr_pipeline.intake.uploads import same_version
from opentr_pipeline.storage import Storage


def failure_path(asset: str, key: str) -> str:
    return key_path(f"failures/{asset}", key)


def record_success(store: Storage, asset: str, key: str) -> None:
    store.delete(failure_path(asset, key))


def record_failure(store: Storage, asset: str, key: str, failure: FileFailure, run_id: str,
                   version: list | None = None) -> None:
    store.write_json(failure_path(asset, key), {
        "partition_key": key, "asset": asset, "reason": failure.reason,
        "permanent": failure.permanent, "run_id": run_id, "at": now(),
        "source_version": version,  # a permanent failure holds for this version of the file only
    })


def kept_verdict(store: Storage, asset: str, key: str, version: list | None) -> FileFailure | None:
    """A permanent failure of `asset` recorded for this very version of the file: trying it again
    would fail the same way (or kill its run again), so it is not tried until the file changes."""
    record = store.read_json_or_none(failure_path(asset, key))
    if record and record["permanent"] and version and same_version(record.get("source_version"), version):
        return FileFailure(record["reason"], True)
    return None


def finish_batch(context: dg.AssetExecutionContext, store: Storage, asset: str,
                 failures: dict[str, FileFailure], total: int, versions: dict[str, list] | None = None) -> None:
    for key, failure in failures.items():
        try:
            record_failure(store, asset, key, failure, context.run_id, (versions or {}).get(key))
        except OSError as error:  # a full disk: the reason is still in the log and on the partition
            context.log.warning(f"{key}: its failure record could not be written ({error})")
        context.log.error(f"{key}: {failure.reason}")
        # The partition's own page in the UI shows this: the reason where a person looks first.
        context.log_event(dg.AssetObservation(
            asset_key=context.asset_key, partition=key, description=failure.reason,
            metadata={"failed": failure.reason, "permanent": failure.permanent,
                      "what_next": "fixed only by a new version of the file" if failure.permanent
                      else "run again automatically (rerun sensor, or the next opentr run)"}))
    if failures:
        listing = "\n".join(f"- {key}: {failure.reason}" for key, failure in failures.items())
        raise dg.Failure(
            description=f"{len(failures)} of {total} file(s) failed in {asset}; "
                        f"the others were written and are run again without them:\n{listing}",
            metadata={"failed_keys": dg.MetadataValue.json(sorted(failures))},
            allow_retries=False,
        )
