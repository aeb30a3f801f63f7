"""The run side of the resident engine: send a run's files to the workers, collect each result.

It watches the heartbeat of the worker that took each file: a worker gone silent for
OPENTR_WORKER_LOST_AFTER_S has its file submitted again at once (the broker would wait for its
visibility timeout, hours), and the old message is marked superseded so it is never done twice.
A file that loses two workers is failed as poison, named.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, TypeVar

from kombu.exceptions import OperationalError
from redis import Redis
from redis.exceptions import RedisError

from opentr_pipeline.engine.broker import HEARTBEAT, KEPT_RESULT, SUPERSEDED, TAKEN, TASK, celery_app, live_engines
from opentr_pipeline.engine.in_process import FileToTranscribe, OnDone, OnStart
from opentr_pipeline.engine.media import MediaError
from opentr_pipeline.engine.transcription import SourceChanged, Transcript
from opentr_pipeline.settings import EngineSettings, Settings, mask_url
from opentr_pipeline.storage import Storage

T = TypeVar("T")

log = logging.getLogger("opentr")
LOST_WORKERS_BEFORE_POISON = 2
BROKER_PATIENCE_S = 300  # a run waits this long for a broker that went away, then fails as transient


@dataclass
class Submitted:
    key: str
    uri: str
    lost_workers: int = 0
    taken_by: str = ""
    started: bool = False
    queue_empty_since: float | None = None
    earlier_ids: tuple[str, ...] = ()  # messages sent before for this file (their workers went silent)


def in_limbo(queued: int, engine: EngineSettings, item: Submitted) -> bool:
    """Sent, taken off the queue, yet claimed by no worker for a while: its worker died between
    taking the message and announcing it. Redis would give it back after the visibility timeout."""
    if queued:
        item.queue_empty_since = None
        return False
    now = time.monotonic()
    item.queue_empty_since = item.queue_empty_since or now
    return now - item.queue_empty_since > 2 * engine.worker_lost_after_s


def result_of(payload: dict) -> Transcript | Exception:
    if "transcript" in payload:
        return Transcript.from_dict(payload["transcript"])
    if payload.get("permanent"):
        return MediaError(payload["error"])
    return (SourceChanged if payload.get("kind") == "SourceChanged" else RuntimeError)(payload["error"])


@dataclass(frozen=True)
class ResidentEngine:
    """The engine when OPENTR_BROKER_URL is set: the model lives in resident workers."""

    settings: Settings

    def transcribe_files(self, files: list[FileToTranscribe], fetch: Callable[[str], ContextManager[Path]] | None = None,
                         on_start: OnStart | None = None, on_done: OnDone | None = None) -> dict[str, Transcript | Exception]:
        """As InProcessEngine.transcribe_files; `fetch` is unused: a worker reads each source itself."""
        return submit_files(self.settings, files, on_start, on_done)


def patiently(action: Callable[[], T], engine: EngineSettings, what: str) -> T:
    """`action` against the broker, waiting out an outage (a Redis restarting) of up to
    BROKER_PATIENCE_S: a run that cannot reach the broker waits, it does not spend an attempt."""
    outage_since = None
    while True:
        try:
            return action()
        except (RedisError, OperationalError, OSError) as error:
            now = time.monotonic()
            if outage_since is None:
                outage_since = now
                log.warning("broker unreachable while %s (%s); waiting up to %d s", what,
                            mask_url(str(error)), BROKER_PATIENCE_S)
            if now - outage_since > BROKER_PATIENCE_S:
                raise RuntimeError(f"the broker {mask_url(engine.broker_url)} was unreachable for "
                                   f"{BROKER_PATIENCE_S} s while {what}") from None
            time.sleep(1)


def submit_files(settings: Settings, files: list[FileToTranscribe], on_start: OnStart | None,
                 on_done: OnDone | None, poll_s: float = 0.25) -> dict[str, Transcript | Exception]:
    """Send every file to the resident workers; hand each result to `on_done` as it arrives."""
    engine = settings.engine
    app = celery_app(engine)
    redis = Redis.from_url(engine.broker_url)
    variables = settings.decoding.to_env()
    pending: dict[str, Submitted] = {}
    results: dict[str, Transcript | Exception] = {}

    def submit(item: Submitted) -> None:
        sent = patiently(lambda: app.send_task(TASK, args=[item.key, item.uri, variables], queue=engine.queue),
                         engine, f"sending {item.uri}")
        pending[sent.id] = item

    kept = Storage(settings.storage_uri)

    def finish(task_id: str, result: Transcript | Exception) -> None:
        item = pending.pop(task_id)
        results[item.key] = result
        if on_done:
            on_done(item.key, result)
        for done_id in (*item.earlier_ids, task_id):  # the workers' spare copies are no longer needed
            try:
                kept.delete(KEPT_RESULT.format(done_id))
            except Exception as error:
                log.warning("%s: a kept result could not be removed (%s)", item.uri, error)

    def kept_result(item: Submitted, task_id: str) -> dict | None:
        """What a worker finished though the broker lost its answer (a Redis restarted empty)."""
        for sent_id in (task_id, *item.earlier_ids):
            payload = kept.read_json_or_none(KEPT_RESULT.format(sent_id))
            if payload is not None:
                return payload
        return None

    for file in files:
        submit(Submitted(file.key, file.uri))
    live = patiently(lambda: live_engines(engine), engine, "looking for live workers")
    log.info("%d file(s) sent to queue %r; %d resident worker(s) live, %d slot(s)", len(files), engine.queue,
             len(live), sum(e["slots"] for e in live))
    last_news = time.monotonic()
    outage_since: float | None = None
    judge_after = 0.0  # no worker is called lost until the heartbeats had time to come back
    while pending:
        try:
            ids = list(pending)  # one round trip for every file's state, one for who holds it
            metas = redis.mget([app.backend.get_key_for_task(task_id) for task_id in ids])
            holders = redis.mget([TAKEN.format(task_id) for task_id in ids])
            alive: dict[str, bool] = {}
            judge = time.monotonic() >= judge_after
            queued = redis.llen(engine.queue) if judge else 0
            for task_id, raw, holder in zip(ids, metas, holders):
                item = pending[task_id]
                meta = app.backend.decode_result(raw) if raw else {"status": "PENDING"}
                if meta["status"] == "SUCCESS":
                    redis.delete(app.backend.get_key_for_task(task_id))
                    if not meta["result"].get("superseded"):
                        finish(task_id, result_of(meta["result"]))
                    continue
                if meta["status"] == "FAILURE":
                    finish(task_id, RuntimeError(f"{item.uri}: the worker failed: {meta['result']}"))
                    continue
                if meta["status"] == "STARTED" and not item.started and on_start:
                    item.started = True
                    on_start(item.key)
                if not judge:
                    continue
                item.taken_by = holder.decode() if holder else ""
                if item.taken_by:
                    if item.taken_by not in alive:
                        alive[item.taken_by] = bool(redis.exists(HEARTBEAT.format(item.taken_by)))
                    if not alive[item.taken_by]:
                        requeue_from_lost_worker(redis, engine, task_id, item, pending, submit, finish, kept_result)
                elif in_limbo(queued, engine, item):
                    requeue_from_lost_worker(redis, engine, task_id, item, pending, submit, finish, kept_result)
            if judge:
                judge_after = time.monotonic() + 1.0  # liveness once a second is plenty
            if outage_since is not None:
                log.info("broker reachable again after %.0f s", time.monotonic() - outage_since)
                outage_since = None
        except (RedisError, OperationalError, OSError) as error:
            # The broker is down or restarting: the workers carry on with what they hold and
            # store their results once it is back; a broker restarted empty loses queued
            # messages, which the limbo check sends again.
            now = time.monotonic()
            if outage_since is None:
                outage_since = now
                log.warning("broker unreachable (%s); waiting up to %d s", mask_url(str(error)), BROKER_PATIENCE_S)
            if now - outage_since > BROKER_PATIENCE_S:
                raise RuntimeError(f"the broker {mask_url(engine.broker_url)} was unreachable for "
                                   f"{BROKER_PATIENCE_S} s") from None
            judge_after = now + engine.worker_lost_after_s
            time.sleep(1)
            continue
        if pending and time.monotonic() - last_news > 30:
            last_news = time.monotonic()
            waiting = sum(1 for item in pending.values() if not item.taken_by)
            live = patiently(lambda: live_engines(engine), engine, "looking for live workers")
            advice = "" if live else "; no resident worker is live: start one with `opentr worker`"
            log.info("%d file(s) in hand, %d waiting for a slot on queue %r%s", len(pending) - waiting,
                     waiting, engine.queue, advice)
        time.sleep(poll_s)
    return results


def requeue_from_lost_worker(redis: Redis, engine: EngineSettings, task_id: str, item: Submitted,
                             pending: dict, submit: Callable, finish: Callable, kept_result: Callable) -> None:
    """The worker holding this file went silent: take what it kept, if it finished, or give the
    file to another worker, or call it poison."""
    redis.set(SUPERSEDED.format(task_id), 1, ex=engine.visibility_timeout_s + 3600)
    payload = kept_result(item, task_id)
    if payload is not None:
        log.info("%s: finished by a worker before the broker lost its answer; the transcript it kept "
                 "under STORAGE_URI is used", item.uri)
        finish(task_id, result_of(payload))
        return
    item.lost_workers += 1 if item.taken_by else 0  # a message lost in transit says nothing of the file
    lost = item.taken_by
    if item.lost_workers >= LOST_WORKERS_BEFORE_POISON:
        finish(task_id, RuntimeError(
            f"{item.uri}: poison file: {item.lost_workers} workers died while transcribing it (last {lost})"))
        return
    log.warning("%s: worker %s went silent with the file in hand; sent to another worker",
                item.uri, lost or "(unknown)")
    pending.pop(task_id)
    submit(Submitted(item.key, item.uri, item.lost_workers, earlier_ids=(*item.earlier_ids, task_id)))
