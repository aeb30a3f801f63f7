"""How a multi-file step ends: good files are written and kept, bad ones are named.

Dagster fails every partition of a step that raises, so a step first writes each good file's
output, records each bad file's reason under `failures/`, and only then raises one error naming
them all. `opentr run` (and a rerun of the good keys) then leaves exactly the bad ones failed.
"""

from __future__ import annotations

from datetime import datetime, timezone

import dagster as dg

from opentr_pipeline.core.keys import key_path
from opentr_pipeline.storage import Storage


def failure_path(asset: str, key: str) -> str:
    return key_path(f"failures/{asset}", key)


def record_success(store: Storage, asset: str, key: str) -> None:
    store.delete(failure_path(asset, key))


def finish_batch(context: dg.AssetExecutionContext, store: Storage, asset: str,
                 failures: dict[str, str], total: int) -> None:
    for key, reason in failures.items():
        store.write_json(failure_path(asset, key), {
            "partition_key": key, "asset": asset, "reason": reason,
            "run_id": context.run_id, "at": datetime.now(timezone.utc).isoformat(),
        })
        context.log.error(f"{key}: {reason}")
    if failures:
        listing = "\n".join(f"- {key}: {reason}" for key, reason in failures.items())
        raise dg.Failure(
            description=f"{len(failures)} of {total} file(s) failed in {asset}; "
                        f"the others were written:\n{listing}",
            metadata={"failed_keys": dg.MetadataValue.json(sorted(failures))},
            allow_retries=False,
        )


def describe_error(error: Exception, name: str) -> str:
    """A reason that names the file, whatever raised it."""
    message = str(error) or type(error).__name__
    return message if name in message else f"{name}: {message}"
