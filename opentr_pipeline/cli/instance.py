"""The Dagster instance at DAGSTER_HOME, as `opentr run` and `opentr dev` prepare it."""

from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from opentr_pipeline.settings import PROJECT_ROOT, Settings


@contextmanager
def setting_up(home: Path) -> Iterator[None]:
    """One command at a time sets an instance up: two on a fresh DAGSTER_HOME used to race in
    Dagster's schema creation (`table alembic_version already exists`) and the pool's rows."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".opentr-setup.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def prepare_instance(settings: Settings):
    """The instance at DAGSTER_HOME, created with the project's dagster.yaml on first use."""
    home = Path(settings.dagster_home)
    with setting_up(home):
        config = home / "dagster.yaml"
        if not config.exists():
            shutil.copy(PROJECT_ROOT / "dagster.yaml", config)
        elif "module: opentr_pipeline.launcher" in (text := config.read_text()):
            # An instance made before the launcher moved into defs/ would fail to load it.
            config.write_text(text.replace("module: opentr_pipeline.launcher", "module: opentr_pipeline.defs.launcher"))
        os.environ["DAGSTER_HOME"] = str(home)
        import dagster as dg

        instance = dg.DagsterInstance.get()
        instance.get_runs(limit=1)  # the storages' schemas are made here, under the lock
        instance.event_log_storage.get_concurrency_keys()
    return instance


def set_gpu_pool_limit(instance, workers: int) -> None:
    """The `gpu` pool's limit is the plan's total workers; the UI's concurrency page shows it."""
    with setting_up(Path(instance.root_directory)):
        instance.event_log_storage.set_concurrency_slots("gpu", workers)


def run_queue_advice(instance, workers: int) -> str | None:
    """The daemon starts at most max_concurrent_runs runs; single-file runs need workers + 1
    (the report run too) to fill every worker. Said at start-up rather than changed behind the
    user's back: each run is a process with a model of its own."""
    limit = instance.get_concurrency_config().run_queue_config.max_concurrent_runs
    if limit < 0 or limit > workers:
        return None
    return (f"note: the run queue starts {limit} run(s) at a time, so runs holding fewer files than "
            f"workers can leave some of the {workers} workers idle; set concurrency.runs."
            f"max_concurrent_runs to {workers + 1} or more in {instance.root_directory}/dagster.yaml")


def monitoring_advice(instance) -> str | None:
    """An instance made before run monitoring came (its dagster.yaml is kept as it was) would
    leave a killed run STARTED for ever: say so at start-up."""
    from opentr_pipeline.defs.launcher import WatchedRunLauncher

    if instance.run_monitoring_enabled and isinstance(instance.run_launcher, WatchedRunLauncher):
        return None
    return (f"note: {instance.root_directory}/dagster.yaml does not watch run processes, so a killed "
            f"run would never be rerun; copy run_launcher and run_monitoring from {PROJECT_ROOT}/dagster.yaml")
