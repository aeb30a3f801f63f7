"""`opentr`: run the pipeline once over the upload area, serve the UI, a resident worker, the
throughput report, or the benchmark."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from opentr_pipeline.cli.instance import monitoring_advice, prepare_instance, run_queue_advice, set_gpu_pool_limit
from opentr_pipeline.cli.runner import run_pipeline, show_progress
from opentr_pipeline.cli.search import add_search_parser, search_command, serve_search_page
from opentr_pipeline.engine.devices import DeviceMemoryError
from opentr_pipeline.engine.transcription import ModelUnavailable
from opentr_pipeline.settings import PROJECT_ROOT, Settings, SettingsError

log = logging.getLogger("opentr")
QUIET_SUPERSESSION = "ignore:Function `dev_command` is superseded:FutureWarning"
TERMINATED: list[int] = []  # set by SIGTERM; read by the loop that waits for dagster dev
# Set by Ctrl-C or SIGTERM: from then on a child that exits was stopped, not lost. Ctrl-C reaches
# Redis and the workers at the same moment as this process, and they must not be started again.
STOPPING = threading.Event()


def stop_on_sigterm() -> None:
    """SIGTERM (how process managers and containers stop a service) takes the Ctrl-C path: every
    process this command started is stopped, and `opentr run` ends its runs."""
    def interrupt(signum, _frame):
        STOPPING.set()
        if signum == signal.SIGTERM:
            TERMINATED.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def print_report(settings: Settings) -> int:
    from opentr_pipeline.engine.slots import device_slots
    from opentr_pipeline.outputs.throughput import markdown_summary, transcripts_frame
    from opentr_pipeline.storage import Storage

    records, skipped = Storage(settings.storage_uri).list_records("transcripts")
    print(markdown_summary(transcripts_frame(records), device_slots(settings), skipped))
    return 0


def start_dev(settings: Settings, extra_args: list[str]) -> int:
    """`dagster dev` on the project's instance, with the gpu pool limit set from the plan.

    With OPENTR_BROKER_URL=embedded (what `make dev` sets) it first starts a private Redis and
    one resident worker per planned device, so every run shares one loaded model per device,
    and stops them when the UI stops.
    """
    if settings.engine.broker_url != "embedded":
        return serve_ui(settings, extra_args)
    from opentr_pipeline.engine.local import local_engine

    print("starting a private Redis and a resident worker per device (OPENTR_BROKER_URL=embedded) ...", flush=True)
    with local_engine(settings, Path(settings.dagster_home) / "engine", stop_begun=STOPPING.is_set) as broker:
        os.environ["OPENTR_BROKER_URL"] = broker  # what the daemon, code server and runs inherit
        return serve_ui(Settings.from_env(), extra_args)


def serve_ui(settings: Settings, extra_args: list[str]) -> int:
    from opentr_pipeline.engine.devices import describe_plan, plan_devices
    from opentr_pipeline.engine.slots import total_slots

    instance = prepare_instance(settings)
    slots = total_slots(settings)
    set_gpu_pool_limit(instance, slots)
    if settings.engine.resident:
        from opentr_pipeline.engine.broker import check_broker, live_engines

        check_broker(settings.engine)
        engines = live_engines(settings.engine)
        where = "; ".join(f"{e['device']} x{e['slots']} on {e['host']}" for e in engines) or "none live yet"
        print(f"resident workers: {where} (pool 'gpu' limit {slots})")
    else:
        from opentr_pipeline.engine.transcription import check_model_loads

        check_model_loads(settings.decoding, {device.kind for device in plan_devices(settings.devices)})
        print(f"device plan: {describe_plan(plan_devices(settings.devices))} (pool 'gpu' limit {slots})")
    for advice in (run_queue_advice(instance, slots), monitoring_advice(instance)):
        if advice:
            print(advice)
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), *extra_args]
    print(f"DAGSTER_HOME={settings.dagster_home} (its dagster.yaml, copied from the project's on first use, "
          f"is the one in force)\n$ {' '.join(command)}", flush=True)
    # Run from DAGSTER_HOME: from the project folder Dagster warns that the project's dagster.yaml
    # "will not be used", which is untrue (it was copied into DAGSTER_HOME). Paths are passed
    # resolved, so the change of folder moves none; `dagster dev` is what `dg dev` runs, without
    # dg's project scaffolding, so its supersession notice is filtered out.
    env = {**os.environ, **settings.to_env(),
           "PYTHONWARNINGS": ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), QUIET_SUPERSESSION]))}
    page = start_search_page(settings, extra_args, env)
    # A child, not exec: dagster dev on SIGTERM leaves its webserver, daemon and code server running.
    started = time.time()
    try:
        code = wait_for_dagster(subprocess.Popen(command, cwd=settings.dagster_home, env=env))
    finally:
        if page is not None and page.poll() is None:
            page.terminate()
            page.wait(10)
    cancel_report_runs_a_stop_interrupted(instance, started)
    return code


def wait_for_dagster(process: subprocess.Popen) -> int:
    while True:  # Ctrl-C reaches dagster dev too (same process group): wait for it to stop
        try:
            code = process.wait()
            break
        except KeyboardInterrupt:
            if TERMINATED:  # SIGTERM came to this process alone: stop dagster dev as Ctrl-C does
                TERMINATED.clear()
                process.send_signal(signal.SIGINT)
            continue
    return code


def dagster_ui_url(extra_args: list[str]) -> str:
    """Where dagster dev's UI will be, from the options passed on to it (-h/--host, -p/--port); a
    wildcard host is written {host}, for the page to fill in with the name its visitor used."""
    host, port = "127.0.0.1", "3000"
    for i, arg in enumerate(extra_args):
        for names, setter in ((("-h", "--host"), "host"), (("-p", "--port"), "port")):
            value = (extra_args[i + 1] if arg in names and i + 1 < len(extra_args)
                     else arg.split("=", 1)[1] if arg.startswith(tuple(n + "=" for n in names)) else None)
            if value is not None:
                host, port = (value, port) if setter == "host" else (host, value)
    return f"http://{'{host}' if host in ('0.0.0.0', '::', '') else host}:{port}"


def start_search_page(settings: Settings, extra_args: list[str], env: dict[str, str]) -> subprocess.Popen | None:
    """The search page beside the UI (`opentr search-page`), unless OPENTR_SEARCH_PORT=0."""
    if not settings.search_page_port:
        return None
    import socket

    with socket.socket() as probe:
        if probe.connect_ex((settings.search_page_host if settings.search_page_host not in ("0.0.0.0", "::")
                             else "127.0.0.1", settings.search_page_port)) == 0:
            print(f"search page: not started, {settings.search_page_host}:{settings.search_page_port} is taken "
                  "(set OPENTR_SEARCH_PORT to a free port, or 0 for no page)", flush=True)
            return None
    opentr = Path(sys.executable).with_name("opentr")
    return subprocess.Popen([str(opentr), "search-page", "--dagster-url", dagster_ui_url(extra_args)], env=env)


def cancel_report_runs_a_stop_interrupted(instance, since: float) -> None:
    """A report run that the stop itself interrupted is marked canceled, not failed: a clean stop
    leaves no failure behind (the next change of the transcripts asks for a report again)."""
    import dagster as dg

    from opentr_pipeline.defs.names import REPORT_JOB

    try:
        runs = instance.get_runs(dg.RunsFilter(job_name=REPORT_JOB, statuses=[dg.DagsterRunStatus.FAILURE],
                                               updated_after=datetime.fromtimestamp(since, timezone.utc)))
        for run in runs:
            text = " ".join(repr(entry.dagster_event.event_specific_data) for entry in instance.all_logs(run.run_id)
                            if entry.dagster_event is not None)
            if "Interrupt" in text:
                instance.report_run_canceled(run, message="stopped with opentr dev (Ctrl-C or SIGTERM): not a failure")
    except Exception as error:  # tidying up must never make a stop fail
        print(f"opentr dev: could not look at report runs the stop interrupted ({error})", file=sys.stderr)


def run_benchmark(args: list[str]) -> int:
    script = PROJECT_ROOT / "benchmarks" / "bench.py"
    if not script.is_file():
        print(f"opentr bench: {script} not found: the benchmark comes with a clone of the project, "
              "not with the installed package", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(script), *args])


RUN_EPILOG = """settings that matter (environment or .env; README "Settings" lists all):
  UPLOAD_URI            folder or s3://bucket/prefix with the recordings (default data/uploads)
  STORAGE_URI           where transcripts, subtitles and the report go (default data/store)
  DAGSTER_HOME          the Dagster instance the UI reads (default .dagster_home)
  WHISPER_MODEL         bundled tiny.en by default; a size (large-v3), a Hugging Face id or a folder
  GPU_SCALE_ENABLED, GPU_SCALE_DEVICE_ID, GPU_SCALE_WORKERS   workers per device
  OPENTR_FILES_PER_RUN  files per run (16)         OPENTR_MAX_ATTEMPTS  runs per file (3)

