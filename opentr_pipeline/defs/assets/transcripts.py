import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field

import dagster as dg

from opentr_pipeline.defs.assets.media import media_file
from opentr_pipeline.defs.names import RETRANSCRIBE, RETRY_FAILED
from opentr_pipeline.defs.claims import claim, mark_started, release, wait_for_holders
from opentr_pipeline.defs.outcomes import finish_batch, kept_verdict, record_success
from opentr_pipeline.defs.partitions import media_files
from opentr_pipeline.defs.resources import FileToTranscribe, GpuExecutor, MediaStore
from opentr_pipeline.engine.failures import FileFailure, failure_of
from opentr_pipeline.engine.languages import languages_line
from opentr_pipeline.engine.transcription import SourceChanged, Transcript
from opentr_pipeline.intake.keys import key_path, storage_name

log = logging.getLogger("opentr")


def settings_version(gpu: GpuExecutor) -> str:
    """What decides a transcript's content: changing any of it makes transcripts stale."""
    decoding = gpu.config.decoding
    decisive = {
        "model": decoding.whisper_model, "compute_type": decoding.whisper_compute_type,
        "beam_size": decoding.beam_size, "vad_filter": decoding.vad_filter,
        "language": decoding.language or "", "format": 1,
        # With VAD every batch size now decodes chunks of joined speech, with the same words at 1
        # and 8 (README, "Measured"); "batched" stays as it was at batch 8, so those transcripts
        # stay fresh, and the ones made at 1 (then sequential) become stale.
        "batched": True,
        # Batched chunks that lost words are decoded again (engine/chunks.py). Redoing them
        # greedily rather than at beam 5 kept the words (README, "Measured"), so that change kept
        # this at 1; chunks of joined speech rather than chunks with their pauses (2) lose far
        # fewer words in the first place (2); decoded with timestamp tokens, they lose fewer still,
        # and only the holes the decoder left are decoded again (3): the transcripts made before are stale.
        "chunk_guard": 3,
        # Voice prints are made with the words: switching them on redoes the transcripts. The
        # number of speakers is the speakers asset's alone (decided again without decoding).
        **({"voice_prints": decoding.diarization} if decoding.voice_prints else {}),
        # Each chunk's language detected, and speech not in English decoded by this model.
        **({"languages": decoding.multilingual_model} if decoding.routes_languages else {}),
        **({"task": decoding.task} if decoding.task != "transcribe" else {}),
    }
    return hashlib.sha1(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:12]


def _metadata(doc: dict) -> dict:
    return {
        "duration_s": doc["duration_s"],
        "x_realtime": doc["x_realtime"],
        "language": doc["language"],
        "languages": languages_line(doc),
        "words": doc["words"],
        "device": doc["device"],
        "worker": doc["worker"],
        "host": doc.get("host", ""),
        "engine": doc.get("engine", ""),
        "wall_s": doc["wall_s"],
        "chunks_decoded_again": len(doc.get("decoded_again", [])),
        "reused_from": doc.get("reused_from") or "",
        "warnings": "; ".join(doc.get("warnings", [])) or "none",
        "audio_notes": "; ".join(doc.get("audio_notes", [])) or "",
        "voice_prints": voice_prints_line(doc),
        "preview": dg.MetadataValue.text(doc["text"][:300]),
        "path": dg.MetadataValue.path(doc["uri"]),
    }


def voice_prints_line(doc: dict) -> str:
    """What the transcription kept for who spoke when (the speakers asset decides it)."""
    if doc.get("speakers_error"):
        return doc["speakers_error"]
    if doc.get("diarization", "off") == "off":
        return "off (OPENTR_DIARIZATION=off)"
    return f"{doc['diarization']}, {doc.get('speakers_s', 0):.1f} s"


def voiceprints_path(key: str) -> str:
    """A transcript's voice prints (engine/speakers.py VoicePrints), for the speakers asset."""
    return key_path("voiceprints", key)


def previous_path(key: str, sha256: str) -> str:
    """Where a transcript of an earlier version of a file is kept once a new version is done."""
    return f"previous/transcripts/{storage_name(key)}/{sha256[:16]}.json"


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


@dataclass
class TranscriptPlan:
    """What a run does with each of its files; decided before any worker is asked."""

    current: dict[str, dict] = field(default_factory=dict)  # key -> its transcript on disk, up to date
    reuse: dict[str, dict] = field(default_factory=dict)  # key -> another upload's transcript of the same bytes
    transcribe: dict[str, dict] = field(default_factory=dict)  # key -> its probe
    same_as: dict[str, str] = field(default_factory=dict)  # key -> the key in this run with the same bytes
    failures: dict[str, FileFailure] = field(default_factory=dict)


def is_current(doc: dict | None, probed: dict, version: str) -> bool:
    """The transcript on disk is of these bytes under these settings: nothing to do."""
    return bool(doc) and doc.get("sha256") == probed["sha256"] and doc.get("settings_version") == version


