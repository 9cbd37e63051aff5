"""Optuna's RDB storage riding out database outages: each operation retried through an outage of up to the window
(storage.outage), none doubled by its retry, no trial reclaimed because the database (not its worker) was away.

What a retry after a lost acknowledgement (the commit reached the database, its answer did not) does, per operation:
- reads (`_get_trials`, `get_trial`, `_get_best_trial_id`, `_get_stale_trial_ids`, the study's directions and
  attributes, a trial's id by number): nothing to double.
- `set_trial_user_attr`, `set_trial_system_attr`: upserts in Optuna (ON CONFLICT DO UPDATE): naturally idempotent.
- `set_trial_intermediate_value`, `set_study_user_attr`, `record_heartbeat`: Optuna looks the row up and updates it,
  else inserts it (a unique key per trial and step / study and key / trial): the retry updates to the same value.
- `_set_trial_param`: a unique key per trial and name, and Optuna ignores the retry's IntegrityError: idempotent.
- `_create_new_trial`: checked. The trial's insert carries a token (tokens.CREATED_BY); a retry (ours, or Optuna's
  own five in `_create_new_trial`) first looks the token up and returns the trial it finds.
- `set_trial_state_values`: checked. A claim (WAITING -> RUNNING) writes a token in its transaction and a retry
  finds it; a retried finish that finds the trial already in that state with those values succeeded."""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

import optuna
import sqlalchemy.orm
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from fashion_hpo.core.urls import redact_url
from fashion_hpo.storage.outage import (
    CONNECT_TIMEOUT_S,
    DEFAULT_OUTAGE_TIMEOUT_S,
    RECONNECT_MAX_PAUSE_S,
    Outage,
    StorageLost,
    TrialReclaimed,
    reconnecting,
)
from fashion_hpo.storage.tokens import CREATED_BY, claim, claimed_with, transaction, trial_with_attr, with_token

P = ParamSpec("P")
R = TypeVar("R")
Write = Callable[Concatenate["ResilientStorage", int, P], R]


def started_now(template: FrozenTrial | None) -> FrozenTrial | None:
    """A new running trial's template starting now, at its insert (as Optuna's own new trial does), not when the
    worker began to create it: the wait for the budget's lock and count are the worker's, not the trial's."""
    if template is None or template.state != TrialState.RUNNING:
        return template
    started = copy.copy(template)
    started.datetime_start = datetime.now()
    return started


