"""The broker between runs and resident workers: the Celery app, and the Redis keys both sides read.

Files travel as source URIs plus decoding options over Redis, acknowledged late, so a file whose
worker dies is delivered again. Each worker announces itself under HEARTBEAT while it lives.
"""

from __future__ import annotations

import json

from celery import Celery
from redis import Redis

from opentr_pipeline.settings import EngineSettings, SettingsError, mask_url

TASK = "opentr.transcribe"
HEARTBEAT = "opentr:engine:{}"
SUPERSEDED = "opentr:superseded:{}"
TAKEN = "opentr:taken:{}"  # task id -> the engine that received it (even before a thread runs it)
# A finished transcript, written by the worker under STORAGE_URI before it answers through the
# broker: a broker that dies or restarts empty never holds the only copy of finished work.
KEPT_RESULT = "engine_results/{}.json"


def redelivery_options(visibility_timeout_s: int) -> dict:
    """Redis gives a dead worker's file back once it has been unacknowledged this long, at the
    next sweep of unacknowledged messages; kombu sweeps every 10 s but scans only every 10th
    time (100 s). Scanning at every sweep, and sweeping at least ten times per timeout, brings the
    file back within a tenth of the timeout (at most 10 s) after it ran out: one small Redis
    range query per sweep."""
    return {"visibility_timeout": visibility_timeout_s, "unacked_restore_throttle": 1,
            "unacked_restore_interval": max(1, min(10, visibility_timeout_s // 10))}


def celery_app(engine: EngineSettings) -> Celery:
    app = Celery("opentr", broker=engine.broker_url, backend=engine.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,  # a message is acknowledged when its file is done, not when taken
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a worker reserves only what its threads are working on
        broker_transport_options=redelivery_options(engine.visibility_timeout_s),
        result_backend_transport_options={"visibility_timeout": engine.visibility_timeout_s},
        result_expires=24 * 3600,
        task_default_queue=engine.queue,
        task_serializer="json", result_serializer="json", accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


def check_broker(engine: EngineSettings, timeout_s: float = 3.0) -> None:
    """At start-up: the broker answers, or the command stops here saying which and why."""
    try:
        Redis.from_url(engine.broker_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s).ping()
    except Exception as error:
        raise SettingsError(f"OPENTR_BROKER_URL={mask_url(engine.broker_url)!r}: the broker does not answer "
                            f"({type(error).__name__}: {mask_url(str(error))}); start it (make cluster-up), "
                            "or leave OPENTR_BROKER_URL empty to transcribe in the run processes") from None


def live_engines(engine: EngineSettings) -> list[dict]:
    """The resident workers whose heartbeat is fresh: host, device, slots, queues, engine id."""
    redis = Redis.from_url(engine.broker_url)
    found = []
    for name in redis.scan_iter(HEARTBEAT.format("*")):
        raw = redis.get(name)
        if raw:
            found.append(json.loads(raw))
    return found
