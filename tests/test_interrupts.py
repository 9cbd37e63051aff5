"""Ctrl-C and SIGTERM on a real study process: finished trials kept, no run left RUNNING, right exit code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from fashion_hpo.core.process import StopSignals, Terminated, handle_interrupts
from tests.conftest import REPO, subprocess_env, temporary_tracking

STUDY = "interrupted"


def start_study(work: Path, data_dir: Path, *extra: str) -> subprocess.Popen[str]:
    """A study whose trials take a few seconds each, so that a signal lands inside one."""
    command = [sys.executable, "-m", "fashion_hpo", "study", "--study-name", STUDY, "--n-trials", "100"]
    command += ["--epochs", "10", "--max-train-samples", "3000", "--timeout", "0", "--pruner", "none"]
    command += ["--data-dir", str(data_dir), "--storage", f"sqlite:///{work / 'optuna.db'}", *extra]
    return subprocess.Popen(
        command, cwd=work, env=subprocess_env(work), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(
    work: Path,
    process: subprocess.Popen[str],
    condition: Callable[[list[FrozenTrial]], bool],
    timeout: float = 60,
    every: float = 0.02,  # often: a trial here takes about a second
) -> None:
    """Block until the study exists and its trials meet `condition`, polling `every` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            if condition(optuna.load_study(study_name=STUDY, storage=f"sqlite:///{work / 'optuna.db'}").trials):
                return
        except KeyError:  # the study is not created yet
            pass
        time.sleep(every)
    pytest.fail("the study never got there")


def wait_for_finished_trial(work: Path, process: subprocess.Popen[str]) -> None:
    """Block until the study has one finished trial (and so another one running)."""
    wait_for(work, process, lambda trials: any(t.state.is_finished() for t in trials), timeout=240, every=0.5)
    time.sleep(1.5)  # well inside the next trial


def assert_closed_cleanly(work: Path, parent_status: tuple[str, ...] = ("KILLED",)) -> None:
    """No trial or run is left RUNNING; the interrupted trial's run and the parent are KILLED."""
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{work / 'optuna.db'}")
    trials = study.get_trials(deepcopy=False)
    assert TrialState.RUNNING not in {t.state for t in trials}
    assert any(t.state == TrialState.COMPLETE for t in trials), "finished trials are kept"
    with temporary_tracking(work):
        client = MlflowClient()
        runs = client.search_runs([client.get_experiment_by_name(STUDY).experiment_id])
        assert "RUNNING" not in {run.info.status for run in runs}
        parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
        assert len(parents) == 1 and parents[0].info.status in parent_status
        assert parents[0].data.tags["interrupted"] == "true"
        assert "trials_finished" in parents[0].data.metrics, "the summary is logged"
        by_id = {run.info.run_id: run for run in runs}
        for trial in trials:
            run = by_id[trial.system_attrs["mlflow_run_id"]]
            expected = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "KILLED"}
            assert run.info.status == expected[trial.state], (trial.number, trial.state)


def test_the_second_stop_signal_waits_for_the_clean_up_and_the_third_does_not(
    capfd: pytest.CaptureFixture[str],
) -> None:
    handler = StopSignals("fashion-hpo study")
    with pytest.raises(KeyboardInterrupt) as first:
        handler(signal.SIGINT, None)
    assert not isinstance(first.value, Terminated)
    handler(signal.SIGTERM, None)  # held back: returns
    assert capfd.readouterr().err == (
        "\nfashion-hpo study: SIGTERM while stopping: finishing the clean-up first (SIGTERM again cuts it short)\n"
    )
    with pytest.raises(Terminated):
        handler(signal.SIGTERM, None)


def test_sigterm_first_raises_terminated() -> None:
    with pytest.raises(Terminated):
        StopSignals("fashion-hpo study")(signal.SIGTERM, None)


def test_each_command_run_in_one_process_counts_its_own_signals() -> None:
    handle_interrupts("fashion-hpo study")
    handle_interrupts("fashion-hpo register")
    handlers = [signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)]
    assert all(isinstance(h, StopSignals) and h.prog == "fashion-hpo register" for h in handlers)
    assert handlers[0] is handlers[1], "one count for both signals"


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_closes_runs_and_keeps_trials(tmp_path: Path, real_data_dir: Path, signum: int, code: int) -> None:
    process = start_study(tmp_path, real_data_dir)
    wait_for_finished_trial(tmp_path, process)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == code, err[-2000:]
    assert "Number of finished trials" in out
    assert "interrupted" in err and "Traceback" not in err
    assert_closed_cleanly(tmp_path)
    if signum == signal.SIGINT:
        assert_rerun_continues(tmp_path, real_data_dir)


