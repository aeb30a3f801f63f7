"""A resident transcription worker (`opentr worker`): one process per device holds one model.

It is a Celery worker with a thread pool, so one process holds one WhisperModel for its device
(loaded once, with `num_workers` = its slots) and its threads share it. At most `slots`
(GPU_SCALE_WORKERS) of them transcribe at once, by construction; as many more decode the next
files meanwhile. A run watches this worker's heartbeat and gives its files to another if it
goes silent (engine/client.py).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from celery import Celery
from celery.signals import task_received
from redis import Redis

from opentr_pipeline.engine.broker import HEARTBEAT, KEPT_RESULT, SUPERSEDED, TAKEN, TASK, celery_app, check_broker
from opentr_pipeline.engine.devices import WORKER_NOTE, DevicePlan, check_vram, cuda_free_bytes, plan_devices
from opentr_pipeline.engine.failures import failure_of
from opentr_pipeline.engine.isolation import DecodeLimits
from opentr_pipeline.engine.transcription import (
    MODELS,
    TranscriptionOptions,
    engine_id,
    load_audio,
    model_location,
    resolve_batch_size,
    resolve_compute_type,
    transcribe_on,
)
from opentr_pipeline.settings import DecodingSettings, Settings, SettingsError
from opentr_pipeline.storage import SourceError, Storage, is_under

log = logging.getLogger("opentr")


@dataclass
class Resident:
    """What a worker process holds for its whole life: one device, one model, its slots."""

    settings: Settings
    device: DevicePlan
    engine: str
    free_slots: queue.Queue
    redis: Redis
    queues: list[str]
    in_hand: set[str] = field(default_factory=set)  # task ids being worked on, re-announced with each heartbeat

    def announce(self) -> dict:
        return {"engine": self.engine, "host": socket.gethostname(), "pid": os.getpid(),
                "device": self.device.label, "slots": self.device.workers, "queues": self.queues}


RESIDENT: Resident | None = None


def error_payload(error: Exception, name: str) -> dict:
    """The engine's one judgement of a failure (failures.py), sent back to the run as plain data."""
    failure = failure_of(error, name)
    return {"error": failure.reason, "permanent": failure.permanent, "kind": type(error).__name__}


def transcribe_file(task_id: str, key: str, source_uri: str, decoding_vars: dict[str, str],
                    on_taken: Callable[[dict], None]) -> dict:
    """One file on this worker: the task body, kept free of Celery so it reads plainly."""
    resident = RESIDENT
    assert resident is not None, "transcribe_file runs inside `opentr worker`"
    if resident.redis.exists(SUPERSEDED.format(task_id)):
        return {"superseded": True}  # its run gave it to another worker when this one's went silent
    resident.in_hand.add(task_id)
    try:
        # A broker lost here (Redis killed as the file arrived) is no fault of the file: the error
        # goes up to Celery, and the file leaves `in_hand`, or the heartbeat would tell a Redis
        # restarted empty that this worker holds it, and its run would wait on it for ever.
        mark_taken(resident, task_id)
        on_taken({**resident.announce(), "key": key})
        return transcribe_taken(resident, task_id, key, source_uri, decoding_vars)
    finally:
        resident.in_hand.discard(task_id)


def transcribe_taken(resident: Resident, task_id: str, key: str, source_uri: str, decoding_vars: dict[str, str]) -> dict:
    """The file is this worker's now: its transcript, or its failure as plain data for the run."""
    try:
        decoding = DecodingSettings.model_validate(decoding_vars)
        mine = resident.settings.decoding
        if (decoding.whisper_model, decoding.whisper_compute_type) != (mine.whisper_model, mine.whisper_compute_type):
            raise RuntimeError(
                f"worker {resident.engine} holds {mine.whisper_model} ({mine.whisper_compute_type}); the run "
                f"asked for {decoding.whisper_model} ({decoding.whisper_compute_type}): give both the same "
                f"WHISPER_MODEL and WHISPER_COMPUTE_TYPE, or a queue of their own (OPENTR_QUEUE)")
        if not is_under(resident.settings.upload_uri, source_uri):
            raise SourceError(f"{source_uri}: not under this worker's UPLOAD_URI {resident.settings.upload_uri}")
        with Storage(resident.settings.upload_uri).local_copy(source_uri) as path:
            audio = load_audio(path, source_uri, limits=DecodeLimits.from_settings(resident.settings))
        options = TranscriptionOptions.from_settings(decoding, resident.device)
        slot = resident.free_slots.get()  # the hard per-device limit: no slot, no transcription
        try:
            transcript = transcribe_on(mine, resident.device, slot, audio, options)
        finally:
            resident.free_slots.put(slot)
        log.info("%s: %.1f s audio, %sx realtime on %s slot %d; %d chunk(s) decoded again", key,
                 transcript.duration_s, transcript.x_realtime, resident.device.label, slot, len(transcript.decoded_again))
        payload = {"transcript": transcript.to_dict()}
        keep_result(resident, task_id, key, payload)
        return payload
    except Exception as error:  # one file's failure stays that file's; the message goes back to the run
        log.warning("%s: %s", key, error)
        return error_payload(error, source_uri)


