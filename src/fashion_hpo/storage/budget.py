"""The study-wide trial budget counted in the database: a few aggregate queries, whatever the study's size.

With tokens.py, the one module that reads Optuna's RDB tables directly (optuna.storages._rdb.models, private).
PRIVATE CONTRACT: the `trials` table has `study_id`, `number` and `state` (an Enum of TrialState);
`trial_user_attributes` and `trial_system_attributes` have `trial_id`, `key` and `value_json` (the attribute's value
as JSON); Optuna's RetryHeartbeatStaleTrialCallback records the trials a retry replaces in the system attribute
`retry_history`. tests/test_storage.py::test_the_budget_counted_in_sql_is_the_one_counted_from_the_trials fails if it
changes."""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlalchemy
from optuna.storages._rdb import models  # private: see PRIVATE CONTRACT above
from optuna.trial import TrialState

from fashion_hpo.core.constants import INTERRUPTED

# Trials that hold a place in the budget: finished ones, ones a worker is running, and queued retries.
BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
RETRY_HISTORY = "retry_history"
# The JSON of the values Python takes as false: an INTERRUPTED attribute holding one of them does not excuse a failure.
FALSY_JSON = ("false", "0", "0.0", "null", '""', "[]", "{}")


@dataclass(frozen=True)
class Budget:
    """How many of a study's trials count toward `--n-trials`, and how many of them are running."""

    used: int
    running: int


def count_budget(conn: sqlalchemy.Connection, study_id: int) -> Budget:
    """The budget a study has used (rdb.budget_used's rule), from three queries whose results do not grow with its
    trials: the trials per state, the retried trials' numbers (retries are rare), and the failures of their own."""
    per_state = state_counts(conn, study_id)
    failed = own_failures(conn, study_id, retried_numbers(conn, study_id))
    used = sum(per_state.get(state, 0) for state in BUDGET_STATES) + failed
    return Budget(used=used, running=per_state.get(TrialState.RUNNING, 0))


def state_counts(conn: sqlalchemy.Connection, study_id: int) -> dict[TrialState, int]:
    """How many of the study's trials are in each state."""
    trial = models.TrialModel
    query = (
        sqlalchemy.select(trial.state, sqlalchemy.func.count()).where(trial.study_id == study_id).group_by(trial.state)
    )
    return {TrialState(state): count for state, count in conn.execute(query)}


def retried_numbers(conn: sqlalchemy.Connection, study_id: int) -> set[int]:
    """The numbers of the study's trials that a retry replaces (Optuna's retry history, on the retries only)."""
    trial, attr = models.TrialModel, models.TrialSystemAttributeModel
    query = (
        sqlalchemy.select(attr.value_json)
        .join(trial, trial.trial_id == attr.trial_id)
        .where(trial.study_id == study_id, attr.key == RETRY_HISTORY)
    )
    return {number for (history,) in conn.execute(query) for number in json.loads(history)}


def own_failures(conn: sqlalchemy.Connection, study_id: int, retried: set[int]) -> int:
    """How many of the study's failed trials failed on their own: not interrupted, and not retried."""
    trial, attr = models.TrialModel, models.TrialUserAttributeModel
    interrupted = sqlalchemy.and_(attr.trial_id == trial.trial_id, attr.key == INTERRUPTED)
    query = (
        sqlalchemy.select(sqlalchemy.func.count())
        .select_from(trial)
        .outerjoin(attr, interrupted)
        .where(
            trial.study_id == study_id,
            trial.state == TrialState.FAIL,
            sqlalchemy.or_(attr.value_json.is_(None), attr.value_json.in_(FALSY_JSON)),
            trial.number.not_in(sorted(retried)),
        )
    )
    return int(conn.execute(query).scalar_one())
