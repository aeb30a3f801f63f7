import hashlib
import json
import logging
from contextlib import ExitStack

import dagster as dg

from opentr_pipeline.assets.batch import describe_error, finish_batch, record_success
from opentr_pipeline.assets.media import media_file
from opentr_pipeline.core.keys import key_path
from opentr_pipeline.gpu import FileToTranscribe, GpuExecutor
from opentr_pipeline.partitions import media_files
from opentr_pipeline.resources import MediaStore

log = logging.getLogger("opentr")


def settings_version(gpu: GpuExecutor) -> str:
    """What decides a transcript's content: changing any of it makes transcripts stale."""
    decisive = {
        "model": gpu.whisper_model, "compute_type": gpu.whisper_compute_type,
        "beam_size": gpu.beam_size, "vad_filter": gpu.vad_filter, "language": gpu.language,
        "batched": gpu.batch_size > 1, "format": 1,
    }
    return hashlib.sha1(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:12]


def _metadata(doc: dict) -> dict:
    return {
        "duration_s": doc["duration_s"],
        "x_realtime": doc["x_realtime"],
        "language": doc["language"],
        "words": doc["words"],
        "device": doc["device"],
        "worker": doc["worker"],
        "wall_s": doc["wall_s"],
        "reused_from": doc.get("reused_from") or "",
        "preview": dg.MetadataValue.text(doc["text"][:300]),
        "path": dg.MetadataValue.path(doc["uri"]),
    }


def sha256_index_path(sha256: str) -> str:
    return f"by_sha256/{sha256}.json"


def transcript_of_same_content(store, sha256: str, version: str, key: str) -> dict | None:
    """Another partition's transcript of the same bytes under the same settings, if any.

    `by_sha256/<sha>.json` names the partition that was last transcribed from those bytes, so
    this is one small read, not a scan; the transcript itself is checked before it is trusted.
    """
    entry = store.read_json_or_none(sha256_index_path(sha256))
    if not entry or entry["partition_key"] == key or entry.get("settings_version") != version:
        return None
    doc = store.read_json_or_none(key_path("transcripts", entry["partition_key"]))
    if doc and doc.get("sha256") == sha256 and doc.get("settings_version") == version and not doc.get("reused_from"):
        return doc
    return None


def write_reused(context: dg.AssetExecutionContext, store, key: str, probed: dict, original: dict) -> None:
    """A duplicate upload's transcript: a copy that names the partition whose work it reuses."""
    relative = key_path("transcripts", key)
    doc = {**original, "partition_key": key, "source_uri": probed["source_uri"],
           "uri": store.uri(relative), "reused_from": original["partition_key"]}
    store.write_json(relative, doc)
    record_success(store, "transcript", key)
    context.add_asset_metadata(_metadata(doc), partition_key=key)
    context.log.info(f"{key}: same content as {original['partition_key']}; its transcript reused")


@dg.asset(
    partitions_def=media_files,
    deps=[media_file],
    pool="gpu",
    backfill_policy=dg.BackfillPolicy.multi_run(16),
    code_version="transcribe-1",
    group_name="transcription",
    kinds={"python", "whisper"},
)
def transcript(context: dg.AssetExecutionContext, gpu: GpuExecutor, media: MediaStore) -> None:
    """faster-whisper text, segments and word timings per file, through the GPU executor."""
    store = media.outputs()
    version = settings_version(gpu)
    keys = context.partition_keys
    failures: dict[str, str] = {}
    probes: dict[str, dict] = {}
    first_with_sha: dict[str, str] = {}  # sha256 -> the key in this run that gets transcribed
    duplicates: dict[str, tuple[str, dict]] = {}  # key -> (key in this run with the same bytes, probe)
    for key in keys:
        probed = store.read_json_or_none(key_path("media", key))
        if probed is None:
            failures[key] = f"{key}: not probed yet; materialize media_file first"
            continue
        existing = store.read_json_or_none(key_path("transcripts", key))
        if existing and existing.get("sha256") == probed["sha256"] and existing.get("settings_version") == version:
            # Same bytes, same settings: the transcript on disk is this one. No worker needed.
            context.add_asset_metadata({**_metadata(existing), "skipped": True}, partition_key=key)
            record_success(store, "transcript", key)
            continue
        # Same bytes as another upload: reuse its transcript rather than a worker.
        original = transcript_of_same_content(store, probed["sha256"], version, key)
        if original:
            write_reused(context, store, key, probed, original)
        elif probed["sha256"] in first_with_sha:
            duplicates[key] = (first_with_sha[probed["sha256"]], probed)  # copied once the first is done
        else:
            first_with_sha[probed["sha256"]] = key
            probes[key] = probed

    done = 0

    def progress(key: str, result) -> None:
        nonlocal done
        done += 1
        if isinstance(result, Exception):
            message = f"[{done}/{len(probes)}] {key}: FAILED: {result}"
        else:
            message = (f"[{done}/{len(probes)}] {key}: {result.duration_s:.1f} s audio, "
                       f"{result.x_realtime}x realtime on {result.device} worker {result.worker}")
        context.log.info(message)
        log.info(message)

    with ExitStack() as stack:
        files = []
        for key, probed in probes.items():
            try:
                path = stack.enter_context(store.local_copy(probed["source_uri"]))
            except Exception as error:
                failures[key] = describe_error(error, probed["source_uri"])
                continue
            files.append(FileToTranscribe(key, path, probed["source_uri"]))
        results = gpu.transcribe_files(files, on_done=progress)

    for key, result in results.items():
        probed = probes[key]
        if isinstance(result, Exception):
            failures[key] = describe_error(result, probed["source_uri"])
            continue
        relative = key_path("transcripts", key)
        doc = {"partition_key": key, "source_uri": probed["source_uri"], "sha256": probed["sha256"],
               "settings_version": version, "uri": store.uri(relative), **result.to_dict()}
        store.write_json(relative, doc)
        store.write_json(sha256_index_path(probed["sha256"]), {"partition_key": key, "settings_version": version})
        record_success(store, "transcript", key)
        context.add_asset_metadata(_metadata(doc), partition_key=key)
    for key, (first, probed) in duplicates.items():
        if first in failures:
            failures[key] = f"{key}: same content as {first}, which failed"
        else:
            write_reused(context, store, key, probed, store.read_json(key_path("transcripts", first)))
    finish_batch(context, store, "transcript", failures, len(keys))
