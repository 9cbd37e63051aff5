"""The services a study depends on go away and come back: an MLflow tracking server stopped for a while, and
PostgreSQL restarted under running workers (workers started together on a folder with no data yet: test_scale_out).
Real processes, real servers on the loopback interface; every wait bounded."""

from __future__ import annotations

import ast
import inspect
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from fashion_hpo.storage.outage import Outage, reconnecting
from fashion_hpo.storage.rdb import RECONNECTING, BudgetedStorage
from tests.conftest import TrackingServer, subprocess_env, tracking_server
from tests.test_scale_out import COUNTED, assert_every_trial_tracked, finish, load_trials, start, study_command

# Two short epochs per trial (argparse keeps the last value of a repeated flag), no baseline trial (the largest).
TINY = ("--epochs", "2", "--max-train-samples", "500", "--no-baseline-trial")
# A worker's heartbeat every second; its trial is stale after 3 s without one (reconcile waits as long).
QUICK_RECOVERY = ("--heartbeat-interval", "1", "--grace-period", "3")
# How long the tracking server stays stopped (stopping and starting it add a few seconds): MLflow's client meets a
# refused connection and retries (after 0, 4, 8, 16... s by default) until the server is back.
OUTAGE_SECONDS = 5


def wait_for_trials(
    storage: str, processes: list[subprocess.Popen[str]], finished: int, running: int = 0, timeout: float = 300
) -> None:
    """Wait until at least `finished` trials have finished and `running` trials run at once, while every process
    still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            assert process.poll() is None, process.communicate()
        states = [t.state for t in load_trials(storage)]
        if sum(s.is_finished() for s in states) >= finished and states.count(TrialState.RUNNING) >= running:
            return
        time.sleep(0.3)
    pytest.fail(f"never {finished} trial(s) finished and {running} running")


def server_env(work: Path, server: TrackingServer, **extra: str) -> dict[str, str]:
    """A CLI process's environment, tracking to `server`."""
    return {**subprocess_env(work), "MLFLOW_TRACKING_URI": server.url, **extra}


