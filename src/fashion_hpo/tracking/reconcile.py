"""Reconcile a study's MLflow runs with its Optuna trials: what killed workers and tracking outages left behind.

Called whenever a worker starts, reclaims a stale trial, or writes the study summary:
- a trial run left RUNNING while its trial is finished (its worker died between Optuna recording the trial's end and
  the callback closing the run, so that its `state` tag still says RUNNING, or between creating the run and linking
  it to the trial) gets its params, state, validation curve if it lacks one, and the status its trial's state implies
  (an unlinked run: FAILED), and the dead worker's run above it is ended FAILED; both are tagged `reconciled` with
  the reason. A run whose trial still runs is left to the heartbeat reclaim; one whose trial ended
  less than the grace period ago may be a live worker's, inside its callback, and is left to a later call;
- a finished trial with no run at all (the tracking server was down when it started, or its worker died before
  creating it) gets one under the invocation's run, made from the trial: params, per-epoch validation accuracy,
  status, tagged `recovered`. Under a lock on the study's storage, so that workers reconciling together never
  create two.

Runs are matched to trials by the trial's `mlflow_run_id` link, else by the study tag and trial number that every
trial run carries from its creation. What a call reads does not grow with the study: the trials come through Optuna's
cache (which reads from the database only the trials unfinished or new since its last read), and the runs from two
search_runs (status RUNNING; state tag RUNNING), plus one of the runs reconcile itself tagged when a finished trial
has no link. The run of an unlinked trial is always among those: its callback never closed it (the callback closes
linked runs only), so its state tag says RUNNING until reconcile ends it (tagging it `reconciled`) or creates it
(`reconciled` and `recovered`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

import optuna
from mlflow.entities import Metric, Run, RunTag
from mlflow.store.entities import PagedList
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.trial import FrozenTrial

from fashion_hpo.core.constants import INTERRUPTED, STUDY_TAG, VAL_ACCURACY
from fashion_hpo.core.errors import UsageError
from fashion_hpo.core.settings import RunSettings
from fashion_hpo.storage.rdb import retried_trial_number, study_lock
from fashion_hpo.tracking.callback import (
    RUN_STATUS,
    RUNNING,
    STATE_TAG,
    TRIAL_NUMBER_TAG,
    run_params,
    trial_run_id,
    trial_run_name,
)

# Tags: why reconcile changed or created a run; and that a run was created from its Optuna trial.
RECONCILED = "reconciled"
RECOVERED = "recovered"
PAGE = 1000
T = TypeVar("T")
TRIAL_RUN_NAME = re.compile(r"trial-(\d+)")


@dataclass(frozen=True)
class Reconciled:
    """What one call changed: the runs it ended, and the trials it created a run for."""

    ended: list[str]
    recovered: list[int]


def reconcile_runs(
    study: optuna.Study, settings: RunSettings, parent_run_id: str | None, dead: Collection[int] = ()
) -> Reconciled:
    """Bring the study's runs in line with its trials (see the module's docstring); trials numbered in `dead` are
    known to have lost their worker. Missing runs are created under `parent_run_id` (none without it)."""
    trials = study.get_trials(deepcopy=False)
    unlinked = [t for t in trials if t.state.is_finished() and trial_run_id(t) is None]
    client = MlflowClient()
    runs = study_runs(client, study.study_name, with_reconciled=bool(unlinked))
    stuck = StuckRule(timedelta(seconds=settings.grace_period), frozenset(dead))
    ended = end_stuck_runs(client, runs, trials, stuck, parent_run_id)
    recovered: list[int] = []
    if parent_run_id is not None and without_runs(unlinked, runs):
        with study_lock(settings.storage, study.study_name, "reconcile"):
            # Again under the lock: another worker may have just created them.
            missing = without_runs(unlinked, study_runs(client, study.study_name, with_reconciled=True))
            experiment = client.get_run(parent_run_id).info.experiment_id
            recovered = [recover_run(client, study, t, (experiment, parent_run_id)) for t in missing]
    if ended or recovered:
        print(
            f"Reconciled the tracking store with study {study.study_name!r}: ended {len(ended)} run(s) left "
            f"RUNNING, created {len(recovered)} missing trial run(s).",
            file=sys.stderr,
        )
    return Reconciled(ended, recovered)


def study_runs(client: MlflowClient, study_name: str, with_reconciled: bool) -> list[Run]:
    """The runs tagged with the study (trials', workers', parents'), in any active experiment, that were left running:
    status RUNNING, or a trial run whose state tag still says RUNNING; `with_reconciled` adds those reconcile tagged."""
    experiments = [e.experiment_id for e in all_pages(lambda token: client.search_experiments(page_token=token))]
    study = f"tags.{STUDY_TAG} = {quoted(study_name)}"
    queries = [f"{study} and attributes.status = 'RUNNING'", f"{study} and tags.{STATE_TAG} = '{RUNNING}'"]
    queries += [f"{study} and tags.{RECONCILED} IS NOT NULL"] if with_reconciled else []

    def search(query: str) -> list[Run]:
        return all_pages(lambda token: client.search_runs(experiments, query, max_results=PAGE, page_token=token))

    found = {run.info.run_id: run for query in queries for run in search(query)}
    return list(found.values())


def left_running(run: Run) -> bool:
    """Whether the run was never closed: still RUNNING, or a trial run its callback never gave the final state."""
    return run.info.status == "RUNNING" or run.data.tags.get(STATE_TAG) == RUNNING


def all_pages(search: Callable[[str | None], PagedList[T]]) -> list[T]:
    """Every result of a paged MLflow search."""
    found: list[T] = []
    token = None
    for _ in range(100_000):  # bounds the loop far beyond any store: a page holds up to PAGE results
        page = search(token)
        found += page
        token = page.token
        if not token:
            break
    return found


def quoted(value: str) -> str:
    """`value` as a string literal of MLflow's search syntax."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise UsageError("--study-name", f"use ' or \" in it, not both: {value!r}")


