"""Optuna's database storage shared by workers: heartbeats, a study-wide trial budget, and a cross-process lock."""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import filelock
import optuna
import sqlalchemy
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from fashion_hpo.core.constants import INTERRUPTED
from fashion_hpo.core.quiet import experimental_features
from fashion_hpo.core.urls import proxy_address, sqlite_file
from fashion_hpo.storage.budget import BUDGET_STATES, RETRY_HISTORY, count_budget
from fashion_hpo.storage.grpc_calls import proxy_lock
from fashion_hpo.storage.outage import CONNECT_TIMEOUT_S, database_connection_lost
from fashion_hpo.storage.resilient import PLAIN, TRIAL_WRITES, ResilientStorage

StaleTrialCallback = Callable[[optuna.Study, FrozenTrial], None]
# How often a trial whose worker died is run again before it stays failed.
MAX_RETRIES = 2


class StudyFull(Exception):
    """The study already has `--n-trials` trials, finished or in progress; `running` of them are still running."""

    def __init__(self, running: int) -> None:
        super().__init__(f"the study has its trials ({running} still running)")
        self.running = running


def engine_url(url: str) -> str:
    """The storage URL with its SQLAlchemy driver: plain `postgresql://` means psycopg 3, the driver of our extra."""
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def budget_used(trials: list[FrozenTrial]) -> int:
    """How many of the study's trials count toward `--n-trials` (budget.count_budget counts the same in SQL).

    All but the failures that are not the trial's own: a trial stopped by an interrupt is rerun by the next
    invocation, and one whose worker died is retried (the retry, queued as WAITING, counts instead)."""
    retried = {number for t in trials for number in retry_history(t)}
    return sum(
        t.state in BUDGET_STATES
        or (t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED) and t.number not in retried)
        for t in trials
    )


def retry_history(trial: FrozenTrial) -> list[int]:
    """The numbers of the failed trials that `trial` retries (oldest first); empty for a trial of its own."""
    with experimental_features():
        return RetryHeartbeatStaleTrialCallback.retry_history(trial)


def retried_trial_number(trial: FrozenTrial) -> int | None:
    """The number of the first failed trial that `trial` retries; None for a trial of its own."""
    with experimental_features():
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def retry_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue the parameters of a trial whose worker died again, as a WAITING trial (at most MAX_RETRIES times)."""
    with experimental_features():
        RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, trial)


class BudgetedStorage(ResilientStorage):
    """An RDB storage that refuses to create a trial beyond the study-wide `max_trials`, and creates one retry per
    failed trial (whichever workers failed it, however often a lost acknowledgement made them retry).

    Counting and creating happen under a lock held across processes and machines, so concurrent workers never
    overshoot (Optuna's MaxTrialsCallback checks only after a trial ends, so workers finishing together overshoot).
    """

    def __init__(
        self, url: str, max_trials: int, heartbeat_interval: int, grace_period: int, on_stale: StaleTrialCallback | None
    ) -> None:
        # Workers started together on a new database would all create Optuna's tables at once, and PostgreSQL
        # refuses the second CREATE TABLE of a name (a duplicate key in pg_type): one at a time creates them.
        with experimental_features(), named_lock(lock_engine(url), "fashion-hpo-create-tables"):
            super().__init__(
                engine_url(url),
                name=url,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=on_stale,
                engine_kwargs=engine_kwargs(url),
            )
        self.max_trials = max_trials

    def create_checked(self, study_id: int, template: FrozenTrial, fresh: bool) -> FrozenTrial:
        """Create a trial if the budget allows; an enqueued trial replaces one and always may, once per failed trial
        it retries."""
        history = template.system_attrs.get(RETRY_HISTORY)
        if not fresh and history is None:
            return super().create_checked(study_id, template, fresh)
        with trial_lock(self.engine, study_id):
            if history is not None:
                found = self.trial_id_with(study_id, RETRY_HISTORY, history)
                return super().create_checked(study_id, template, fresh) if found is None else self.get_trial(found)
            with self.engine.connect() as conn:  # counted, not read: the same few rows at any study size
                budget = count_budget(conn, study_id)
            if budget.used >= self.max_trials:
                raise StudyFull(budget.running)
            return super().create_checked(study_id, template, fresh)


def engine_kwargs(url: str) -> dict[str, object]:
    """The storage engine's options: a pooled connection that a database restart killed is replaced when next
    checked out; PostgreSQL's connect gives up after CONNECT_TIMEOUT_S (a host that drops packets)."""
    options: dict[str, object] = {"pool_pre_ping": True}
    if sqlalchemy.engine.make_url(engine_url(url)).drivername.startswith("postgresql"):
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    return options


# The storage operations that a worker runs while its trials run, as Optuna's cache in front of the storage and
# Optuna's heartbeat thread call them (private names included; tests/test_restarts.py fails when Optuna's cache
# calls another): each rides out an outage (ResilientStorage). Opening a study does not, so that a wrong or
# unreachable --storage fails at once.
RECONNECTING = (
    *PLAIN,
    *TRIAL_WRITES,
    "_get_stale_trial_ids",
    "record_heartbeat",
    "get_trial",
    "set_trial_state_values",
)


def trial_lock(engine: sqlalchemy.engine.Engine, study_id: int) -> AbstractContextManager[None]:
    """A lock per study that every worker on this database shares, held while a trial is counted and created."""
    return named_lock(engine, f"fashion-hpo-trials-{study_id}")


def study_lock(url: str, study_name: str, purpose: str) -> AbstractContextManager[None]:
    """A lock named after a study and a purpose that every worker on the storage at `url` shares."""
    name, address = f"fashion-hpo-{purpose}-{study_name}", proxy_address(url)
    # Behind `fashion-hpo storage-proxy` a worker reaches no database: the proxy holds the lock for it.
    return proxy_lock(address, name) if address else named_lock(lock_engine(url), name)


@functools.cache
def lock_engine(url: str) -> sqlalchemy.engine.Engine:
    """An engine for named locks only: no pool, so no connection outlives the lock it held."""
    return sqlalchemy.create_engine(engine_url(url), poolclass=sqlalchemy.pool.NullPool)


@contextmanager
def named_lock(engine: sqlalchemy.engine.Engine, name: str) -> Iterator[None]:
    """A lock every process on this database shares: PostgreSQL's and MySQL's named locks, else a file (SQLite)."""
    key = zlib.crc32(name.encode())
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                unlock_unless_disconnected(conn, sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    elif engine.dialect.name == "mysql":
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT GET_LOCK(:key, -1)"), {"key": str(key)})
            try:
                yield
            finally:
                unlock_unless_disconnected(conn, sqlalchemy.text("SELECT RELEASE_LOCK(:key)"), {"key": str(key)})
    else:
        with sqlite_file_lock(engine.url.render_as_string(hide_password=False)):
            yield


def unlock_unless_disconnected(
    conn: sqlalchemy.engine.Connection, unlock: sqlalchemy.TextClause, params: dict[str, object]
) -> None:
    """Release a named lock; on a connection the database dropped there is nothing to release (the server frees a
    session's locks when it ends), and failing here would make `reconnecting` redo what the lock guarded."""
    try:
        conn.execute(unlock, params)
    except sqlalchemy.exc.DBAPIError as err:
        if not database_connection_lost(err):
            raise


def sqlite_file_lock(url: str) -> AbstractContextManager[object]:
    """An exclusive lock on a file beside a SQLite database (processes sharing SQLite share a machine anyway);
    no lock for other databases and for in-memory SQLite, which one process uses alone."""
    database = sqlite_file(url)
    return filelock.FileLock(f"{database}.lock") if database else nullcontext()