def keep_result(resident: Resident, task_id: str, key: str, payload: dict) -> None:
    try:
        Storage(resident.settings.storage_uri).write_json(KEPT_RESULT.format(task_id), {"key": key, **payload})
    except Exception as error:  # the broker still carries the result; only the spare copy is missing
        log.warning("%s: the finished transcript could not be kept under STORAGE_URI (%s)", key, error)


def mark_taken(resident: Resident, task_id: str) -> None:
    resident.redis.set(TAKEN.format(task_id), resident.engine, ex=resident.settings.engine.visibility_timeout_s)


def register_task(app: Celery) -> None:
    @app.task(name=TASK, bind=True)
    def transcribe_task(self, key: str, source_uri: str, decoding_vars: dict[str, str]) -> dict:
        return transcribe_file(self.request.id, key, source_uri, decoding_vars,
                               on_taken=lambda meta: self.update_state(state="STARTED", meta=meta))


def worker_device(settings: Settings, device: str | None, cpu_threads: int | None) -> DevicePlan:
    """The one device this worker serves: `--device cuda:1` or the plan's first device."""
    plan = plan_devices(settings.devices)
    if device is None:
        chosen = plan[0]
    else:
        kind, _, index = device.partition(":")
        if kind not in ("cpu", "cuda") or not index.isdigit():
            raise SettingsError(f"--device={device!r}: expected cpu:N or cuda:N")
        chosen = DevicePlan(kind, int(index), plan[0].workers, plan[0].cpu_threads)
    if cpu_threads:
        chosen = DevicePlan(chosen.kind, chosen.index, chosen.workers, cpu_threads)
    return chosen


def start_worker(settings: Settings, device: str | None = None, queues: list[str] | None = None,
                 cpu_threads: int | None = None, free_bytes: Callable[[int], float] = cuda_free_bytes) -> Resident:
    """Check the device fits, load the model once, and start the heartbeat; the worker then serves."""
    global RESIDENT
    if not settings.engine.resident:
        raise SettingsError("OPENTR_BROKER_URL is empty: a resident worker needs a broker "
                            "(e.g. redis://127.0.0.1:6379/0, which `make dev` and `make cluster-up` start)")
    if settings.engine.broker_url == "embedded":
        raise SettingsError("OPENTR_BROKER_URL='embedded': only `opentr dev` starts its own broker; "
                            "give a worker the broker's URL (redis://host:port/db)")
    plan = worker_device(settings, device, cpu_threads)
    if plan.kind == "cuda":
        check_vram(plan, model_location(settings.decoding.whisper_model), resolve_batch_size(settings.decoding.batch_size, plan),
                   free_bytes(plan.index), note=WORKER_NOTE, speakers=settings.decoding.voice_prints,
                   multilingual=model_location(settings.decoding.multilingual_model)
                   if settings.decoding.routes_languages else None)
    check_broker(settings.engine)  # before a model is loaded for nothing
    clock = time.perf_counter()
    MODELS.get(settings.decoding.whisper_model, plan,
               resolve_compute_type(settings.decoding.whisper_compute_type, plan.kind))
    # faster-whisper's decode_audio runs gc.collect() for every file, pausing every thread while
    # it walks the heap; freezing what exists after start-up (Celery, the model) keeps that short.
    gc.freeze()
    slots: queue.Queue = queue.Queue()
    for slot in range(plan.workers):
        slots.put(slot)
    resident = Resident(settings, plan, engine_id(), slots, Redis.from_url(settings.engine.broker_url),
                        queues or [settings.engine.queue])
    log.info("engine %s: %s loaded on %s in %.1f s, %d slot(s), queues %s", resident.engine,
             settings.decoding.whisper_model, plan.label, time.perf_counter() - clock, plan.workers,
             ",".join(resident.queues))
    RESIDENT = resident
    threading.Thread(target=heartbeat, args=(resident,), daemon=True, name="opentr-heartbeat").start()
    return resident


def heartbeat(resident: Resident) -> None:
    lost_after = resident.settings.engine.worker_lost_after_s
    key = HEARTBEAT.format(resident.engine)
    while True:
        try:
            resident.redis.set(key, json.dumps(resident.announce()), ex=lost_after)
            for task_id in list(resident.in_hand):  # a broker restarted empty learns them again
                mark_taken(resident, task_id)
        except Exception as error:  # the broker is down: Celery reconnects; keep trying
            log.warning("heartbeat: %s", error)
        time.sleep(max(1.0, lost_after / 4))


def serve(settings: Settings, device: str | None, queues: list[str] | None, cpu_threads: int | None) -> None:
    """`opentr worker`: a resident worker for one device, until it is stopped."""
    resident = start_worker(settings, device, queues, cpu_threads)
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)  # it prints each whole transcript
    app = celery_app(settings.engine)
    register_task(app)
    # A message is the worker's from the moment it arrives, not only once a thread runs it: a run
    # must know whom to watch for a file that sat in a killed worker's buffer.
    task_received.connect(lambda sender=None, request=None, **_: mark_taken(resident, request.id), weak=False)
    app.worker_main([
        "worker", "--pool=threads", f"--concurrency={2 * resident.device.workers}",
        f"--queues={','.join(resident.queues)}", f"--hostname={resident.device.label}.{resident.engine}",
        "--without-gossip", "--without-mingle", "--loglevel=INFO",
    ])