def trial_number(run: Run) -> int | None:
    """The number of the trial a run tracks (from its tag, else its name); None for a run that tracks no trial."""
    tagged = run.data.tags.get(TRIAL_NUMBER_TAG, "")
    if tagged.isdecimal():
        return int(tagged)
    named = TRIAL_RUN_NAME.fullmatch(run.info.run_name or "")
    return int(named.group(1)) if named else None


@dataclass(frozen=True)
class StuckRule:
    """A finished trial's run is stuck when its worker is known dead, or it ended more than `grace` ago."""

    grace: timedelta
    dead: frozenset[int]

    def __call__(self, trial: FrozenTrial) -> bool:
        """True when nothing but reconcile will end the trial's run any more."""
        ended = trial.datetime_complete
        return trial.number in self.dead or ended is None or datetime.now() - ended > self.grace


def end_stuck_runs(
    client: MlflowClient, runs: list[Run], trials: list[FrozenTrial], stuck: StuckRule, own_run_id: str | None
) -> list[str]:
    """End the trial runs left running whose trials finished, and the runs of their dead workers; returns the ids
    ended."""
    by_link = {trial_run_id(t): t for t in trials}
    by_number = {t.number: t for t in trials}
    by_id = {run.info.run_id: run for run in runs}
    ended: list[str] = []
    for run in runs:
        number = trial_number(run)
        trial = by_link.get(run.info.run_id) or (by_number.get(number) if number is not None else None)
        if not left_running(run) or trial is None or not trial.state.is_finished() or not stuck(trial):
            continue
        linked = trial_run_id(trial) == run.info.run_id
        end_trial_run(client, run, trial, linked)
        ended.append(run.info.run_id)
        worker = by_id.get(run.data.tags.get(MLFLOW_PARENT_RUN_ID, ""))
        if worker is not None and worker.info.status == "RUNNING" and worker.info.run_id not in (own_run_id, *ended):
            reason = f"its worker died: the run of trial {trial.number} was left RUNNING after the trial ended"
            client.set_tag(worker.info.run_id, RECONCILED, reason)
            client.set_terminated(worker.info.run_id, status="FAILED")
            ended.append(worker.info.run_id)
    return ended