def plan_transcripts(keys: list[str], probes: dict[str, dict | None], existing: dict[str, dict | None],
                     elsewhere: dict[str, dict | None], version: str,
                     verdicts: dict[str, FileFailure] | None = None) -> TranscriptPlan:
    """Pure: transcribe each distinct content once; reuse what is already done; leave what failed
    for good (`verdicts`) failed (no I/O)."""
    plan = TranscriptPlan()
    first_with_sha: dict[str, str] = {}
    for key in keys:
        probed = probes.get(key)
        if probed is None:
            plan.failures[key] = FileFailure(f"{key}: not probed yet; materialize media_file first", False)
            continue
        if verdicts and key in verdicts:
            plan.failures[key] = verdicts[key]
            continue
        if is_current(existing.get(key), probed, version):
            plan.current[key] = existing[key]
        elif elsewhere.get(key):
            plan.reuse[key] = elsewhere[key]
        elif probed["sha256"] in first_with_sha:
            plan.same_as[key] = first_with_sha[probed["sha256"]]  # copied once the first is done
        else:
            first_with_sha[probed["sha256"]] = key
            plan.transcribe[key] = probed
    return plan


def decoded_again_note(result: Transcript) -> str:
    """What the chunk guard did, for the run log: nothing when it did nothing."""
    if not result.decoded_again:
        return ""
    return (f"; {len(result.decoded_again)} stretch(es) of batched chunks decoded again, words short of their speech "
            f"({', '.join(f'{start:.0f}-{end:.0f} s' for start, end in result.decoded_again)})")


class TranscriptRecorder:
    """Writes each file's outcome the moment it is known, from whichever worker thread."""

    def __init__(self, context: dg.AssetExecutionContext, store, version: str):
        self.context, self.store, self.version, self.total = context, store, version, 0
        self.failures: dict[str, FileFailure] = {}
        self.finished_keys: set[str] = set()  # done either way, their claims released
        self.lock = threading.Lock()

    def started(self, key: str) -> None:
        mark_started(self.store, "transcript", key, self.context.run_id)

    def finished(self, key: str, probed: dict, result: Transcript | Exception) -> None:
        if not isinstance(result, Exception):
            result = self.still_the_probed_file(probed, result)
        with self.lock:
            self.finished_keys.add(key)
            done = len(self.finished_keys)
            if not isinstance(result, Exception):
                try:
                    self.write(key, probed, result)
                except Exception as error:  # storage full, say: this file's failure, not the run's crash
                    result = error
            if isinstance(result, Exception):
                self.failures[key] = failure_of(result, probed["source_uri"])
                message = f"[{done}/{self.total}] {key}: FAILED: {self.failures[key].reason}"
            else:
                message = (f"[{done}/{self.total}] {key}: {result.duration_s:.1f} s audio"
                           f" ({languages_line({'languages': result.languages, 'language': result.language})}), "
                           f"{result.x_realtime}x realtime on {result.device} worker {result.worker}"
                           f"{decoded_again_note(result)}"
                           + "".join(f"; {note}" for note in result.audio_notes + result.warnings))
                if result.warnings:
                    self.context.log.warning(f"{key}: {'; '.join(result.warnings)}")
            release(self.store, key, self.context.run_id)
        self.context.log.info(message)
        log.info(message)

    def still_the_probed_file(self, probed: dict, result: Transcript) -> Transcript | Exception:
        """A transcript is recorded only for the file's final bytes: those probed, and the file
        still as the probe found it now that the transcription is done (else it is redone)."""
        uri = probed["source_uri"]
        if result.sha256 != probed["sha256"]:
            return SourceChanged(f"{uri}: changed since it was probed (sha256 {probed['sha256'][:12]} -> "
                                 f"{result.sha256[:12]}); it is probed and transcribed again on the next attempt")
        try:
            now = self.store.version_of(uri)
        except Exception as error:
            return error
        if probed.get("source_version") not in (None, now):
            return SourceChanged(f"{uri}: changed while it was transcribed (size, mtime or inode moved); "
                                 "it is probed and transcribed again on the next attempt")
        return result

    def write(self, key: str, probed: dict, result: Transcript) -> None:
        relative = key_path("transcripts", key)
        doc = {"partition_key": key, "source_uri": probed["source_uri"], "settings_version": self.version,
               "source_version": probed.get("source_version"), "uri": self.store.uri(relative), **result.to_dict()}
        prints = doc.pop("voice_prints", None)  # kept apart: the report reads every transcript, not these
        if prints is not None:
            self.store.write_json(voiceprints_path(key), {"partition_key": key, "sha256": result.sha256, **prints})
        earlier = self.store.read_json_or_none(relative)
        if earlier and earlier.get("sha256") != result.sha256:  # a new version of the file: keep the old text
            doc["replaces"] = self.store.write_json(previous_path(key, earlier["sha256"]), earlier)
        self.store.write_json(relative, doc)
        self.store.write_json(sha256_index_path(result.sha256), {"partition_key": key, "settings_version": self.version})
        self.succeeded(key, doc)

    def write_reused(self, key: str, probed: dict, original: dict) -> None:
        """A duplicate upload's transcript: a copy that names the partition whose work it reuses."""
        relative = key_path("transcripts", key)
        doc = {**original, "partition_key": key, "source_uri": probed["source_uri"],
               "uri": self.store.uri(relative), "reused_from": original["partition_key"]}
        prints = self.store.read_json_or_none(voiceprints_path(original["partition_key"]))
        if prints is not None:  # its speakers are decided on their own (the hints may differ)
            self.store.write_json(voiceprints_path(key), {**prints, "partition_key": key})
        self.store.write_json(relative, doc)
        self.succeeded(key, doc)
        self.context.log.info(f"{key}: same content as {original['partition_key']}; its transcript reused")

    def succeeded(self, key: str, doc: dict, **extra) -> None:
        record_success(self.store, "transcript", key)
        self.context.add_asset_metadata({**_metadata(doc), **extra}, partition_key=key)


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
    recorder = TranscriptRecorder(context, store, settings_version(gpu))
    fresh = context.run.tags.get(RETRANSCRIBE, "").lower() == "true"
    if fresh:
        context.log.info(f"{RETRANSCRIBE}=true: every file transcribed afresh, nothing reused")
    failures: dict[str, FileFailure] = {}
    versions: dict[str, list] = {}  # of the files probed: a permanent failure holds for that version only
    pending = context.partition_keys
    while pending:  # files another run was transcribing come round again once it is done
        held = transcribe_round(context, gpu, store, recorder, pending, fresh, failures, versions)
        pending = wait_for_holders(context, store, held)
        fresh = False  # what the other run made is as fresh as this run's would be
    for uri, reason in store.damaged.items():
        context.log.warning(f"{uri}: a damaged record, read as missing ({reason}); its file is done again")
    finish_batch(context, store, "transcript", failures, len(context.partition_keys), versions)


