from collections.abc import Sequence

import dagster as dg

from opentr_pipeline.defs.names import PARTITIONS, RANGE_END, RANGE_START

# One partition per media file; keys come from opentr_pipeline.intake.keys.
media_files = dg.DynamicPartitionsDefinition(name=PARTITIONS)


def contiguous_chunks(order: Sequence[str], pending: set[str], size: int) -> list[list[str]]:
    """A run covers a range of partitions, so split the pending keys into unbroken stretches
    of at most `size`, in partition order."""
    chunks: list[list[str]] = []
    current: list[str] = []
    for key in order:
        if key in pending and len(current) < size:
            current.append(key)
            continue
        if current:
            chunks.append(current)
        current = [key] if key in pending else []
    if current:
        chunks.append(current)
    return chunks


def keys_of_run(tags: dict[str, str], order: Sequence[str]) -> list[str]:
    """The partition keys a run took: its single partition, or its range in partition order."""
    if "dagster/partition" in tags:
        return [tags["dagster/partition"]]
    start, end = tags.get(RANGE_START), tags.get(RANGE_END)
    if start not in order or end not in order:
        return []
    first, last = order.index(start), order.index(end)
    return list(order[first : last + 1])


def run_request(keys: Sequence[str], run_key: str, tags: dict[str, str], **options) -> dg.RunRequest:
    """A run over one partition, or over a stretch of them named by Dagster's range tags."""
    if len(keys) == 1:
        return dg.RunRequest(run_key=run_key, partition_key=keys[0], tags=tags, **options)
    return dg.RunRequest(run_key=run_key, tags={**tags, RANGE_START: keys[0], RANGE_END: keys[-1]}, **options)
