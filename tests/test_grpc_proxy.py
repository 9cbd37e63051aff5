"""Workers behind `fashion-hpo storage-proxy` (Optuna's gRPC storage proxy): the study-wide budget, heartbeats and
named locks held through it, and real workers finishing a PostgreSQL study through it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

import fashion_hpo.storage.proxy
from fashion_hpo.core.errors import UsageError
from fashion_hpo.core.validation import check_storage
from fashion_hpo.storage.outage import StorageLost
from fashion_hpo.storage.proxy import ProxyStorage, proxy_lost_line
from fashion_hpo.storage.proxy_server import ProxiedStorage, start_proxy
from fashion_hpo.storage.rdb import StudyFull, study_lock
from tests.conftest import free_port, subprocess_env, temporary_tracking
from tests.test_scale_out import COUNTED, assert_one_run_per_trial, finish, kill_mid_trial, start, study_command

# ask() outside optimize() on a storage with heartbeats: Optuna warns, as these tests mean it.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """The proxy in this process, in front of a SQLite database in tmp_path; its address."""
    port = free_port()
    running = start_proxy(f"sqlite:///{tmp_path}/optuna.db", "127.0.0.1", port, threads=4, outage_timeout=300)
    yield "127.0.0.1", port
    running.server.stop(grace=None)


def client(address: tuple[str, int], max_trials: int, grace_period: int = 60) -> ProxyStorage:
    """A worker's storage behind the proxy with its own --n-trials and --grace-period."""
    return ProxyStorage(address, max_trials, heartbeat_interval=1, grace_period=grace_period, on_stale=None)


def test_the_budget_is_counted_behind_the_proxy_with_each_workers_n_trials(proxy: tuple[str, int]) -> None:
    study = optuna.create_study(study_name="s", storage=client(proxy, 2))
    study.ask(), study.ask()
    with pytest.raises(StudyFull) as full:
        study.ask()
    assert full.value.running == 2, "the server's StudyFull reaches the worker as StudyFull, with its count"
    larger = optuna.load_study(study_name="s", storage=client(proxy, 3))
    assert larger.ask().number == 2, "a worker's own --n-trials, not the first worker's, is the budget it asks for"
    retry = optuna.trial.create_trial(state=TrialState.WAITING, params={}, distributions={})
    study._storage.create_new_trial(study._study_id, template_trial=retry)  # a retry replaces a trial: always
    assert len(study.get_trials(deepcopy=False)) == 4


def test_heartbeats_go_through_the_proxy_and_stale_trials_follow_the_workers_grace_period(
    proxy: tuple[str, int],
) -> None:
    storage = client(proxy, 10, grace_period=1)
    study = optuna.create_study(study_name="s", storage=storage)
    silent = study.ask()
    storage.record_heartbeat(silent._trial_id)
    stale_seen: list[list[int]] = []

    def objective(trial: optuna.Trial) -> float:
        time.sleep(2.5)  # Optuna's heartbeat thread beats every second meanwhile, through the proxy
        stale_seen.append(client(proxy, 10, grace_period=1)._get_stale_trial_ids(study._study_id))
        return 0.0

    study.optimize(objective, n_trials=1)
    assert stale_seen == [[silent._trial_id]], "the running trial beat; the trial that stopped beating is stale"
    assert client(proxy, 10, grace_period=60)._get_stale_trial_ids(study._study_id) == []


def test_a_named_lock_is_held_through_the_proxy_until_its_holder_lets_go(proxy: tuple[str, int]) -> None:
    url = f"grpc://{proxy[0]}:{proxy[1]}"
    taken: list[float] = []

    def second() -> None:
        with study_lock(url, "s", "reconcile"):
            taken.append(time.monotonic())

    with study_lock(url, "s", "reconcile"):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(1.0)
        released = time.monotonic()
        assert taken == [], "a second worker waits while the first holds the lock"
    waiter.join(timeout=30)
    assert taken and taken[0] >= released