exit codes:
  0    every file done          1    some files failed (one line each, with the reason)
  2    bad settings (the variable and what would work)
  130  Ctrl-C   143  SIGTERM (files not finished are taken by the next run)

example:
  UPLOAD_URI=~/recordings GPU_SCALE_ENABLED=true GPU_SCALE_WORKERS=4 opentr run
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opentr", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="transcribe every new file under UPLOAD_URI, then the report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Scan UPLOAD_URI once; transcribe every file that is new or changed since it was done (waiting "
                    "for files still being written), then update the throughput report. Runs are recorded in the "
                    "Dagster instance at DAGSTER_HOME and show in the UI.",
        epilog=RUN_EPILOG)
    run.add_argument("--retranscribe", action="store_true",
                     help="transcribe every file again, though its transcript is current (a new model, say)")
    run.add_argument("--retry-failed", action="store_true",
                     help="try again the files that failed for good (bad media) and have not changed since")
    commands.add_parser(
        "report", help="print the throughput summary",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print the throughput report over every transcript under STORAGE_URI: x realtime while busy "
                    "per device and worker, utilisation, peak concurrency against the limit, and work periods.",
        epilog="settings: STORAGE_URI (default data/store), GPU_SCALE_* (for the limits shown)\n"
               "exit codes: 0 printed, 2 bad settings\nexample: STORAGE_URI=s3://bucket/out opentr report")
    # No -h of its own: `opentr dev -h 0.0.0.0` is dagster dev's --host (and --help its help).
    commands.add_parser("dev", add_help=False,
                        help="the Dagster UI and daemon on this project's instance; "
                             "other options (-p 3001, -h 0.0.0.0) go to dagster dev")
    worker = commands.add_parser("worker", help="a resident transcription worker for one device "
                                 "(holds one model; needs OPENTR_BROKER_URL)")
    worker.add_argument("--device", help="cpu:N or cuda:N (default: the plan's first device)")
    worker.add_argument("--queues", help="comma-separated queues to take files from (default OPENTR_QUEUE)")
    worker.add_argument("--cpu-threads", type=int, help="CTranslate2 threads per slot (default: cores / slots)")
    add_search_parser(commands)
    # The benchmark is a tool, not pipeline: it lives in benchmarks/ (as faster-whisper's does).
    commands.add_parser("bench", add_help=False,
                        help="raw faster-whisper against the pipeline, 1 and N workers (benchmarks/bench.py)")
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        return run_benchmark(extra)
    if extra and args.command != "dev":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    show_progress()
    from dotenv import load_dotenv  # dagster dev reads .env too; the process environment wins

    load_dotenv(Path.cwd() / ".env", override=False)
    stop_on_sigterm()
    try:
        settings = Settings.from_env()
        if args.command == "run":
            return run_pipeline(settings, args.retranscribe, args.retry_failed)
        if args.command == "dev":
            return start_dev(settings, [a for a in extra if a != "--"])
        if args.command == "worker":
            from opentr_pipeline.engine.worker import serve

            serve(settings, args.device, args.queues.split(",") if args.queues else None, args.cpu_threads)
            return 0
        if args.command == "search":
            return search_command(settings, args)
        if args.command == "search-page":
            return serve_search_page(settings, args)
        return print_report(settings)
    except SettingsError as error:
        print(f"opentr: configuration error: {error}", file=sys.stderr)
        return 2
    except DeviceMemoryError as error:
        print(f"opentr: {error}", file=sys.stderr)
        return 3
    except ModelUnavailable as error:
        print(f"opentr: configuration error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"opentr {args.command}: stopped; files not finished are taken again by the next run",
              file=sys.stderr, flush=True)
        return 143 if TERMINATED else 130


if __name__ == "__main__":
    sys.exit(main())
