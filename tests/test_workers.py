"""`--workers N` without training: worker failures reach the command's exit code and its run's status; signals reach the
workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from fashion_hpo.core.settings import RunSettings
from fashion_hpo.core.validation import available_cores
from fashion_hpo.pipeline import workers
from fashion_hpo.pipeline.study import run_study


def exiting_workers(*codes: int) -> list[subprocess.Popen]:
    """Processes that exit at once with these codes, standing in for worker processes."""
    return [subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"]) for code in codes]


class Listening:
    """A stand-in for a running worker process that records the signals sent to it."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def poll(self) -> None:
        """Still running."""

    def send_signal(self, signum: int) -> None:
        """Record `signum`."""
        self.received.append(signum)


def test_signals_after_the_first_interrupt_go_on_to_the_workers_until_they_stop() -> None:
    listening = Listening()
    before = signal.getsignal(signal.SIGTERM)
    with workers.passing_signals_on(cast(list[subprocess.Popen], [listening])):
        os.kill(os.getpid(), signal.SIGTERM)  # a handler runs between bytecodes of the main thread: a few, here
        for _ in range(100):
            if listening.received:
                break
            time.sleep(0.01)
    assert listening.received == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is before, "this process's own handler is back"


def test_a_failed_worker_fails_the_command_and_its_run(
    tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(workers, "start_workers", lambda settings, run_id: exiting_workers(0, 3))
    settings = RunSettings(workers=2, study_name="crew", storage=f"sqlite:///{tmp_path}/o.db", data_dir=tmp_path)
    assert run_study(settings, torch.device("cpu")) == 1
    assert "worker 2 exited with code 3" in capsys.readouterr().err
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FAILED" and run.data.params["workers"] == "2"


def test_a_killed_worker_leaves_no_run_running(
    tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Worker 2 dies by SIGKILL with its own run and a trial's run open; worker 1 ended its run itself."""

    def start_then_die(settings: RunSettings, parent_run_id: str) -> list[subprocess.Popen]:
        client = MlflowClient()
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        nested = {MLFLOW_PARENT_RUN_ID: parent_run_id}
        done = client.create_run(experiment_id, run_name="crew-worker-1", tags=nested)
        client.set_terminated(done.info.run_id, status="FINISHED")
        dead = client.create_run(experiment_id, run_name="crew-worker-2", tags=nested)
        client.create_run(experiment_id, run_name="trial-0003", tags={MLFLOW_PARENT_RUN_ID: dead.info.run_id})
        killed = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
        return [*exiting_workers(0), subprocess.Popen([sys.executable, "-c", killed])]

    monkeypatch.setattr(workers, "start_workers", start_then_die)
    settings = RunSettings(workers=2, study_name="crew", storage=f"sqlite:///{tmp_path}/o.db", data_dir=tmp_path)
    assert run_study(settings, torch.device("cpu")) == 1
    assert "worker 2 was killed by SIGKILL" in capsys.readouterr().err
    runs = {run.info.run_name: run for run in mlflow.search_runs(search_all_experiments=True, output_format="list")}
    assert {name: run.info.status for name, run in runs.items()} == {
        "crew": "FAILED",
        "crew-worker-1": "FINISHED",
        "crew-worker-2": "FAILED",
        "trial-0003": "FAILED",
    }
    assert runs["trial-0003"].data.tags["worker_failed"] == "worker 2 was killed by SIGKILL"
    assert "worker_failed" not in runs["crew-worker-1"].data.tags


def test_worker_settings_split_the_cores_and_nest_under_the_command() -> None:
    settings = workers.worker_settings(RunSettings(workers=2, threads=0, study_name="crew"), "parent-id", 2)
    assert (settings.workers, settings.register, settings.progress_bar) == (1, False, False)
    assert (settings.run_name, settings.parent_run_id) == ("crew-worker-2", "parent-id")
    assert settings.threads >= 1 and 2 * settings.threads <= max(2, available_cores()), "two workers share the cores"
