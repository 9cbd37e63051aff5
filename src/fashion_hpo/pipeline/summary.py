"""What a study reports when its search ends: counts, best trial and Pareto front on the console and on its run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import mlflow
import optuna
from mlflow.entities.model_registry import ModelVersion
from optuna.trial import FrozenTrial, TrialState

from fashion_hpo.core.constants import (
    EXCEPTION_MESSAGE,
    EXCEPTION_TYPE,
    OPTIMIZED_METRIC,
)
from fashion_hpo.core.settings import RunSettings
from fashion_hpo.search.trials import best_trial, pareto_front, trial_accuracy, trial_counts
from fashion_hpo.tracking.artifacts import log_study_summary
from fashion_hpo.tracking.description import Front, Registered, description, log_description
from fashion_hpo.tracking.reconcile import reconcile_runs
from fashion_hpo.tracking.trials import tag_pareto_front
from fashion_hpo.training.loop import Evaluation


@dataclass(frozen=True)
class Registration:
    """Where the study's best model ended up in the registry, and why it got its alias."""

    version: ModelVersion
    alias: str
    reason: str
    test: Evaluation | None


def print_summary(counts: dict[str, int], best: FrozenTrial | None, settings: RunSettings) -> None:
    """The seed notebook's summary: trial counts, then the best trial's value and params."""
    print(f"\nStudy {settings.study_name!r} statistics:")
    for label in ("finished", "pruned", "complete", "failed"):
        print(f"  Number of {label} trials: {counts[label]}")
    if best is None:
        return
    print(f"Best trial: #{best.number}\n  Value ({OPTIMIZED_METRIC}): {trial_accuracy(best):.4f}\n  Params:")
    for name, value in best.params.items():
        print(f"    {name}: {value}")


def describe(
    settings: RunSettings,
    counts: dict[str, int],
    best: FrozenTrial | None,
    front: list[FrozenTrial],
    registration: Registration | None = None,
    plots: bool = True,
) -> None:
    """The run's description: the study's counts, best trial and Pareto front, where its model went, its plots."""
    registered = None
    if registration is not None:
        version, test = registration.version, registration.test
        uri = f"models:/{version.name}/{version.version}"
        registered = Registered(uri, registration.alias, test.accuracy if test is not None else None)
    text = description(settings.study_name, counts, best, registered, plots, Front(settings.objective_names, front))
    if settings.warm_start_from:
        text += f"\n\nWarm-started from `{settings.warm_start_from}` (its best configurations were the first trials)."
    log_description(text)


def no_best_reason(study: optuna.Study, settings: RunSettings) -> str:
    """Why the study has no trial to register: none completed, or none within the constraints."""
    if trial_counts(study)["complete"] == 0:
        return "No trial completed"
    return f"No complete trial is within the constraints ({settings.limits.describe()})"


def print_front(front: list[FrozenTrial], settings: RunSettings) -> None:
    """A multi-objective study's Pareto front, one trial a line, most accurate first."""
    if not front:
        return
    names = settings.objective_names
    print(f"Pareto front ({', '.join(names)}), tagged pareto=true on the trials' runs:")
    for trial in sorted(front, key=trial_accuracy, reverse=True):
        values = ", ".join(f"{value:.4g}" for value in cast(list[float], trial.values))
        print(f"  #{trial.number}: {values}")


def print_objectives_notice(settings: RunSettings) -> None:
    """Say once that a multi-objective study is not pruned, whatever --pruner says."""
    if len(settings.objective_names) > 1:
        print(
            f"--objectives {settings.objectives}: a multi-objective study; pruning is off (Optuna does not prune them)"
        )


def first_error(study: optuna.Study) -> str:
    """The first failed trial's exception, as a clause for the closing message (empty if none failed)."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if EXCEPTION_TYPE in trial.user_attrs:
            return f"; first error (trial {trial.number}): {trial.user_attrs[EXCEPTION_TYPE]}: " + str(
                trial.user_attrs.get(EXCEPTION_MESSAGE, "")
            )
    return ""


def summarize(study: optuna.Study, settings: RunSettings, ended: str = "") -> FrozenTrial | None:
    """Print and log the study's trial counts and best trial (also after an interrupt), with why the search `ended`;
    returns the best."""
    reconcile_runs(study, settings, active_run_id())
    counts, best = trial_counts(study), best_trial(study, settings.limits)
    front = pareto_front(study, settings.limits)
    if len(settings.objective_names) > 1:
        tag_pareto_front(front, settings.study_name)
    print_summary(counts, best, settings)
    print_front(front, settings)
    if ended:
        print(ended)
    # A worker of --workers leaves the study's table and plots (seconds of work each) to the run above it.
    log_study_summary(study, counts, best, artifacts=not settings.parent_run_id)
    describe(settings, counts, best, front, plots=not settings.parent_run_id)
    return best


def active_run_id() -> str | None:
    """The invocation's run while the study runs (Optuna reclaims before a trial's own run starts)."""
    run = mlflow.active_run()
    return run.info.run_id if run else None
