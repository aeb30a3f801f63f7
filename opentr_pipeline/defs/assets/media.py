import logging

import dagster as dg

from opentr_pipeline.defs.claims import claim, release
from opentr_pipeline.defs.names import RETRY_FAILED
from opentr_pipeline.defs.outcomes import finish_batch, kept_verdict, record_success
from opentr_pipeline.defs.partitions import media_files
from opentr_pipeline.defs.resources import MediaStore
from opentr_pipeline.engine.failures import FileFailure, failure_of
from opentr_pipeline.engine.isolation import probe_isolated
from opentr_pipeline.engine.media import check_size
from opentr_pipeline.intake.keys import key_path
from opentr_pipeline.intake.settled import wait_until_whole
from opentr_pipeline.intake.uploads import source_uri

log = logging.getLogger("opentr")


@dg.asset(
    partitions_def=media_files,
    backfill_policy=dg.BackfillPolicy.multi_run(16),
    code_version="probe-1",
    group_name="transcription",
    kinds={"python", "pyav"},
)
def media_file(context: dg.AssetExecutionContext, media: MediaStore) -> None:
    """The uploaded file, probed: container, codecs, duration, channels, size, SHA-256."""
    store = media.outputs()
    failures: dict[str, FileFailure] = {}
    versions: dict[str, list] = {}
    retry = context.run.tags.get(RETRY_FAILED, "").lower() == "true"
    for key in context.partition_keys:
        # Probing twice is harmless (the same record), so a file another run holds is probed
        # anyway; the claim is what names this run if its process dies with the file in hand.
        claim(store, context.instance, "media_file", key, context.run_id, state="started")
        uri = key
        try:
            uri = source_uri(store, media.upload_uri, key)
            if "://" not in uri:  # an object store lists only whole objects
                wait_until_whole(uri, media.settle_wait_s, lambda note: (context.log.info(note), log.info(note)))
            version = versions[key] = store.version_of(uri)  # the transcript is recorded only if this still holds
            if not retry and (verdict := kept_verdict(store, "media_file", key, version)):
                failures[key] = verdict  # never opened again: it may be what crashes decoders
                context.log.info(f"{key}: failed for good before and unchanged since; not probed again "
                                 f"(run tag {RETRY_FAILED}=true, or opentr run --retry-failed, tries it)")
                release(store, key, context.run_id)
                continue
            check_size(uri, version[0], media.max_file_bytes)  # before any download
            with store.local_copy(uri) as path:
                info = probe_isolated(path, name=uri, max_bytes=media.max_file_bytes,
                                      max_duration_s=media.max_duration_s, limits=media.decode_limits())
            store.write_json(key_path("media", key),
                             {"partition_key": key, "source_uri": uri, "source_version": version, **info.to_dict()})
            record_success(store, "media_file", key)
        except Exception as error:
            failures[key] = failure_of(error, uri)
            release(store, key, context.run_id)
            continue
        release(store, key, context.run_id)
        context.add_asset_metadata({
            "source_uri": uri,
            "duration_s": info.duration_s,
            "container": info.container,
            "audio_codec": info.audio_codec,
            "video_codec": info.video_codec or "",
            "channels": info.channels,
            "sample_rate": info.sample_rate,
            "size_bytes": info.size_bytes,
            "sha256": info.sha256,
            "notes": "; ".join(info.notes),  # what the file says wrongly of itself (a stale WAV length)
        }, partition_key=key)
    finish_batch(context, store, "media_file", failures, len(context.partition_keys), versions)
