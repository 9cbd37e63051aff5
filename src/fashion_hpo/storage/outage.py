"""Riding out an outage of the storage's database: one window per process, one line when it starts and one when it
ends, and the one-line stop past the window. Imports nothing heavy: the command line catches StorageLost."""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from fashion_hpo.core.settings import RunSettings

# The default of --storage-outage-timeout (storage made by other means, as the proxy's, use it too): 300 s, about as
# long as MLflow's client retries a tracking server by default (7 retries, backoff factor 2: about 4 minutes), so
# that both services get the same patience; a managed PostgreSQL's failover or a minor-version restart takes seconds
# to a couple of minutes.
DEFAULT_OUTAGE_TIMEOUT_S = RunSettings.storage_outage_timeout
# The pause before each new attempt: 0.5 s doubling, at most RECONNECT_MAX_PAUSE_S; so a live worker's heartbeat
# thread writes again within RECONNECT_MAX_PAUSE_S of the database's return (see Outage.settling).
RECONNECT_FIRST_PAUSE_S = 0.5
RECONNECT_MAX_PAUSE_S = 5.0
# How long one attempt to open a connection may take: a database host that drops packets would otherwise hold an
# attempt for the operating system's TCP timeout (minutes), far past the window.
CONNECT_TIMEOUT_S = 10


class StorageLost(BaseException):
    """The storage's database stayed out of reach longer than --storage-outage-timeout: this process stops.

    Not an Exception, as KeyboardInterrupt is not: Optuna must neither catch it as the trial's failure nor tell the
    trial to a database it cannot reach. The trial stays RUNNING there; once its heartbeat is older than the grace
    period the next run fails and retries it, so it does not count and the study keeps its exact total."""


class TrialReclaimed(BaseException):
    """This worker's running trial was failed (and retried) by another worker while this one could not write its
    heartbeat: the trial stops here, its retry counts instead. Not an Exception, for the reasons of StorageLost."""


class Outage:
    """This process's view of the storage's database, shared by its threads (the trials' and Optuna's heartbeat
    thread): reachable, or lost since when; and when it last came back."""

    def __init__(self, storage_name: str, window_s: float) -> None:
        self.storage_name, self.window_s = storage_name, window_s
        self.lost_since: float | None = None
        self.gave_up = False
        self.back_at = float("-inf")
        self.lock = threading.Lock()
        self.lost_error: Callable[[str], BaseException] = StorageLost

    def lost(self, attempt_started: float) -> None:
        """An attempt that started at `attempt_started` lost the database: the first loss of an outage says so, once.
        An attempt that started before the database came back tells nothing new (another thread saw it return)."""
        with self.lock:
            if self.lost_since is None and attempt_started >= self.back_at:
                self.lost_since = time.monotonic()
                logging.getLogger(__name__).warning(
                    "Lost the connection to the storage %s; waiting up to %g s for it to come back "
                    "(--storage-outage-timeout)",
                    self.storage_name,
                    self.window_s,
                )

    def reached(self) -> bool:
        """An operation reached the database; True the first time after an outage (said once)."""
        if self.lost_since is None and not self.gave_up:  # the usual case, without taking the lock
            return False
        with self.lock:
            if self.lost_since is None:
                self.gave_up = False
                return False
            waited = time.monotonic() - self.lost_since
            self.lost_since, self.gave_up, self.back_at = None, False, time.monotonic()
        logging.getLogger(__name__).warning("Reconnected to the storage %s after %.0f s", self.storage_name, waited)
        return True

    def exceeded(self) -> bool:
        """Whether the outage has lasted the whole window (measured from its start, whichever thread saw it first,
        so that an outage the heartbeat thread met first is not waited through again by the trial's thread)."""
        since = self.lost_since
        return since is not None and time.monotonic() - since >= self.window_s

    def give_up(self) -> BaseException:
        """Past the window: from now on every operation of this process fails at once (see reconnecting), unless
        another thread reached the database meanwhile. StorageLost, or the error a storage chose (`lost_error`)."""
        with self.lock:
            self.gave_up = self.gave_up or self.exceeded()
        return self.lost_error(
            f"lost the storage {self.storage_name} for more than --storage-outage-timeout {self.window_s:g} s; "
            "rerun the same command once it is back: the study continues, and the trial cut off here is retried"
        )

    def settling(self, settle_s: float) -> bool:
        """Whether this process came back from an outage less than `settle_s` ago (see
        ResilientStorage._get_stale_trial_ids)."""
        return time.monotonic() - self.back_at < settle_s


def database_connection_lost(err: BaseException) -> bool:
    """Whether `err`, or an error it was raised from, is the database dropping or refusing a connection (as in a
    restart), or SQLite's file busy: a disconnect SQLAlchemy detected, or an OperationalError of that kind (not a full
    disk, a deadlock or a cancelled statement, which waiting does not mend). Optuna wraps them in
    StorageInternalError."""
    from fashion_hpo.core.process import raised_from

    return raised_from(err, connection_failure)


# PostgreSQL's SQLSTATEs of a connection lost or refused: class 08 (connection exception), and the server shutting
# down or starting (57P01-57P03).
CONNECTION_SQLSTATES = ("08", "57P01", "57P02", "57P03")
SQLITE_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def connection_failure(cause: BaseException) -> bool:
    """Whether one error (not its causes) is a connection lost or refused, or SQLite's file busy."""
    import sqlalchemy.exc

    if isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated:
        return True
    if not isinstance(cause, sqlalchemy.exc.OperationalError):
        return False
    if isinstance(cause.orig, sqlite3.Error):
        return getattr(cause.orig, "sqlite_errorcode", None) in SQLITE_BUSY_CODES
    sqlstate = getattr(cause.orig, "sqlstate", None)  # psycopg's; None where the client could not connect at all
    return sqlstate is None or sqlstate.startswith(CONNECTION_SQLSTATES)


class HasOutage(Protocol):
    """A storage that keeps an Outage."""

    outage: Outage


S = TypeVar("S", bound=HasOutage)
P = ParamSpec("P")
R = TypeVar("R")


def reconnecting(operation: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """A storage method run again while its database drops or refuses connections, until the storage's Outage has
    lasted its window; then StorageLost (and after one attempt, for every later call, until one reaches the
    database).

    A retried operation must be idempotent or check what its lost attempt did: see BudgetedStorage."""
    import tenacity  # deferred: the command line imports this module for StorageLost alone

    @functools.wraps(operation)
    def run(storage: S, *args: P.args, **kwargs: P.kwargs) -> R:
        outage = storage.outage
        started = [time.monotonic()]

        def attempt() -> R:
            started[0] = time.monotonic()
            return operation(storage, *args, **kwargs)

        retry = tenacity.Retrying(
            retry=tenacity.retry_if_exception(database_connection_lost),
            stop=lambda _: outage.gave_up or outage.exceeded(),
            wait=tenacity.wait_exponential(multiplier=RECONNECT_FIRST_PAUSE_S, max=RECONNECT_MAX_PAUSE_S),
            before_sleep=lambda _: outage.lost(started[0]),
            reraise=True,
        )
        try:
            result = retry(attempt)
        except Exception as err:
            if not database_connection_lost(err):
                raise
            raise outage.give_up() from None
        if outage.reached():
            after_reconnect = getattr(storage, "after_reconnect", None)
            if after_reconnect is not None:
                after_reconnect()
        return result

    return run
