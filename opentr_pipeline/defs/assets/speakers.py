"""Who spoke when, per file: decided from the voice prints its transcription kept, so another
number of speakers costs a second of clustering, not a transcription.

The words and their timings stay the transcript's; this step puts each word on its speaker, splits
segments where the speaker changes, and writes the result back into the transcript record (so its
JSON has it all) and a small `speakers/<key>.json` (turns, talk time, each voice's mean embedding
for the voice profiles). A file whose speakers cannot be found keeps its words and its subtitles:
its speakers are recorded as failed with the reason, and the `every_file_has_its_speakers` check
names it, without failing its neighbours or its other outputs.
"""


import hashlib
import json
import logging
from dataclasses import asdict

import dagster as dg

from opentr_pipeline.defs.assets.transcripts import transcript, voiceprints_path
from opentr_pipeline.defs.outcomes import finish_batch, record_failure, record_success
from opentr_pipeline.defs.partitions import media_files
from opentr_pipeline.defs.resources import GpuExecutor, MediaStore
from opentr_pipeline.engine.failures import FileFailure
from opentr_pipeline.engine.pyannote_diarizer import pyannote_speakers
from opentr_pipeline.engine.speakers import (SpeakerHints, SpeakersFound, VoicePrints, assign_word_speakers,
                                              find_speakers, talk_time)
from opentr_pipeline.engine.transcription import segments_of
from opentr_pipeline.intake.keys import key_path
from opentr_pipeline.settings import PYANNOTE

log = logging.getLogger("opentr")  # `opentr run` prints these lines as it goes


class SpeakerCount(dg.Config):
    """Hints for this run only (Launchpad config); unset ones come from OPENTR_NUM_SPEAKERS,
    OPENTR_MIN_SPEAKERS and OPENTR_MAX_SPEAKERS."""

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None


def hints_of(gpu: GpuExecutor, config: SpeakerCount | None = None) -> SpeakerHints:
    decoding = gpu.config.decoding
    config = config or SpeakerCount()
    hints = SpeakerHints(config.num_speakers or decoding.num_speakers,
                         config.min_speakers or decoding.min_speakers, config.max_speakers or decoding.max_speakers)
    if hints.min_speakers > hints.max_speakers:
        raise dg.Failure(f"min_speakers {hints.min_speakers} is more than max_speakers {hints.max_speakers}")
    return hints


def hints_version(hints: SpeakerHints, diarization: str = "embedded") -> str:
    """What decides the speakers beside the transcript: the hints, and a pyannote pipeline if one."""
    decisive = {**asdict(hints), **({"diarizer": diarization} if diarization.startswith(PYANNOTE) else {})}
    return hashlib.sha1(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:8]


def speakers_path(key: str) -> str:
    return key_path("speakers", key)


def label_transcript(doc: dict, found: SpeakersFound, hints: SpeakerHints, model: str) -> tuple[dict, dict]:
    """The transcript with every word and segment on its speaker, and the file's speakers record."""
    labelled = assign_word_speakers(segments_of(doc), found.turns)
    # names come from the voice profiles (defs/assets/profiles.py), which follow this
    speakers = [{"id": who, "talk_s": seconds, "name": None} for who, seconds in talk_time(found.turns).items()]
    hints_record = asdict(hints)
    labelled_doc = {**doc, "segments": [asdict(s) for s in labelled], "speakers": speakers, "speakers_hints": hints_record,
                    "speakers_by": model}
    record = {
        "partition_key": doc["partition_key"], "sha256": doc.get("sha256", ""), "hints": hints_record,
        "model": model, "speakers": speakers,
        "turns": [[t.start, t.end, t.speaker] for t in found.turns],
        "voices": {who: [round(float(x), 5) for x in mean] for who, mean in found.voices.items()},
    }
    return labelled_doc, record


def speakers_line(doc: dict) -> str:
    """What the UI shows of who spoke: each speaker and their talk time, at a glance."""
    if doc.get("speakers_error"):
        return f"failed: {doc['speakers_error']}"
    found = doc.get("speakers") or []
    if (doc.get("speakers_by") or doc.get("diarization", "off")) == "off":
        return "off (OPENTR_DIARIZATION=off)"
    if not found:
        return "none (no speech)"
    return ", ".join(f"{s.get('name') or s['id']} {s['talk_s']:.0f} s" for s in found)


