"""What happens to a failed run's files: the pure plan, and how a dead run process is recognised
(real processes: one killed, one left a zombie)."""

from __future__ import annotations

import subprocess
import sys
import time

from opentr_pipeline.defs.reruns import POISON_AFTER, plan_rerun, process_is_gone

ORDER = ["a", "b", "c", "d", "e", "f"]


def plan(run_keys=ORDER, permanent=(), in_flight=(), crashes=None, attempt=1, max_attempts=3, size=16):
    return plan_rerun(run_keys, ORDER, set(permanent), set(in_flight), crashes or {}, attempt, max_attempts, size)


def test_bad_files_stay_failed_and_the_rest_run_again_in_stretches():
    result = plan(permanent={"c"})
    assert result.chunks == [["a", "b"], ["d", "e", "f"]]  # a run covers an unbroken range
    assert not result.poison and not result.given_up


def test_stretches_respect_the_files_per_run():
    assert plan(size=4).chunks == [["a", "b", "c", "d"], ["e", "f"]]


def test_files_in_hand_when_the_process_died_run_alone():
    result = plan(in_flight={"b", "e"})
    assert result.chunks == [["b"], ["e"], ["a"], ["c", "d"], ["f"]]
    assert result.crashes == {"b": 1, "e": 1}


def test_a_file_that_kills_its_run_again_is_poison_and_named():
    result = plan(run_keys=["b"], in_flight={"b"}, crashes={"b": POISON_AFTER - 1}, attempt=2)
    assert result.poison == ["b"] and result.chunks == []


def test_attempts_are_bounded():
    result = plan(permanent={"a"}, attempt=3, max_attempts=3)
    assert result.chunks == [] and result.given_up == ["b", "c", "d", "e", "f"]


def test_a_live_process_is_not_gone_and_a_killed_one_is():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not process_is_gone(child.pid, time.time())
        child.kill()
        time.sleep(0.2)
        assert process_is_gone(child.pid, time.time()), "a killed, unreaped child (a zombie) is gone"
        child.wait()
        assert process_is_gone(child.pid, time.time())
    finally:
        child.kill()


def test_a_pid_taken_by_a_newer_process_counts_as_gone():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        recorded_long_before = time.time() - 3600  # the run recorded this pid an hour ago
        assert process_is_gone(child.pid, recorded_long_before)
    finally:
        child.kill()
        child.wait()


def test_a_launched_run_whose_process_died_is_recognised(pipeline_env):
    """The run worker logs "Started process for run (pid: N)" as Dagster's own api does; the
    launcher's health check (what run monitoring asks) reads it from a real SQLite instance."""
    import dagster as dg
    from dagster._core.events import EngineEventData

    from opentr_pipeline.defs.launcher import WatchedRunLauncher
    from opentr_pipeline.defs.reruns import dead_run_reason

    instance = dg.DagsterInstance.get()
    assert isinstance(instance.run_launcher, WatchedRunLauncher)  # dagster.yaml names it
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    run = instance.create_run_for_job(dg.GraphDefinition("noop").to_job(), run_id=None)
    instance.report_engine_event(f"Started process for run (pid: {child.pid}).", run,
                                 EngineEventData.in_process(child.pid))
    try:
        assert dead_run_reason(instance, run) is None
        assert instance.run_launcher.check_run_worker_health(run).status.value == "RUNNING"
        child.kill()
        child.wait()
        assert f"pid {child.pid}" in dead_run_reason(instance, run)
        assert instance.run_launcher.check_run_worker_health(run).status.value == "FAILED"
    finally:
        child.kill()


def test_an_instance_that_does_not_watch_run_processes_is_pointed_out(pipeline_env, tmp_path, monkeypatch):
    import dagster as dg

    from opentr_pipeline.cli.instance import monitoring_advice

    assert monitoring_advice(dg.DagsterInstance.get()) is None  # the project's dagster.yaml
    old = tmp_path / "old-home"
    old.mkdir()
    (old / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(old))
    advice = monitoring_advice(dg.DagsterInstance.get())
    assert "run_monitoring" in advice and str(old) in advice
