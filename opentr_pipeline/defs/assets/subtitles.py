import dagster as dg

from opentr_pipeline.defs.assets.speakers import speakers, speakers_line
from opentr_pipeline.defs.assets.transcripts import transcript
from opentr_pipeline.defs.outcomes import finish_batch, record_success
from opentr_pipeline.defs.partitions import media_files
from opentr_pipeline.defs.resources import MediaStore
from opentr_pipeline.engine.failures import FileFailure, failure_of
from opentr_pipeline.intake.keys import key_path
from opentr_pipeline.outputs.subtitles import build_cues, preview, speaker_names, to_srt, to_txt, to_vtt


def write_subtitles(store, key: str, doc: dict) -> tuple[list, tuple[str, str, str]]:
    """A file's SRT, WebVTT and text from its transcript record; also called when speakers are
    named (defs/assets/profiles.py), so a name shows without anything transcribed again."""
    cues = build_cues(doc["segments"])
    names = speaker_names(doc)
    return cues, (store.write_text(key_path("subtitles", key, ".srt"), to_srt(cues, names)),
                  store.write_text(key_path("subtitles", key, ".vtt"), to_vtt(cues, names, doc.get("language", ""))),
                  store.write_text(key_path("subtitles", key, ".txt"), to_txt(doc["segments"], names)))


@dg.asset(
    partitions_def=media_files,
    deps=[transcript, speakers],
    backfill_policy=dg.BackfillPolicy.multi_run(16),
    code_version="subtitles-1",
    group_name="transcription",
    kinds={"python"},
)
def subtitles(context: dg.AssetExecutionContext, media: MediaStore) -> None:
    """SRT, WebVTT and plain text per file, from the transcript's word timings, each speaker
    marked where the speaker changes (by name once one is given)."""
    store = media.outputs()
    failures: dict[str, FileFailure] = {}
    for key in context.partition_keys:
        doc = store.read_json_or_none(key_path("transcripts", key))
        if doc is None:
            damaged = store.damaged.get(store.uri(key_path("transcripts", key)))
            failures[key] = FileFailure(f"{key}: its transcript record is damaged ({damaged}); the next run transcribes "
                                        "it again" if damaged else f"{key}: no transcript yet; materialize transcript first", False)
            continue
        try:  # a full disk fails this file (transient), and the step names it, as for any other
            cues, (srt, vtt, txt) = write_subtitles(store, key, doc)
            record_success(store, "subtitles", key)
        except OSError as error:
            failures[key] = failure_of(error, key)
            continue
        context.add_asset_metadata({
            "cues": len(cues),
            "preview": dg.MetadataValue.text(preview(cues, int(doc.get("words") or len(doc["text"].split())),
                                                     names=speaker_names(doc))),
            "speakers": speakers_line(doc),
            "srt": dg.MetadataValue.path(srt), "vtt": dg.MetadataValue.path(vtt), "txt": dg.MetadataValue.path(txt),
            "json": dg.MetadataValue.path(doc.get("uri") or store.uri(key_path("transcripts", key))),
        }, partition_key=key)
    finish_batch(context, store, "subtitles", failures, len(context.partition_keys))
