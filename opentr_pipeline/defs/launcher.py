"""Dagster's default run launcher, plus the one thing run monitoring needs from it: whether a
run's process is still alive.

The default launcher cannot tell, so a run whose process was SIGKILLed or taken by the OOM
killer stays STARTED for ever, holding its `gpu` pool slots. With this launcher (dagster.yaml)
the monitoring daemon sees the dead process within `poll_interval_seconds`, marks the run
failed, frees its slots, and the rerun sensor takes its unfinished files. Runs are launched on
this host's code servers, so the daemon on this host can look at their processes.
"""

from __future__ import annotations

from dagster import DefaultRunLauncher
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus

from opentr_pipeline.defs.reruns import dead_run_reason


class WatchedRunLauncher(DefaultRunLauncher):
    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        reason = dead_run_reason(self._instance, run)
        if reason:
            return CheckRunHealthResult(WorkerStatus.FAILED, reason)
        return CheckRunHealthResult(WorkerStatus.RUNNING)
