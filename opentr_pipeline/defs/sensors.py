"""Uploads become partitions and runs by themselves; a second sensor keeps the report current.

`upload_sensor` lists UPLOAD_URI every tick and compares it with what it remembers of each file,
its size and modification time as last seen (kept in the instance's key-value table, one row per
file, see sensor_state.py; the cursor itself stays small). What it decides:

- a file is ready once it is whole and not empty (intake/settled.py): an S3 object at once (an
  object store lists only finished uploads), a local file once no process on this host holds it
  open for writing and it has not changed for a second (longer where writers may be out of
  sight). Temporary names (`.part`, `.tmp`, `.crdownload`, any path part starting with a dot)
  wait for their final name; other non-media names are ignored with one log line each;
- a ready file whose key is new becomes a `media_files` partition; a ready file whose key exists
  but whose version changed since it was requested (size, mtime, or the change token that a
  rewrite moves even when size and mtime are put back: intake/uploads.py) is requested again (media_file probes
  it again, its new SHA-256 keeps the old transcript from being reused);
- runs take up to OPENTR_FILES_PER_RUN files each, as a partition range: keys added in one tick
  are appended to the dynamic partition in order, so they form one unbroken stretch;
- each run's `run_key` is a hash of its keys and versions, so no file version is requested
  twice even if a tick is evaluated again.

A tick whose listing of a local folder is the one it saw last time, with nothing waiting, keeps
looking for up to OPENTR_SENSOR_WATCH_S (3 s) before it ends: the daemon comes round only every
5 s, so a file dropped between rounds waited 2.5 s on average for the next; now most are seen
within WATCH_POLL_S of landing. An S3 listing is a request, so it is made once per tick.
Otherwise it reads the listed files' rows and writes only the rows that change; at most
MAX_FILES_PER_TICK files are requested per tick. A high-water mark on mtime would be smaller but
would miss files copied with their original times (`cp -p`, rsync).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Callable

import dagster as dg

from opentr_pipeline.defs.assets.reports import TRANSCRIPTS_SEEN, latest_materialization_id
from opentr_pipeline.defs.jobs import transcribe_job
from opentr_pipeline.defs.names import LAUNCHED_BY, REPORT_JOB, TRANSCRIBE_JOB
from opentr_pipeline.defs.partitions import contiguous_chunks, media_files, run_request
from opentr_pipeline.defs.reruns import rerun_unfinished
from opentr_pipeline.defs.sensor_state import SensorCursor, UploadState, listing_digest
from opentr_pipeline.engine.isolation import unreadable_reason_isolated
from opentr_pipeline.intake.settled import is_whole, open_for_writing, time_to_settle
from opentr_pipeline.intake.uploads import (
    Upload, UploadListing, register_sources, same_version, scan_uploads, source_path,
)
from opentr_pipeline.settings import Settings
from opentr_pipeline.storage import Storage

REPORT_INTERVAL_S = 10
REPORT_LAG_WHILE_BUSY_S = 300
SENSOR_INTERVAL_S = 1  # the daemon comes round every 5 s at best; a minimum of 5 too would skip every other round
NAMES_PER_LOG_LINE = 20
# A tick must end well inside the daemon's 60 s limit: at 100,000 files dropped at once it would
# not (a source record and a run request each); the rest are taken by the next ticks.
MAX_FILES_PER_TICK = 2000
LOOKS_PER_TICK = 500  # header looks at ready local files (about 1 ms each); the rest go to runs
WATCH_POLL_S = 0.25
# A folder that takes longer than this to list is looked at once per tick: the watch must cost
# a sliver of a core, not a fifth of it.
WATCH_MAX_LISTING_S = 0.05


@dataclass
class SeenUploads:
    """What the sensor knew of the listed files before this tick (kept in sensor_state)."""

    requested: dict[str, list] = field(default_factory=dict)  # key -> [size, mtime, change] last requested
    ignored: set[str] = field(default_factory=set)  # non-media names already logged

    def by_key(self) -> dict[str, list]:
        """key -> [requested version, None] as stored (the second place once held a version seen
        but not yet ready, for a rule of two looks that whether a file is whole replaced)."""
        return {key: [version, None] for key, version in self.requested.items()}


@dataclass
class TickPlan:
    ready: list[Upload]
    seen: SeenUploads
    waiting: int  # media files not whole yet, empty, or over the tick's cap
    newly_ignored: list[str]


def plan_tick(listing: UploadListing, previous: SeenUploads, whole: Callable[[Upload], bool],
              cap: int = MAX_FILES_PER_TICK) -> TickPlan:
    """Which uploads are ready now (at most `cap`), and what to remember for the next tick.

    `whole(upload)` says whether a file is finished (intake/settled.py); nothing else here looks
    outside its arguments."""
    ready: list[Upload] = []
    requested: dict[str, list] = {}
    waiting = 0
    for upload in listing.uploads:
        state = upload.version
        if same_version(previous.requested.get(upload.key), upload):
            requested[upload.key] = state  # already requested in this very version
        elif upload.size > 0 and len(ready) < cap and whole(upload):
            ready.append(upload)
            requested[upload.key] = state
        else:
            waiting += 1  # over the cap it stays ready for the next tick
            if upload.key in previous.requested:
                requested[upload.key] = previous.requested[upload.key]
    named = listing.not_media + sorted(listing.skipped)  # each named once, not every tick
    newly_ignored = [name for name in named if name not in previous.ignored]
    seen = SeenUploads(requested, set(named))
    return TickPlan(ready, seen, waiting, newly_ignored)


def run_key_for(chunk: list[Upload]) -> str:
    identity = json.dumps([[u.key, *u.version] for u in chunk])
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
        if record is None or same_version(record, upload):
            done.add(upload.key)
    register_sources(store, unrecorded)
    return done


def digest_of(listing: UploadListing) -> str:
    return listing_digest([[u.key, *u.version] for u in listing.uploads] +
                          [[n] for n in listing.not_media + sorted(listing.skipped)])


def watch_until_changed(listing: UploadListing, cursor: SensorCursor, list_again: Callable[[], UploadListing],
                        watch_s: float) -> UploadListing:
    """The first listing that differs from the cursor's, looking again every WATCH_POLL_S for up
    to `watch_s`; the last one seen when nothing moved (or the folder is too big to watch)."""
    deadline = time.monotonic() + watch_s
    while digest_of(listing) == cursor.digest and not cursor.waiting and time.monotonic() + WATCH_POLL_S < deadline:
        time.sleep(WATCH_POLL_S)
        started = time.monotonic()
        listing = list_again()
        if time.monotonic() - started > WATCH_MAX_LISTING_S:
            break
    return listing


def respond_to_listing(context: dg.SensorEvaluationContext, listing: UploadListing,
                       settings: Settings) -> dg.SensorResult:
    """Everything the sensor does after listing: plan, register sources, request runs."""
    cursor = SensorCursor.parse(context.cursor)
    digest = digest_of(listing)
    if digest == cursor.digest and not cursor.waiting:
        return dg.SensorResult(skip_reason="no new or changed media", cursor=context.cursor)

    state = UploadState(context.instance, cursor)
    stored = state.load("file", [u.key for u in listing.uploads])
    previous = SeenUploads({k: r for k, (r, _) in stored.items() if r},
                           set(state.load("ignored", listing.not_media + sorted(listing.skipped))))
    unseen = [u.mtime for u in listing.uploads if not same_version(previous.requested.get(u.key), u)]
    # Only files not yet requested in this version need the look at this host's writers.
    writers = None if "://" in settings.upload_uri or not unseen else open_for_writing(settings.upload_uri)
    now = time.time()
    if wait := time_to_settle(unseen, now, writers):  # a copy that just ended: within this tick, not 5 s on
        time.sleep(wait)
        writers, now = open_for_writing(settings.upload_uri), time.time()
    plan = plan_tick(listing, previous, lambda u: is_whole(u.uri, u.size, u.mtime, now, writers), MAX_FILES_PER_TICK)
    state.save("file", previous.by_key(), plan.seen.by_key())
    state.save("ignored", {n: 1 for n in previous.ignored}, {n: 1 for n in plan.seen.ignored})
    next_cursor = SensorCursor(cursor.generation + 1, digest, plan.waiting).dump()
    for name in plan.newly_ignored:
        if name in listing.skipped:
            context.log.warning(f"skipped {name!r}: {listing.skipped[name]}")
    not_media = [name for name in plan.newly_ignored if name not in listing.skipped]
    for start in range(0, len(not_media), NAMES_PER_LOG_LINE):
        names = not_media[start : start + NAMES_PER_LOG_LINE]
        context.log.info(f"ignored, not a media file name: {', '.join(map(repr, names))}")
    waiting = (f"; waiting: {plan.waiting} file(s) still being written, empty or over this tick's "
               f"{MAX_FILES_PER_TICK}, {len(listing.partial)} with a temporary name"
               if plan.waiting or listing.partial else "")
    if not plan.ready:
        return dg.SensorResult(skip_reason=f"no new or changed media{waiting}", cursor=next_cursor)

    known = context.instance.get_dynamic_partitions(media_files.name)
    position = {key: index for index, key in enumerate(known)}
    store = Storage(settings.storage_uri)
    already_done = done_elsewhere(context.instance, store, [
        u for u in plan.ready if u.key in position and u.key not in previous.requested])
    plan.ready = [u for u in plan.ready if u.key not in already_done]
    if not plan.ready:
        return dg.SensorResult(skip_reason=f"no new or changed media{waiting}", cursor=next_cursor)
    bad = no_media_at_all(plan.ready)
    new_keys = []
    for upload in sorted(plan.ready, key=lambda u: u in bad):  # bad ones last: no gap in the good runs' ranges
        if upload.key not in position:
            position[upload.key] = len(position)
            new_keys.append(upload.key)
    register_sources(store, plan.ready)
    for reason in bad.values():
        context.log.warning(f"{reason}: it runs alone, so that it holds up no other file")
    by_key = {upload.key: upload for upload in plan.ready if upload not in bad}
    order = sorted(by_key, key=position.__getitem__)
    runs = [run_request_for([upload]) for upload in bad] + [
        run_request_for([by_key[key] for key in chunk]) for chunk in contiguous_chunks(order, set(order), settings.files_per_run)]
    again = len(plan.ready) - len(new_keys)
    context.log.info(f"{len(new_keys)} new file(s), {again} changed, in {len(runs)} run(s)"
                     f"{f' ({len(bad)} alone: no media at first look)' if bad else ''}{waiting}")
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[media_files.build_add_request(new_keys)] if new_keys else [],
        cursor=next_cursor,
    )


def no_media_at_all(uploads: list[Upload]) -> dict[Upload, str]:
    """Local files that are plainly no media (a text file named .mp3): a look at each one's first
    bytes (FFmpeg where they are no known container's), at most LOOKS_PER_TICK a tick. In a run
    beside good files such a file failed their run and delayed them by a rerun; in a run of its
    own it fails alone, its partition failed with the reason, and the good files' run succeeds."""
    looked = [u for u in uploads if "://" not in u.uri][:LOOKS_PER_TICK]
    return {u: reason for u in looked if (reason := unreadable_reason_isolated(u.uri))}


def watches(settings: Settings) -> bool:
    return "://" not in settings.upload_uri and settings.sensor_watch_s > 0


def watch_note(settings: Settings) -> str:
    if not watches(settings):
        return ""
    return (f", often still spinning: a tick that finds nothing new keeps watching the folder for "
            f"{settings.sensor_watch_s:g} s (OPENTR_SENSOR_WATCH_S), so a dropped file is taken within about a second")


def build_upload_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name="upload_sensor",
        job_name=TRANSCRIBE_JOB,
        minimum_interval_seconds=SENSOR_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        # The Automation page shows two marks beside a sensor: the status of the last run it
        # started, then its last tick. A run holding a bad file fails (Dagster has no other way to
        # mark a partition failed), so a red first mark can be a bad upload, not this sensor.
        description=f"New or changed media under {settings.upload_uri} become media_files partitions "
                    f"and runs of up to {settings.files_per_run} files. The first mark beside this sensor "
                    "is the last run it started: red when a file in it was bad (the file's partition "
                    "page says why, under View all historical events); the second is the sensor's own "
                    f"last tick{watch_note(settings)}.",
    )
    def upload_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        listing = scan_uploads(settings.upload_uri)
        if watches(settings):
            listing = watch_until_changed(listing, SensorCursor.parse(context.cursor),
                                          lambda: scan_uploads(settings.upload_uri), settings.sensor_watch_s)
        return respond_to_listing(context, listing, settings)

    return upload_sensor