@pytest.mark.slow
def test_a_short_tracking_outage_is_ridden_through(tmp_path: Path, real_data_dir: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    with tracking_server(tmp_path, f"sqlite:///{tmp_path / 'server.db'}") as server:
        command = study_command(real_data_dir, storage, 6, *TINY)
        study = start(command, tmp_path, server_env(tmp_path, server))
        wait_for_trials(storage, [study], 1)
        server.stop()
        time.sleep(OUTAGE_SECONDS)
        assert study.poll() is None, "the study waits for the server through MLflow's retries"
        assert sum(t.state in COUNTED for t in load_trials(storage)) < 6, "the outage came in the middle"
        server.start()
        out = finish(study)
        assert "Traceback" not in out
        assert_every_trial_tracked(storage, server, 6)


@pytest.mark.slow
def test_a_long_tracking_outage_stops_the_study_and_the_rerun_continues_it(tmp_path: Path, real_data_dir: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    # MLflow's retries lowered (the user's knob) so that this outage outlasts them within a second.
    few_retries = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    with tracking_server(tmp_path, f"sqlite:///{tmp_path / 'server.db'}") as server:
        env = server_env(tmp_path, server, **few_retries)
        command = study_command(real_data_dir, storage, 6, *TINY, *QUICK_RECOVERY)
        study = start(command, tmp_path, env)
        wait_for_trials(storage, [study], 1)
        server.stop()
        out, err = study.communicate(timeout=300)
        assert study.returncode == 2, (out + err)[-3000:]
        assert "Traceback" not in out + err
        last = err.strip().splitlines()[-1]
        assert "MLFLOW_TRACKING_URI" in last and server.url in last and "rerun the same command" in last
        kept = {t.number: t.values for t in load_trials(storage) if t.state in COUNTED}
        assert 1 <= len(kept) < 6
        server.start()
        finish(start(command, tmp_path, env))
        trials = assert_every_trial_tracked(storage, server, 6)
    assert {t.number: t.values for t in trials if t.number in kept} == kept, "the finished trials, kept as they were"


def postgres_cluster_command(postgres_url: str, action: str) -> list[str]:
    """The command that restarts, stops or starts (`action`) the PostgreSQL cluster serving `postgres_url`
    (Debian's pg_ctlcluster, as root)."""
    port = sqlalchemy.engine.make_url(postgres_url).port or 5432
    problem = None
    if shutil.which("pg_lsclusters") is None or os.geteuid() != 0:
        problem = "restarting PostgreSQL needs Debian's pg_ctlcluster and root (scripts/postgres.sh sets it up)"
    else:
        listed = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True)
        for line in listed.stdout.splitlines():
            version, cluster, cluster_port = line.split()[:3]
            if cluster_port == str(port):
                return ["pg_ctlcluster", version, cluster, action, *(["-m", "fast"] if action != "start" else [])]
        problem = f"no local PostgreSQL cluster on port {port} to restart"
    if os.environ.get("CI"):
        pytest.fail(problem)
    pytest.skip(problem)


@pytest.mark.slow
def test_workers_reconnect_after_postgres_restarts(
    tmp_path: Path, real_data_dir: Path, postgres_url: str, new_database: Callable[[], str]
) -> None:
    restart = postgres_cluster_command(postgres_url, "restart")
    storage = new_database()
    # Enough trials that the restart (pg_ctlcluster starts slowly on a busy machine) still comes in the middle.
    n_trials = 24
    # The default heartbeat and grace period: a restart of seconds must not make running trials look abandoned.
    command = study_command(real_data_dir, storage, n_trials, *TINY)
    workers = [start(command, tmp_path) for _ in range(3)]
    wait_for_trials(storage, workers, 1, running=3)  # every worker in a trial, past opening the study
    subprocess.run(restart, check=True, capture_output=True, timeout=120)
    assert sum(t.state.is_finished() for t in load_trials(storage)) < n_trials, "the restart came in the middle"
    outputs = [finish(worker) for worker in workers]
    assert all("Traceback" not in out for out in outputs)
    trials = load_trials(storage)
    assert [t.number for t in trials] == list(range(n_trials)), "no trial beyond the budget"
    assert all(t.state in COUNTED for t in trials), "no trial failed or left running by the restart"


# What Optuna's cache asks of the storage only while opening or managing studies, not while trials run.
STUDY_SETUP_CALLS = {
    "create_new_study",
    "delete_study",
    "get_all_studies",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_heartbeat_interval",
    "get_heartbeat_stale_trial_callback",
    "set_study_system_attr",
}


def test_every_storage_call_of_optunas_cache_during_trials_reconnects() -> None:
    from optuna.storages import _cached_storage  # private: what it calls is what BudgetedStorage must retry

    tree = ast.parse(inspect.getsource(_cached_storage))
    called = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "_backend"
    }
    assert called - STUDY_SETUP_CALLS - {"_create_new_trial"} == set(RECONNECTING)
    # Each is BudgetedStorage's own: Optuna's method wrapped by `reconnecting`, or a method that retries its parts.
    for name in (*RECONNECTING, "_create_new_trial"):
        assert getattr(BudgetedStorage, name) is not getattr(optuna.storages.RDBStorage, name), name


class Holder:
    """What `reconnecting` needs of a storage: its Outage."""

    def __init__(self, window_s: float = 60) -> None:
        self.outage = Outage("the test's storage", window_s)


def test_an_operation_cut_by_a_lost_database_connection_runs_again() -> None:
    attempts: list[int] = []

    def flaky(_: Holder) -> str:
        attempts.append(len(attempts))
        if len(attempts) < 3:
            dropped = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
            raise optuna.exceptions.StorageInternalError("during the commit") from dropped
        return "done"

    assert reconnecting(flaky)(Holder()) == "done"
    assert len(attempts) == 3


def test_other_storage_errors_are_not_retried() -> None:
    attempts: list[int] = []

    def wrong(_: Holder) -> None:
        attempts.append(1)
        raise sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key"))

    with pytest.raises(sqlalchemy.exc.IntegrityError):
        reconnecting(wrong)(Holder())
    assert attempts == [1]
