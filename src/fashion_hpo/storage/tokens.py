"""Trial writes that a retry cannot double: a new trial carries a token set in its own insert, a queued trial is
claimed with one, so that a retry after a lost acknowledgement finds what its first attempt committed.

Reads and writes Optuna's RDB tables (optuna.storages._rdb.models, private; budget.py's PRIVATE CONTRACT): `trials`
has `trial_id`, `study_id`, `state` and `datetime_start`; `trial_system_attributes` has `trial_id`, `key` and
`value_json`, unique per (trial_id, key). tests/test_outages.py's lost-acknowledgement test fails if it changes."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import sqlalchemy
import sqlalchemy.orm
from optuna.storages._rdb import models  # private: see the module's docstring
from optuna.trial import FrozenTrial, TrialState

# System attributes: the token a trial was created with, and the one its claim (WAITING -> RUNNING) wrote.
CREATED_BY = "fashion_hpo_created_by"
CLAIMED_BY = "fashion_hpo_claimed_by"


@contextmanager
def transaction(scoped: sqlalchemy.orm.scoped_session[sqlalchemy.orm.Session]) -> Iterator[sqlalchemy.orm.Session]:
    """One transaction in the storage's session (as Optuna's own writes: the same connections, the same events)."""
    session = scoped()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def with_token(template: FrozenTrial | None, token: str) -> FrozenTrial:
    """The template of a new trial with its token; a plain new trial (no template) as the template Optuna's insert
    of a running trial amounts to, started now."""
    if template is None:
        return FrozenTrial(
            number=-1,
            state=TrialState.RUNNING,
            value=None,
            datetime_start=datetime.now(),
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={},
            system_attrs={CREATED_BY: token},
            intermediate_values={},
            trial_id=-1,
        )
    tokened = copy.deepcopy(template)
    # A retry copies the failed trial's system attributes: not its claim, which is the failed trial's.
    kept = {key: value for key, value in template.system_attrs.items() if key != CLAIMED_BY}
    tokened.system_attrs = {**kept, CREATED_BY: token}
    return tokened


def trial_with_attr(
    session: sqlalchemy.orm.Session, study_id: int, key: str, value: object
) -> models.TrialModel | None:
    """The study's trial whose system attribute `key` holds `value`, if one does (the first, should two)."""
    trial, attr = models.TrialModel, models.TrialSystemAttributeModel
    query = (
        session.query(trial)
        .join(attr, attr.trial_id == trial.trial_id)
        .filter(trial.study_id == study_id, attr.key == key, attr.value_json == json.dumps(value))
        .order_by(trial.trial_id)
    )
    return query.first()


def claim(session: sqlalchemy.orm.Session, trial_id: int, token: str) -> bool:
    """Set a WAITING trial RUNNING (started now) and record `token` as its claim, in one transaction; False when the
    trial is not WAITING (another worker claimed it, or it finished)."""
    trial = models.TrialModel
    claimed = session.execute(
        sqlalchemy.update(trial)
        .where(trial.trial_id == trial_id, trial.state == TrialState.WAITING)
        .values(state=TrialState.RUNNING, datetime_start=datetime.now())
        .execution_options(synchronize_session=False)  # a transaction of its own: no loaded trial to update
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]  # an UPDATE's result has a row count
        return False
    session.add(models.TrialSystemAttributeModel(trial_id=trial_id, key=CLAIMED_BY, value_json=json.dumps(token)))
    return True


def claimed_with(session: sqlalchemy.orm.Session, trial_id: int, token: str) -> bool:
    """Whether the trial's claim is the one made with `token` (a retried claim whose first attempt committed)."""
    attr = models.TrialSystemAttributeModel
    stored = session.query(attr.value_json).filter(attr.trial_id == trial_id, attr.key == CLAIMED_BY).scalar()
    return stored == json.dumps(token)