def stop_if_reclaimed(write: Write[P, R]) -> Write[P, R]:
    """A write to a trial that this worker runs, which raises TrialReclaimed when another worker failed the trial."""

    @functools.wraps(write)
    def run(storage: ResilientStorage, trial_id: int, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return write(storage, trial_id, *args, **kwargs)
        except optuna.exceptions.UpdateFinishedTrialError:
            if trial_id not in storage.running_here:
                raise
            storage.running_here.discard(trial_id)
            raise TrialReclaimed(
                f"trial id {trial_id} was failed by another worker while this one could not write its heartbeat; "
                "it stops here and its retry counts instead"
            ) from None

    return run


class ResilientStorage(RDBStorage):
    """An RDB storage whose operations during trials ride out an outage of the database (see the module's docstring).

    `runs_trials` (run_trials_here) marks a worker's storage, whose trials run in this process: a trial another
    worker reclaimed stops here (TrialReclaimed) rather than failing Optuna's tell."""

    def __init__(self, url: str, *, name: str | None = None, **kwargs: Any) -> None:
        """Optuna's storage at `url`; `name` is the URL as the user gave it, for the outage lines (password hidden)."""
        super().__init__(url, **kwargs)
        self.outage = Outage(redact_url(name or url), DEFAULT_OUTAGE_TIMEOUT_S)
        self.runs_trials = False
        self.running_here: set[int] = set()  # the running trials this process created or claimed
        self.prepared: set[str] = set()  # the tokens of the trials whose insert was attempted

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        """Create a trial carrying a fresh token, so that no retry creates it twice."""
        token = uuid.uuid4().hex
        trial = self._create_once(study_id, template_trial, token, [])
        self.prepared.discard(token)
        if self.runs_trials and trial.state == TrialState.RUNNING:
            self.running_here.add(trial._trial_id)
        return trial

    @reconnecting
    def _create_once(self, study_id: int, template: FrozenTrial | None, token: str, attempts: list[int]) -> FrozenTrial:
        """One attempt: the trial an earlier attempt committed, if any; else create_checked."""
        if attempts:
            found = self.trial_id_with(study_id, CREATED_BY, token)
            if found is not None:
                return RDBStorage.get_trial(self, found)
        attempts.append(1)
        return self.create_checked(study_id, with_token(template, token), fresh=template is None)

    def create_checked(self, study_id: int, template: FrozenTrial, fresh: bool) -> FrozenTrial:
        """Insert the trial `template` describes (`fresh`: a new trial, not an enqueued one); BudgetedStorage checks."""
        return super()._create_new_trial(study_id, template)

    def _get_prepared_new_trial(
        self, study_id: int, template_trial: FrozenTrial | None, session: sqlalchemy.orm.Session
    ) -> Any:
        """Optuna's insert of a new trial, which Optuna's `_create_new_trial` retries itself: after a first attempt,
        the trial that attempt committed when the token finds one. Private in Optuna: overridden here alone, and
        tests/test_outages.py::test_lost_acknowledgements_double_no_trial_value_or_attribute fails if it changes."""
        token = template_trial.system_attrs.get(CREATED_BY) if template_trial is not None else None
        if token is not None:
            if token in self.prepared:
                found = trial_with_attr(session, study_id, CREATED_BY, token)
                if found is not None:
                    return found
            self.prepared.add(token)
        return super()._get_prepared_new_trial(study_id, started_now(template_trial), session)

    def trial_id_with(self, study_id: int, key: str, value: object) -> int | None:
        """The id of the study's trial whose system attribute `key` holds `value`, if one does."""
        with transaction(self.scoped_session) as session:
            found = trial_with_attr(session, study_id, key, value)
            return None if found is None else found.trial_id

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        """Claim a queued trial (state RUNNING) or finish one, each checked on a retry (see the module's docstring)."""
        if state == TrialState.RUNNING:
            claimed = self._claim(trial_id, uuid.uuid4().hex, [])
            if claimed and self.runs_trials:
                self.running_here.add(trial_id)
            return claimed
        finished = self._finish(trial_id, state, values, [])
        self.running_here.discard(trial_id)
        return finished

    @reconnecting
    def _claim(self, trial_id: int, token: str, attempts: list[int]) -> bool:
        """One attempt to claim a WAITING trial; on a retry, True when the first attempt's claim committed."""
        with transaction(self.scoped_session) as session:
            if attempts and claimed_with(session, trial_id, token):
                return True
            attempts.append(1)
            return claim(session, trial_id, token)

    @reconnecting
    def _finish(self, trial_id: int, state: TrialState, values: Sequence[float] | None, attempts: list[int]) -> bool:
        """One attempt to finish a trial; a retry that finds it finished so succeeded; this worker's trial that another
        worker failed meanwhile is left failed, its retry counting instead."""
        retried = bool(attempts)
        attempts.append(1)
        try:
            return RDBStorage.set_trial_state_values(self, trial_id, state, values)
        except optuna.exceptions.UpdateFinishedTrialError:
            stored = RDBStorage.get_trial(self, trial_id)
            if retried and stored.state == state and stored.values == (None if values is None else list(values)):
                return True
            if trial_id not in self.running_here:
                raise
            logging.getLogger(__name__).warning(
                "Trial %d ended here after another worker had failed it (its heartbeat stopped while this worker "
                "could not reach the storage): its result is dropped, and its retry counts instead",
                stored.number,
            )
            return True

    @reconnecting
    def get_trial(self, trial_id: int) -> FrozenTrial:
        """A trial; this worker's running trial that another worker failed reads as running until this worker's tell
        (which then leaves it failed): Optuna's tell raises on a trial that has ended, and this one ended elsewhere."""
        trial = super().get_trial(trial_id)
        if trial_id in self.running_here and trial.state == TrialState.FAIL:
            trial = copy.deepcopy(trial)
            trial.state = TrialState.RUNNING
        return trial

    def record_heartbeat(self, trial_id: int) -> None:
        """Record a heartbeat, through an outage; past the window, quietly: the trial's own thread stops the worker
        at its next storage call, and a traceback from Optuna's heartbeat thread would say nothing more."""
        with contextlib.suppress(StorageLost):
            self._record_heartbeat(trial_id)

    @reconnecting
    def _record_heartbeat(self, trial_id: int) -> None:
        """Optuna's heartbeat write, retried."""
        super().record_heartbeat(trial_id)

    def after_reconnect(self) -> None:
        """Back from an outage: this worker's running trials get a heartbeat at once, before anyone judges them."""
        for trial_id in list(self.running_here):
            try:
                super().record_heartbeat(trial_id)
            except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
                return  # lost again: its heartbeat thread keeps trying

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """The trials whose heartbeat is older than the grace period; none while this worker is back from an outage
        for less than the grace period plus the longest retry pause and connect: every trial's heartbeat is as old
        as the outage then, and a live worker writes its own within that pause of the database's return."""
        settle = (self.grace_period or 0) + RECONNECT_MAX_PAUSE_S + CONNECT_TIMEOUT_S
        stale = self._stale_trial_ids(
            study_id
        )  # judged after the query: the query itself may have waited out an outage
        return [] if self.outage.settling(settle) else stale

    @reconnecting
    def _stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale-trial query, retried."""
        return super()._get_stale_trial_ids(study_id)


# Optuna's operations wrapped as they are (idempotent: see the module's docstring); the writes to a running trial
# also stop a trial another worker reclaimed.
PLAIN = (
    "_get_trials",
    "_get_best_trial_id",
    "get_trial_id_from_study_id_trial_number",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "set_study_user_attr",
)
TRIAL_WRITES = ("_set_trial_param", "set_trial_intermediate_value", "set_trial_system_attr", "set_trial_user_attr")
for _name in PLAIN:
    setattr(ResilientStorage, _name, reconnecting(getattr(RDBStorage, _name)))
for _name in TRIAL_WRITES:
    setattr(ResilientStorage, _name, stop_if_reclaimed(reconnecting(getattr(RDBStorage, _name))))


def run_trials_here(storage: object, outage_timeout: float) -> None:
    """Mark a worker's storage: its trials run in this process, and it rides out outages of `outage_timeout` s."""
    if isinstance(storage, ResilientStorage):
        storage.outage.window_s = outage_timeout
        storage.runs_trials = True
