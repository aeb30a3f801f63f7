import dagster as dg

from opentr_pipeline.assets.batch import describe_error, finish_batch, record_success
from opentr_pipeline.core.keys import key_path
from opentr_pipeline.core.media import probe
from opentr_pipeline.partitions import media_files
from opentr_pipeline.resources import MediaStore
from opentr_pipeline.uploads import source_uri


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
    failures: dict[str, str] = {}
    for key in context.partition_keys:
        uri = source_uri(store, media.upload_uri, key)
        try:
            with store.local_copy(uri) as path:
                info = probe(path, name=uri)
        except Exception as error:
            failures[key] = describe_error(error, uri)
            continue
        store.write_json(key_path("media", key),
                         {"partition_key": key, "source_uri": uri, **info.to_dict()})
        record_success(store, "media_file", key)
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
        }, partition_key=key)
    finish_batch(context, store, "media_file", failures, len(context.partition_keys))
