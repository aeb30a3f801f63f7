"""Uploads become partitions and runs by themselves; a second sensor keeps the report from lagging.

`upload_sensor` lists UPLOAD_URI every tick and compares it with its cursor, a JSON map of each
file's size and modification time as last seen. What it decides:

- a file is ready once its size and mtime were seen unchanged on two consecutive ticks and it is
  not empty: a copy still in progress changes between looks (S3 objects appear whole, but a
  local folder shows a growing file). Temporary names (`.part`, `.tmp`, `.crdownload`, any
  path part starting with a dot) wait for their final name; other non-media names are ignored
  with one log line each;
- a ready file whose key is new becomes a `media_files` partition; a ready file whose key exists
  but whose size or mtime changed since it was requested is requested again (media_file probes
  it again, its new SHA-256 keeps the old transcript from being reused);
- runs take up to OPENTR_FILES_PER_RUN files each, as a partition range: keys added in one tick
  are appended to the dynamic partition in order, so they form one unbroken stretch;
- each run's `run_key` is a hash of its keys, sizes and mtimes, so no file version is requested
  twice even if a tick is evaluated again.

The cursor holds only files that are still in the upload area, so the work per tick is one
dictionary look-up per listed file plus work proportional to what is new. A high-water mark on
mtime would be smaller but would miss files copied with their original times (`cp -p`, rsync).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import dagster as dg

from opentr_pipeline.jobs import transcribe_job
from opentr_pipeline.names import LAUNCHED_BY, REPORT_JOB, TRANSCRIBE_JOB
from opentr_pipeline.partitions import contiguous_chunks, media_files, run_request
from opentr_pipeline.reruns import rerun_unfinished
from opentr_pipeline.settings import Settings
from opentr_pipeline.storage import Storage
from opentr_pipeline.uploads import Upload, UploadListing, register_sources, scan_uploads, source_path

SENSOR_INTERVAL_S = 15
NAMES_PER_LOG_LINE = 20


@dataclass
class UploadCursor:
    requested: dict[str, list] = field(default_factory=dict)  # key -> [size, mtime] last requested
    waiting: dict[str, list] = field(default_factory=dict)  # key -> [size, mtime] seen, not yet ready
    ignored: list[str] = field(default_factory=list)  # non-media names already logged

    @classmethod
    def parse(cls, raw: str | None) -> "UploadCursor":
        if not raw:
            return cls()
        value = json.loads(raw)
        return cls(value.get("requested", {}), value.get("waiting", {}), value.get("ignored", []))

    def dump(self) -> str:
        return json.dumps({"requested": self.requested, "waiting": self.waiting, "ignored": self.ignored},
                          separators=(",", ":"))


@dataclass
class TickPlan:
    ready: list[Upload]
    cursor: UploadCursor
    waiting: int  # media files seen for the first time, still changing, or empty
    newly_ignored: list[str]


def plan_tick(listing: UploadListing, previous: UploadCursor) -> TickPlan:
    """Which uploads are ready now, and the cursor for the next tick (no I/O)."""
    ready: list[Upload] = []
    requested: dict[str, list] = {}
    waiting: dict[str, list] = {}
    for upload in listing.uploads:
        state = [upload.size, upload.mtime]
        if previous.requested.get(upload.key) == state:
            requested[upload.key] = state  # already requested in this very version
        elif upload.size > 0 and previous.waiting.get(upload.key) == state:
            ready.append(upload)
            requested[upload.key] = state
        else:
            waiting[upload.key] = state
            if upload.key in previous.requested:
                requested[upload.key] = previous.requested[upload.key]
    seen_before = set(previous.ignored)
    newly_ignored = [name for name in listing.not_media if name not in seen_before]
    cursor = UploadCursor(requested, waiting, sorted(listing.not_media))
    return TickPlan(ready, cursor, len(waiting), newly_ignored)


def run_key_for(chunk: list[Upload]) -> str:
    identity = json.dumps([[u.key, u.size, u.mtime] for u in chunk])
    return "uploads-" + hashlib.sha256(identity.encode()).hexdigest()[:32]


def run_request_for(chunk: list[Upload]) -> dg.RunRequest:
    tags = {LAUNCHED_BY: "upload_sensor", "opentr/files": str(len(chunk))}
    return run_request([u.key for u in chunk], run_key_for(chunk), tags)


def done_elsewhere(instance: dg.DagsterInstance, store: Storage, uploads: list[Upload]) -> set[str]:
    """Keys this sensor never requested that a backfill, the UI or `opentr run` already did.

    Without this a restarted sensor (empty cursor) would request every processed file again.
    Done means probed, and the source record still matches the file. A key added by hand has
    no record: it gets one now, so that a later change to the file is seen.
    """
    if not uploads:
        return set()
    probed = instance.get_materialized_partitions(dg.AssetKey("media_file"))
    done, unrecorded = set(), []
    for upload in uploads:
        if upload.key not in probed:
            continue
        record = store.read_json_or_none(source_path(upload.key))
        if record is None:
            unrecorded.append(upload)
        if record is None or [record.get("size"), record.get("mtime")] == [upload.size, upload.mtime]:
            done.add(upload.key)
    register_sources(store, unrecorded)
    return done


def respond_to_listing(context: dg.SensorEvaluationContext, listing: UploadListing,
                       settings: Settings) -> dg.SensorResult:
    """Everything the sensor does after listing: plan, register sources, request runs."""
    previous = UploadCursor.parse(context.cursor)
    plan = plan_tick(listing, previous)
    for start in range(0, len(plan.newly_ignored), NAMES_PER_LOG_LINE):
        names = plan.newly_ignored[start : start + NAMES_PER_LOG_LINE]
        context.log.info(f"ignored, not a media file name: {', '.join(map(repr, names))}")
    for name, reason in listing.skipped.items():
        context.log.warning(f"skipped {name!r}: {reason}")
    waiting = (f"; waiting: {plan.waiting} file(s) new, still changing or empty, "
               f"{len(listing.partial)} with a temporary name" if plan.waiting or listing.partial else "")
    if not plan.ready:
        return dg.SensorResult(skip_reason=f"no new or changed media{waiting}", cursor=plan.cursor.dump())

    known = context.instance.get_dynamic_partitions(media_files.name)
    position = {key: index for index, key in enumerate(known)}
    store = Storage(settings.storage_uri)
    already_done = done_elsewhere(context.instance, store, [
        u for u in plan.ready if u.key in position and u.key not in previous.requested])
    plan.ready = [u for u in plan.ready if u.key not in already_done]
    if not plan.ready:
        return dg.SensorResult(skip_reason=f"no new or changed media{waiting}", cursor=plan.cursor.dump())
    new_keys = []
    for upload in plan.ready:
        if upload.key not in position:
            position[upload.key] = len(position)
            new_keys.append(upload.key)
    register_sources(store, plan.ready)
    by_key = {upload.key: upload for upload in plan.ready}
    order = sorted(by_key, key=position.__getitem__)
    runs = [run_request_for([by_key[key] for key in chunk])
            for chunk in contiguous_chunks(order, set(order), settings.files_per_run)]
    again = len(plan.ready) - len(new_keys)
    context.log.info(f"{len(new_keys)} new file(s), {again} changed, in {len(runs)} run(s){waiting}")
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[media_files.build_add_request(new_keys)] if new_keys else [],
        cursor=plan.cursor.dump(),
    )


def build_upload_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name="upload_sensor",
        job_name=TRANSCRIBE_JOB,
        minimum_interval_seconds=SENSOR_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"New or changed media under {settings.upload_uri} become media_files partitions "
                    f"and runs of up to {settings.files_per_run} files.",
    )
    def upload_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        return respond_to_listing(context, scan_uploads(settings.upload_uri), settings)

    return upload_sensor


def latest_materialization_id(instance: dg.DagsterInstance, asset: str) -> int | None:
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=1).records
    return records[0].storage_id if records else None


@dg.sensor(
    name="report_freshness_sensor",
    minimum_interval_seconds=30,
    job_name=REPORT_JOB,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def report_freshness_sensor(context: dg.SensorEvaluationContext):
    """Refresh the report when a transcript is newer than it; two indexed queries otherwise.

    `report_automation` (eager) waits while any transcript run is in progress, so under a steady
    stream of uploads the report could lag for hours; and on Dagster 1.13.27 it was seen not to
    fire again for transcripts of partitions added by a sensor after its first materialization.
    This bounds the lag to one interval; `run_key` keeps one report per transcript state.
    """
    transcripts = latest_materialization_id(context.instance, "transcript")
    if transcripts is None:
        return dg.SkipReason("no transcripts yet")
    report = latest_materialization_id(context.instance, "throughput_report")
    if report is not None and report > transcripts:
        return dg.SkipReason("the report is newer than every transcript")
    return dg.RunRequest(run_key=f"report-after-{transcripts}")


def build_rerun_sensor(settings: Settings) -> dg.RunFailureSensorDefinition:
    @dg.run_failure_sensor(
        name="rerun_unfinished_files",
        monitored_jobs=[transcribe_job],
        request_job=transcribe_job,
        minimum_interval_seconds=5,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="When a transcription run fails, its files that can still succeed run again "
                    f"(at most {settings.max_attempts} runs per file; files whose run died alone, "
                    "one per run; bad and poison files stay failed with their reason).",
    )
    def rerun_unfinished_files(context: dg.RunFailureSensorContext):
        run = context.dagster_run
        requests = rerun_unfinished(context.instance, Storage(settings.storage_uri), run,
                                    settings.max_attempts, settings.files_per_run)
        context.log.info(f"run {run.run_id[:8]} failed; {len(requests)} rerun(s) of its unfinished files")
        yield from requests

    return rerun_unfinished_files
