"""The storage's database goes away: retried writes that cannot double (a lost acknowledgement injected after real
commits), a trial reclaimed while its worker could not reach the database, and real PostgreSQL stopped under two
workers for four times their --grace-period, then for longer than --storage-outage-timeout."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import optuna
import psycopg
import pytest
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.pool import PoolProxiedConnection

from fashion_hpo.core.settings import RunSettings
from fashion_hpo.search.loop import run_search
from fashion_hpo.storage import outage
from fashion_hpo.storage.budget import BUDGET_STATES
from fashion_hpo.storage.rdb import BudgetedStorage, StudyFull, budget_used, engine_url, retry_stale_trial
from fashion_hpo.storage.resilient import run_trials_here
from fashion_hpo.storage.tokens import CREATED_BY
from tests.test_restarts import QUICK_RECOVERY, TINY, load_trials, postgres_cluster_command, wait_for_trials
from tests.test_scale_out import COUNTED, finish, start, study_command

STEPS = 3


def objective(trial: optuna.Trial) -> float:
    """A trial with every kind of write: params, intermediate values, user attributes; its value is its `x`."""
    x = trial.suggest_float("x", 0, 1)
    trial.suggest_int("n", 1, 3)
    for step in range(STEPS):
        trial.report(x + step, step)
        trial.set_user_attr("step", step)
    return x


# The code of what `reconnecting` wraps each storage operation in: one frame per call, through all its attempts.
RETRIED_CALL = outage.reconnecting(lambda storage: None).__code__


def retried_call(frame: FrameType | None) -> FrameType | None:
    """The frame of the retried storage operation that `frame` runs in, if any."""
    while frame is not None and frame.f_code is not RETRIED_CALL:
        frame = frame.f_back
    return frame


def lose_first_acknowledgements(storage: BudgetedStorage) -> list[str]:
    """Once in each call of a retried storage operation, after the server made its COMMIT durable, raise what psycopg
    raises when the connection drops before the server's reply arrives: the client never learns that the commit
    happened, and SQLAlchemy invalidates the connection as after a real drop. Returns the operations so cut off."""
    dialect, lost = storage.engine.dialect, []
    cut: list[FrameType] = []
    commit = dialect.do_commit

    def do_commit(dbapi_connection: PoolProxiedConnection) -> None:
        commit(dbapi_connection)
        call = retried_call(sys._getframe())
        if call is not None and all(call is not seen for seen in cut):
            cut.append(call)
            lost.append(call.f_locals["operation"].__name__)
            raise psycopg.OperationalError("server closed the connection unexpectedly (after its COMMIT)")

    dialect.do_commit = do_commit  # type: ignore[method-assign]  # this engine's dialect only
    return lost


def test_lost_acknowledgements_double_no_trial_value_or_attribute(
    new_database: Callable[[], str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(outage, "RECONNECT_FIRST_PAUSE_S", 0.01)  # the retries' pauses: this test's time
    url, n_trials = new_database(), 4
    storage = BudgetedStorage(url, n_trials, heartbeat_interval=1, grace_period=30, on_stale=retry_stale_trial)
    run_trials_here(storage, 60)
    study = optuna.create_study(study_name="acks", storage=storage, direction="maximize")
    study.enqueue_trial({"x": 0.5, "n": 2})  # claimed from the queue: the claim's acknowledgement is lost too
    lost = lose_first_acknowledgements(storage)
    study.optimize(objective, n_trials=n_trials)
    with pytest.raises(StudyFull):  # the budget, counted after the lost acknowledgements, is not overrun
        study.optimize(objective, n_trials=1)
    every_write = {"_create_once", "_claim", "_finish", "_set_trial_param", "set_trial_intermediate_value"}
    assert every_write | {"set_trial_user_attr", "_record_heartbeat"} <= set(lost), lost
    assert "after another worker had failed it" not in caplog.text, "a retried finish found its own commit"

    trials = optuna.load_study(study_name="acks", storage=engine_url(url)).get_trials()
    assert [t.number for t in trials] == list(range(n_trials)), "no trial created twice"
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[0].params == {"x": 0.5, "n": 2}, "the queued trial was claimed once and ran"
    for trial in trials:
        assert trial.intermediate_values == {step: trial.params["x"] + step for step in range(STEPS)}
        assert trial.user_attrs == {"step": STEPS - 1}
        assert trial.value == trial.params["x"]
    with sqlalchemy.create_engine(engine_url(url)).connect() as conn:
        rows = {
            table: conn.execute(sqlalchemy.text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in (
                "trials",
                "trial_values",
                "trial_params",
                "trial_intermediate_values",
                "trial_user_attributes",
            )
        }
        tokens = conn.execute(
            sqlalchemy.text("SELECT count(DISTINCT value_json) FROM trial_system_attributes WHERE key = :k"),
            {"k": CREATED_BY},
        ).scalar_one()
    assert rows == {
        "trials": n_trials,
        "trial_values": n_trials,
        "trial_params": 2 * n_trials,
        "trial_intermediate_values": STEPS * n_trials,
        "trial_user_attributes": n_trials,
    }
    assert tokens == n_trials


def test_a_stale_trial_failed_by_two_workers_is_retried_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'o.db'}"
    storage = BudgetedStorage(url, 3, heartbeat_interval=1, grace_period=2, on_stale=None)
    study = optuna.create_study(study_name="twice", storage=storage)
    trial = study.ask()
    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    failed = storage.get_trial(trial._trial_id)
    retry_stale_trial(study, failed)
    retry_stale_trial(study, failed)  # as a second worker would, had its failing of the trial seemed to fail
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]


def test_no_trial_is_judged_stale_until_the_workers_had_time_to_beat_after_an_outage(tmp_path: Path) -> None:
    storage = BudgetedStorage(f"sqlite:///{tmp_path / 'o.db'}", 3, heartbeat_interval=1, grace_period=1, on_stale=None)
    study = optuna.create_study(study_name="settle", storage=storage)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.2)  # the heartbeat is older than the grace period: as after an outage, the trial looks abandoned
    study_id = study._study_id
    assert storage._get_stale_trial_ids(study_id) == [trial._trial_id]
    storage.outage.back_at = time.monotonic()  # this worker has just reconnected
    assert storage._get_stale_trial_ids(study_id) == [], "its worker may not have written its heartbeat yet"
    settle = 1 + outage.RECONNECT_MAX_PAUSE_S + outage.CONNECT_TIMEOUT_S
    storage.outage.back_at = time.monotonic() - settle  # every live worker has beaten since
    assert storage._get_stale_trial_ids(study_id) == [trial._trial_id]


def quick_settings(tmp_path: Path, n_trials: int) -> RunSettings:
    """A search of `n_trials` on a SQLite file, heartbeats every second."""
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    return RunSettings(study_name="reclaimed", storage=storage, n_trials=n_trials, timeout=0, heartbeat_interval=1)


@pytest.mark.parametrize("when", ["during the trial", "after its last report"])
def test_a_trial_reclaimed_while_its_worker_waited_is_replaced_by_its_retry(tmp_path: Path, when: str) -> None:
    settings, reclaimed = quick_settings(tmp_path, 3), []
    worker = BudgetedStorage(settings.storage, 3, 1, 2, on_stale=retry_stale_trial)
    run_trials_here(worker, 60)
    other = BudgetedStorage(settings.storage, 3, 1, 2, on_stale=retry_stale_trial)
    study = optuna.create_study(study_name="reclaimed", storage=worker, direction="maximize")
    elsewhere = optuna.load_study(study_name="reclaimed", storage=other)

    def reclaim(trial: optuna.Trial) -> None:
        """What another worker's stale check does to a trial whose heartbeat stopped."""
        other.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        retry_stale_trial(elsewhere, other.get_trial(trial._trial_id))
        reclaimed.append(trial.number)

    def reclaimed_once(trial: optuna.Trial) -> float:
        if not reclaimed and when == "during the trial":
            reclaim(trial)
        value = objective(trial)
        if not reclaimed:
            reclaim(trial)
        return value

    run_search(study, reclaimed_once, settings)
    trials = study.get_trials()
    assert reclaimed == [0]
    assert trials[0].state == TrialState.FAIL
    assert trials[1].system_attrs["retry_history"] == [0] and trials[1].state == TrialState.COMPLETE
    assert sum(t.state in BUDGET_STATES for t in trials) == 3 == budget_used(trials), "the retry counts instead"
    assert len(trials) == 4