def transcribe_round(context: dg.AssetExecutionContext, gpu: GpuExecutor, store, recorder: TranscriptRecorder,
                     keys: list[str], fresh: bool, failures: dict[str, FileFailure],
                     versions: dict[str, list]) -> dict[str, dict]:
    """Plan, claim and transcribe `keys`; return the files other runs hold (key -> holder)."""
    version = recorder.version
    probes = {key: store.read_json_or_none(key_path("media", key)) for key in keys}
    versions.update({key: probed["source_version"] for key, probed in probes.items() if probed and probed.get("source_version")})
    verdicts = {} if context.run.tags.get(RETRY_FAILED, "").lower() == "true" else {
        key: verdict for key in versions if (verdict := kept_verdict(store, "transcript", key, versions[key]))}
    for key in verdicts:
        context.log.info(f"{key}: failed for good before and unchanged since; not transcribed again "
                         f"(run tag {RETRY_FAILED}=true, or opentr run --retry-failed, tries it)")
    existing = {} if fresh else {key: store.read_json_or_none(key_path("transcripts", key)) for key in keys}
    elsewhere = {} if fresh else {key: transcript_of_same_content(store, probed["sha256"], version, key)
                                  for key, probed in probes.items()
                                  if probed and not is_current(existing[key], probed, version)}
    plan = plan_transcripts(keys, probes, existing, elsewhere, version, verdicts)
    failures.update(plan.failures)
    for key, doc in plan.current.items():
        recorder.succeeded(key, doc, skipped=True)
    for key, original in plan.reuse.items():
        recorder.write_reused(key, probes[key], original)
    held = {}
    for key in list(plan.transcribe):
        holder = claim(store, context.instance, "transcript", key, context.run_id)
        if holder is not None:
            held[key] = holder
            del plan.transcribe[key]
    recorder.total += len(plan.transcribe)
    engine = gpu.config.engine
    if plan.transcribe and engine.resident:
        context.log.info(f"{len(plan.transcribe)} file(s) go to the resident workers on queue '{engine.queue}'")
    try:
        gpu.transcribe_files(
            [FileToTranscribe(key, probed["source_uri"]) for key, probed in plan.transcribe.items()],
            fetch=store.local_copy,
            on_start=recorder.started,
            on_done=lambda key, result: recorder.finished(key, plan.transcribe[key], result),
        )
    finally:  # an error in the engine: the files it did not finish are free for the rerun
        for key in set(plan.transcribe) - recorder.finished_keys:
            release(store, key, context.run_id)
    failures.update(recorder.failures)
    for key, first in plan.same_as.items():
        if first in held:
            held[key] = held[first]  # decided once the holder of its twin is done
        elif first in failures:
            failures[key] = FileFailure(f"{key}: same content as {first}, which failed", False)
        else:
            recorder.write_reused(key, probes[key], store.read_json(key_path("transcripts", first)))
    return held