def test_proxy_urls_are_checked_like_database_urls(proxy: tuple[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fashion_hpo.storage.proxy, "PROXY_ANSWER_TIMEOUT_S", 0.5)
    check_storage(f"grpc://{proxy[0]}:{proxy[1]}")
    for wrong in ("grpc://localhost", "grpc://localhost:port", "grpc://localhost:13000/db"):
        with pytest.raises(UsageError, match="grpc://HOST:PORT"):
            check_storage(wrong)
    with pytest.raises(ConnectionError, match="no storage proxy answered"):
        ProxyStorage(("127.0.0.1", free_port()), 1, 1, 2, None)


def test_a_database_lost_past_the_window_stops_the_proxy_and_its_workers_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gRPC answers no BaseException: without the proxy stopping, the worker's call below would wait for ever."""
    port = free_port()
    running = start_proxy(f"sqlite:///{tmp_path}/optuna.db", "127.0.0.1", port, threads=2, outage_timeout=300)
    storage = client(("127.0.0.1", port), 10)
    study = optuna.create_study(study_name="s", storage=storage)

    def database_gone(*args: object, **kwargs: object) -> None:
        raise StorageLost("lost the storage sqlite:///... for more than --storage-outage-timeout 300 s")

    monkeypatch.setattr(ProxiedStorage, "create_trial", database_gone)
    with ThreadPoolExecutor(1) as pool:
        served = pool.submit(running.serve)  # as `fashion-hpo storage-proxy` serves, in its main thread
        with pytest.raises(grpc.RpcError) as call:
            study.ask()
        assert call.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        with pytest.raises(StorageLost, match="--storage-outage-timeout"):
            served.result(timeout=30)


def test_a_lost_proxy_skips_heartbeats_and_ends_the_worker_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    running = start_proxy(f"sqlite:///{tmp_path}/optuna.db", "127.0.0.1", port, threads=2, outage_timeout=300)
    storage = client(("127.0.0.1", port), 10)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    running.server.stop(grace=None).wait()
    storage.record_heartbeat(trial._trial_id)  # skipped: an error would end Optuna's heartbeat thread
    with pytest.raises(grpc.RpcError) as lost:
        study.ask()
    try:
        try:
            raise lost.value
        except grpc.RpcError:
            raise UnboundLocalError("as Optuna's _run_trial raises from its `finally` when the proxy is gone") from None
    except UnboundLocalError as masked:
        line = proxy_lost_line(masked)
    assert line is not None and line.startswith("lost the storage proxy (") and "rerun the same command" in line
    assert proxy_lost_line(ValueError("any other error")) is None


def start_proxy_process(storage: str, work: Path) -> tuple[subprocess.Popen[str], str]:
    """`fashion-hpo storage-proxy` in front of `storage`, waited for until it listens; the process and its URL."""
    port = free_port()
    command = [sys.executable, "-m", "fashion_hpo", "storage-proxy", "--storage", storage, "--port", str(port)]
    process = subprocess.Popen(
        command, cwd=work, env=subprocess_env(work), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert f"--storage grpc://127.0.0.1:{port}" in line, line + process.stdout.read()
    return process, f"grpc://127.0.0.1:{port}"


@pytest.mark.slow
def test_workers_through_the_proxy_finish_a_postgres_study_exactly_and_reclaim_a_killed_workers_trial(
    tmp_path: Path, real_data_dir: Path, new_database: Callable[[], str]
) -> None:
    """Slow (25-95 s here): three real worker processes, one SIGKILLed mid-trial, on real PostgreSQL."""
    database = new_database()
    proxy, url = start_proxy_process(database, tmp_path)
    try:
        # Epochs long enough (about a second each) that the 0.3 s poll finds the doomed worker inside a trial.
        slow = ["--epochs", "3", "--max-train-samples", "20000", "--pruner", "none", "--no-baseline-trial"]
        command = study_command(real_data_dir, url, 6, *slow, "--heartbeat-interval", "1", "--grace-period", "3")
        doomed = start([*command, "--run-name", "doomed"], tmp_path)
        survivors = [start([*command, "--run-name", f"survivor-{i}"], tmp_path) for i in range(2)]
        with temporary_tracking(tmp_path):
            killed = kill_mid_trial(database, doomed, "doomed")
            outputs = [finish(worker) for worker in survivors]
            trials = assert_one_run_per_trial(database, 6)
            killed_run = MlflowClient().get_run(killed.system_attrs["mlflow_run_id"])
    finally:
        os.kill(proxy.pid, signal.SIGTERM)
        proxy.wait(timeout=30)
    assert all("Traceback" not in out for out in outputs)
    assert proxy.returncode == 0
    assert trials[killed.number].state == TrialState.FAIL and killed_run.info.status == "FAILED"
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == killed.number)
    assert retry.params == trials[killed.number].params and retry.state in COUNTED