@contextmanager
def postgres_stopped(postgres_url: str) -> Iterator[Callable[[], None]]:
    """PostgreSQL stopped until the block calls what it yields (other tests share it: always started again)."""
    stop, start_again = (postgres_cluster_command(postgres_url, action) for action in ("stop", "start"))
    subprocess.run(stop, check=True, capture_output=True, timeout=120)
    started = False

    def back() -> None:
        nonlocal started
        if not started:
            subprocess.run(start_again, check=True, capture_output=True, timeout=120)
            started = True

    try:
        yield back
    finally:
        back()


def assert_exact_total(storage: str, n_trials: int) -> list[FrozenTrial]:
    """`n_trials` trials count, none beyond; none is left running; each failure was retried."""
    trials = load_trials(storage)
    assert all(t.state.is_finished() for t in trials)
    assert sum(t.state in COUNTED for t in trials) == n_trials == budget_used(trials)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    assert {t.number for t in trials if t.state == TrialState.FAIL} <= retried, "every failed trial was retried"
    return trials


# A heartbeat every second and a 5 s grace period (the defaults are 10 s and 60 s): the outage below outlasts the
# grace period four times over with a 20 s wait instead of a 70 s one, so that every running trial's heartbeat is
# stale when the database comes back, and only the workers' settling after an outage keeps those trials alive.
RIDE_OUT_RECOVERY = ("--heartbeat-interval", "1", "--grace-period", "5")
RIDE_OUT_SECONDS = 20


