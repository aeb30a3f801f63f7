"""The search index, kept as each file is done: its speaker turns replace what the index held for
it (outputs/search.py). A file that cannot be indexed keeps every other output and its
neighbours' entries: it is recorded as failed with the reason (`failures/search/`), and the
`every_file_is_findable` check names it; `opentr search --rebuild` makes the whole index again."""

import logging

import dagster as dg

from opentr_pipeline.defs.assets.speakers import speakers
from opentr_pipeline.defs.assets.transcripts import transcript
from opentr_pipeline.defs.outcomes import record_failure, record_success
from opentr_pipeline.defs.partitions import media_files
from opentr_pipeline.defs.resources import MediaStore
from opentr_pipeline.engine.failures import FileFailure
from opentr_pipeline.intake.keys import key_path

log = logging.getLogger("opentr")


@dg.asset(
    partitions_def=media_files,
    deps=[transcript, speakers],
    backfill_policy=dg.BackfillPolicy.multi_run(16),
    code_version="search-2",  # 2: the index file's second layout (outputs/search_sqlite.py)
    group_name="transcription",
    kinds={"sqlite", "postgres"},
)
def search_index(context: dg.AssetExecutionContext, media: MediaStore) -> None:
    """Every file's speaker turns in the full-text index (`opentr search`): what was said, who
    said it, when, in which language."""
    store = media.outputs()
    index = media.search()
    for key in context.partition_keys:
        doc = store.read_json_or_none(key_path("transcripts", key))
        if doc is None:
            context.add_asset_metadata({"turns": 0, "indexed": "no transcript yet"}, partition_key=key)
            continue
        try:
            turns = index.index(doc, media.upload_uri)
        except Exception as error:  # this file's entry only: its words, subtitles and neighbours stay
            failure = FileFailure(f"{key}: could not be indexed for search: {type(error).__name__}: {error}", False)
            record_failure(store, "search", key, failure, context.run_id)
            context.log.warning(failure.reason)
            log.warning(failure.reason)
            context.add_asset_metadata({"indexed": f"failed: {error}"}, partition_key=key)
            continue
        record_success(store, "search", key)
        context.add_asset_metadata({
            "turns": turns if turns is not None else "unchanged",
            "indexed": "yes" if turns is not None else "already, this version",
            "index": index.where,
        }, partition_key=key)


@dg.asset_check(asset=search_index, blocking=False)
def every_file_is_findable(context: dg.AssetCheckExecutionContext, media: MediaStore) -> dg.AssetCheckResult:
    """No file failed to be indexed (each such file keeps its other outputs; the reasons are listed)."""
    failed = {record["partition_key"]: record["reason"] for record in media.outputs().list_json("failures/search")}
    return dg.AssetCheckResult(
        passed=not failed,
        metadata={"failed": dg.MetadataValue.json(failed), "files_failed": len(failed)},
        description="every transcribed file is in the search index" if not failed
        else f"{len(failed)} file(s) not findable: " + "; ".join(failed.values())[:500],
    )