def file_speakers(store, key: str, hints: SpeakerHints, diarization: str = "embedded") -> tuple[dict | None, str]:
    """Decide one file's speakers; return its transcript as now written (None: not transcribed)
    and, when its speakers could not be found, why. `diarization` is OPENTR_DIARIZATION: a
    pyannote pipeline hears the file again; otherwise the voice prints its transcription kept
    decide (none kept: diarization was off when it was transcribed)."""
    relative = key_path("transcripts", key)
    doc = store.read_json_or_none(relative)
    if doc is None:
        return None, ""
    pyannote = diarization.startswith(PYANNOTE)
    if not pyannote and doc.get("diarization", "off") == "off":
        return doc, ""
    if not pyannote and doc.get("speakers_error"):
        return doc, doc["speakers_error"]
    by = diarization if pyannote else doc["diarization"]
    if (doc.get("speakers_hints") == asdict(hints) and doc.get("speakers_by", by) == by
            and store.read_json_or_none(speakers_path(key))):
        return doc, ""  # decided already, with these hints and this diarizer, for this transcript
    try:
        if pyannote:
            with store.local_copy(doc["source_uri"]) as path:
                found = pyannote_speakers(diarization, path, key, hints)
        else:
            prints_record = store.read_json_or_none(voiceprints_path(key))
            if prints_record is None or prints_record.get("sha256") != doc.get("sha256"):
                return doc, ("its voice prints are missing or belong to another version of the file "
                             "(transcribe it again: run tag opentr/retranscribe=true)")
            prints = VoicePrints.from_record(prints_record)
            found, by = find_speakers(prints, hints), prints.model
        labelled, record = label_transcript(doc, found, hints, by)
    except Exception as error:  # a fault here costs this file's speakers, never its words
        return doc, f"speakers could not be found: {type(error).__name__}: {error}"
    store.write_json(speakers_path(key), record)
    store.write_json(relative, labelled)
    return labelled, ""


@dg.asset(
    partitions_def=media_files,
    deps=[transcript],
    backfill_policy=dg.BackfillPolicy.multi_run(16),
    code_version="speakers-1",
    group_name="transcription",
    kinds={"python", "scipy"},
)
def speakers(context: dg.AssetExecutionContext, config: SpeakerCount, gpu: GpuExecutor, media: MediaStore) -> None:
    """Who spoke when: every word and segment of the transcript on its speaker, with talk time.

    Decided from the voice prints the transcription kept: rerun with another number of speakers
    (Launchpad config `num_speakers`) and nothing is transcribed again."""
    store = media.outputs()
    hints = hints_of(gpu, config)
    missing: dict[str, FileFailure] = {}
    for key in context.partition_keys:
        doc, error = file_speakers(store, key, hints, gpu.config.decoding.diarization)
        if doc is None:
            missing[key] = FileFailure(f"{key}: no transcript yet; materialize transcript first", False)
            continue
        if error:
            failure = FileFailure(f"{key}: {error}; its words and subtitles are kept", True)
            record_failure(store, "speakers", key, failure, context.run_id)
            context.log.warning(failure.reason)
            log.warning(f"{key}: speakers failed: {error}")
        else:
            record_success(store, "speakers", key)
            log.info(f"{key}: speakers {speakers_line(doc)}")
        context.add_asset_metadata({
            "speakers": error and f"failed: {error}" or speakers_line(doc),
            "count": len(doc.get("speakers") or []),
            "hints": dg.MetadataValue.json(asdict(hints)),
        }, partition_key=key)
    if missing:  # nothing to label: as for any step whose input is missing, the files are named
        finish_batch(context, store, "speakers", missing, len(context.partition_keys))


@dg.asset_check(asset=speakers, blocking=False)
def every_file_has_its_speakers(context: dg.AssetCheckExecutionContext, media: MediaStore) -> dg.AssetCheckResult:
    """No file's speakers failed (each such file keeps its words; the reasons are listed)."""
    store = media.outputs()
    failed = {record["partition_key"]: record["reason"] for record in store.list_json("failures/speakers")}
    return dg.AssetCheckResult(
        passed=not failed,
        metadata={"failed": dg.MetadataValue.json(failed), "files_failed": len(failed)},
        description="every transcribed file has its speakers" if not failed
        else f"{len(failed)} file(s) without speakers: " + "; ".join(failed.values())[:500],
    )