@pytest.mark.slow
def test_two_workers_ride_out_a_postgres_outage_longer_than_their_grace_period(
    tmp_path: Path, real_data_dir: Path, postgres_url: str, new_database: Callable[[], str]
) -> None:
    """Slow: PostgreSQL stays stopped for 20 s, four times the workers' grace period, within the default
    --storage-outage-timeout (300 s)."""
    storage, n_trials = new_database(), 8
    command = study_command(real_data_dir, storage, n_trials, *TINY, *RIDE_OUT_RECOVERY)
    workers = [start(command, tmp_path) for _ in range(2)]
    wait_for_trials(storage, workers, 1, running=2)
    with postgres_stopped(postgres_url) as back:
        time.sleep(RIDE_OUT_SECONDS)
        assert all(worker.poll() is None for worker in workers), "the workers wait for the database"
        back()
    outputs = [finish(worker) for worker in workers]
    for out in outputs:
        assert "Traceback" not in out
        assert out.count("Lost the connection to the storage") == 1, out[-3000:]
        assert out.count("Reconnected to the storage") == 1
    trials = assert_exact_total(storage, n_trials)
    assert [t.number for t in trials] == list(range(n_trials)), "no trial failed, lost or added by the outage"


@pytest.mark.slow
def test_an_outage_past_the_window_stops_the_workers_and_the_rerun_reaches_the_total(
    tmp_path: Path, real_data_dir: Path, postgres_url: str, new_database: Callable[[], str]
) -> None:
    """Slow: two workers wait through a 10 s window on a stopped PostgreSQL, then a rerun finishes the study."""
    storage, n_trials = new_database(), 6
    # Trials of a few seconds (the last --max-train-samples counts): both workers have one running when it stops.
    longer = ("--max-train-samples", "5000")
    # A 10 s window: the reconnect pauses (0.5 s doubling to 5 s) reach their longest within it.
    window = ("--storage-outage-timeout", "10")
    command = study_command(real_data_dir, storage, n_trials, *TINY, *longer, *QUICK_RECOVERY, *window)
    workers = [start(command, tmp_path) for _ in range(2)]
    wait_for_trials(storage, workers, 1, running=2)
    with postgres_stopped(postgres_url):
        ended = [worker.communicate(timeout=120) for worker in workers]
    password = sqlalchemy.engine.make_url(storage).password
    for worker, (out, err) in zip(workers, ended, strict=True):
        assert worker.returncode == 2, (out + err)[-3000:]
        assert "Traceback" not in out + err
        last = err.strip().splitlines()[-1]
        assert "--storage-outage-timeout 10 s" in last and storage.split("@")[-1] in last, last
        assert not password or password not in out + err
    finish(start(command, tmp_path))
    assert_exact_total(storage, n_trials)