def assert_rerun_continues(work: Path, data_dir: Path) -> None:
    """Rerunning the command after an interrupt continues the study; the interrupted trial is not counted."""
    trials = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{work / 'optuna.db'}").trials
    before, counted = len(trials), sum(t.state != TrialState.FAIL for t in trials)
    rerun = start_study(work, data_dir, "--n-trials", str(counted + 1), "--no-register")
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-2000:]
    trials = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{work / 'optuna.db'}").trials
    assert len(trials) == before + 1 and trials[-1].number == before
    assert trials[-1].state == TrialState.COMPLETE


@pytest.mark.e2e
@pytest.mark.slow
def test_second_ctrl_c_during_cleanup_still_leaves_nothing_running(tmp_path: Path, real_data_dir: Path) -> None:
    process = start_study(tmp_path, real_data_dir)
    wait_for_finished_trial(tmp_path, process)
    wait_for(
        tmp_path, process, lambda trials: any(t.state == TrialState.RUNNING and t.intermediate_values for t in trials)
    )
    process.send_signal(signal.SIGINT)  # inside a trial's training
    wait_for(tmp_path, process, lambda trials: any(t.state == TrialState.FAIL for t in trials))  # the clean-up began
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "SIGINT while stopping: finishing the clean-up first" in err, "the second Ctrl-C came during the clean-up"
    assert "interrupted (SIGINT)" in err and "Traceback" not in err
    assert_closed_cleanly(tmp_path)


def mlflow_run(work: Path, data_dir: Path, **params: object) -> subprocess.Popen[str]:
    """`mlflow run` of this project in its own process group, as a terminal would start it."""
    command = ["mlflow", "run", str(REPO), "--env-manager", "local", "--experiment-name", STUDY]
    for key, value in {"data_dir": data_dir, "storage": f"sqlite:///{work / 'optuna.db'}", **params}.items():
        command += ["-P", f"{key}={value}"]
    return subprocess.Popen(
        command,
        cwd=work,
        env=subprocess_env(work),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def project_runs(work: Path) -> list[str]:
    """Statuses of the top-level runs of the experiment `mlflow run` used."""
    with temporary_tracking(work):
        client = MlflowClient()
        runs = client.search_runs([client.get_experiment_by_name(STUDY).experiment_id])
        return [run.info.status for run in runs if "mlflow.parentRunId" not in run.data.tags]


@pytest.mark.e2e
@pytest.mark.slow
def test_ctrl_c_under_mlflow_run_ends_the_project_run_interrupted(tmp_path: Path, real_data_dir: Path) -> None:
    process = mlflow_run(
        tmp_path, real_data_dir, study_name=STUDY, n_trials=100, epochs=10, max_train_samples=3000, pruner="none"
    )
    wait_for_finished_trial(tmp_path, process)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0
    # `mlflow run` passes the interrupt on as SIGTERM while the study is still closing its runs: held back.
    assert "fashion-hpo study: SIGTERM while stopping: finishing the clean-up first" in err
    assert "fashion-hpo study: interrupted (SIGINT)" in err and "Traceback" not in err
    # The study ends the project run KILLED; `mlflow run` (3.17) then overwrites it with FAILED, because its
    # _maybe_set_run_terminated compares the string status with integer enums. Either way: not FINISHED,
    # not RUNNING, and tagged interrupted=true.
    assert_closed_cleanly(tmp_path, parent_status=("KILLED", "FAILED"))


@pytest.mark.e2e
@pytest.mark.slow
def test_bad_mlproject_parameter_fails_the_run_with_one_line(tmp_path: Path, real_data_dir: Path) -> None:
    process = mlflow_run(tmp_path, real_data_dir, n_trials="ten")
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "fashion-hpo study: error: argument --n-trials: expected an integer, got 'ten'" in err
    assert "Traceback" not in err
    assert project_runs(tmp_path) == ["FAILED"]