def transcripts_seen_by_report(instance: dg.DagsterInstance) -> tuple[int | None, float | None]:
    """The newest transcript event the latest report was built over, and when that report was made."""
    records = instance.fetch_materializations(dg.AssetKey("throughput_report"), limit=1).records
    if not records:
        return None, None
    entry = records[0].asset_materialization.metadata.get(TRANSCRIPTS_SEEN)
    # A report from before the entry existed: its own event is the best bound there is.
    return (entry.value if entry is not None else records[0].storage_id), records[0].timestamp


def first_transcript_at(instance: dg.DagsterInstance) -> float:
    records = instance.fetch_materializations(dg.AssetKey("transcript"), limit=1, ascending=True).records
    return records[0].timestamp if records else time.time()


ACTIVE = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
          dg.DagsterRunStatus.STARTED]


@dg.sensor(
    name="report_freshness_sensor",
    minimum_interval_seconds=REPORT_INTERVAL_S,
    job_name=REPORT_JOB,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Refreshes throughput_report when transcripts are newer than it: once transcription "
                f"goes quiet, and at least every {REPORT_LAG_WHILE_BUSY_S // 60} min while it goes on.",
)
def report_freshness_sensor(context: dg.SensorEvaluationContext):
    """The one thing that keeps the report current (a report run is a process start, pandas and a
    plot: asked for after every transcript of a bulk drop it would take the CPU from transcription).

    Under a steady stream of uploads the lag is bounded by REPORT_LAG_WHILE_BUSY_S; `run_key`
    keeps one report per transcript state, and while a report run waits or goes no other is asked.
    """
    transcripts = latest_materialization_id(context.instance, "transcript")
    if transcripts is None:
        return dg.SkipReason("no transcripts yet")
    seen, made_at = transcripts_seen_by_report(context.instance)
    if seen is not None and seen >= transcripts:
        return dg.SkipReason("the report covers every transcript")
    pending = context.instance.get_runs(dg.RunsFilter(job_name=REPORT_JOB, statuses=ACTIVE), limit=1)
    if pending:
        return dg.SkipReason(f"a report run is already on its way ({pending[0].run_id[:8]})")
    busy = context.instance.get_runs(dg.RunsFilter(job_name=TRANSCRIBE_JOB, statuses=ACTIVE), limit=1)
    # The lag runs from the last report, or with none yet from the first transcript: the first
    # pile on a new instance is not slowed by a report of its first file.
    if busy and time.time() - (made_at or first_transcript_at(context.instance)) < REPORT_LAG_WHILE_BUSY_S:
        return dg.SkipReason(f"transcription under way (run {busy[0].run_id[:8]}); the report follows "
                             f"when it ends, or {REPORT_LAG_WHILE_BUSY_S // 60} min after the last report "
                             "(the first transcript, before any report)")
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
        reruns = rerun_unfinished(context.instance, Storage(settings.storage_uri), run,
                                  settings.max_attempts, settings.files_per_run)
        context.log.info(f"run {run.run_id[:8]} failed; {len(reruns)} rerun(s) of its unfinished files")
        selection = list(run.asset_selection) if run.asset_selection else None
        for rerun in reruns:
            yield run_request(rerun.keys, rerun.run_key, rerun.tags, asset_selection=selection)

    return rerun_unfinished_files