def end_trial_run(client: MlflowClient, run: Run, trial: FrozenTrial, linked: bool) -> None:
    """End a stuck trial run as its callback would have: params, state, name, the epochs of its validation curve it
    lacks (the metrics its worker had not sent yet died with it), and the status of the trial's state (an unlinked
    run, which never ran the trial: FAILED)."""
    how = "its worker died before the run was linked to it" if not linked else "its worker died before closing it"
    reason = f"trial {trial.number} is {trial.state.name} in Optuna, but its run was left RUNNING ({how})"
    params = [p for p in run_params(trial.params, trial.user_attrs.get("model")) if p.key not in run.data.params]
    sent = {m.step for m in client.get_metric_history(run.info.run_id, VAL_ACCURACY)} if linked else set()
    curve = [metric for metric in validation_curve(trial) if metric.step not in sent]
    tags = [RunTag(RECONCILED, reason), RunTag(STATE_TAG, trial.state.name)]
    client.log_batch(run.info.run_id, metrics=curve if linked else [], params=params if linked else [], tags=tags)
    client.set_terminated(run.info.run_id, status=run_status(trial) if linked else "FAILED")
    if run.info.run_name != trial_run_name(trial.number):
        client.update_run(run.info.run_id, name=trial_run_name(trial.number))


def run_status(trial: FrozenTrial) -> str:
    """The status of a finished trial's run: as the callback sets it, KILLED for a trial an interrupt stopped."""
    return "KILLED" if trial.user_attrs.get(INTERRUPTED) else RUN_STATUS.get(trial.state, "FAILED")


def without_runs(trials: list[FrozenTrial], runs: list[Run]) -> list[FrozenTrial]:
    """Those of `trials` that no run tracks."""
    tracked = {trial_number(run) for run in runs}
    return [t for t in trials if t.number not in tracked]


def recover_run(client: MlflowClient, study: optuna.Study, trial: FrozenTrial, parent: tuple[str, str]) -> int:
    """Create the missing run of a finished trial, from the trial, under the `parent` run (experiment id, run id);
    returns the trial's number."""
    experiment, parent_run_id = parent
    started, ended = millis(trial.datetime_start), millis(trial.datetime_complete)
    tags = {
        MLFLOW_PARENT_RUN_ID: parent_run_id,
        STUDY_TAG: study.study_name,
        TRIAL_NUMBER_TAG: str(trial.number),
        STATE_TAG: trial.state.name,
        RECOVERED: "true",
        RECONCILED: f"trial {trial.number} ended with no run in the tracking store; created from the Optuna trial",
        **{key: str(value) for key, value in trial.user_attrs.items()},
    }
    retried = retried_trial_number(trial)
    if retried is not None:
        tags["retry_of_trial"] = str(retried)
    run = client.create_run(experiment, start_time=started, tags=tags, run_name=trial_run_name(trial.number))
    params = run_params(trial.params, trial.user_attrs.get("model", study.user_attrs.get("model")))
    client.log_batch(run.info.run_id, metrics=validation_curve(trial), params=params)
    client.set_terminated(run.info.run_id, status=run_status(trial), end_time=ended)
    return trial.number


def validation_curve(trial: FrozenTrial) -> list[Metric]:
    """The validation accuracy per epoch that the trial reported to Optuna, as metrics stamped with its end."""
    ended = millis(trial.datetime_complete)
    return [Metric(VAL_ACCURACY, value, ended, step) for step, value in sorted(trial.intermediate_values.items())]


def millis(moment: datetime | None) -> int:
    """A trial's time as MLflow's milliseconds since the epoch (now, for a time Optuna did not record)."""
    return int((moment or datetime.now()).timestamp() * 1000)
