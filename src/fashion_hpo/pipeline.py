"""The study pipeline: load data once, search with tracking, refit the best trial, test it once, register it."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import cast

import mlflow
import optuna
import torch
from mlflow.entities.model_registry import ModelVersion
from optuna.trial import FrozenTrial, TrialState

from fashion_hpo.artifacts import (
    Front,
    Registered,
    description,
    log_description,
    log_inputs,
    log_study_summary,
    log_test_results,
    refit_inputs,
    search_inputs,
)
from fashion_hpo.constants import (
    CHAMPION_ALIAS,
    EXCEPTION_MESSAGE,
    EXCEPTION_TYPE,
    FLOPS,
    LATENCY_MS,
    N_PARAMS,
    OPTIMIZED_METRIC,
)
from fashion_hpo.data import FashionData, load_data
from fashion_hpo.models import ModelConfig
from fashion_hpo.objective import make_objective
from fashion_hpo.process import connection_lost
from fashion_hpo.reconcile import reconcile_runs
from fashion_hpo.registry import ModelCard, find_version, log_model, promote, register
from fashion_hpo.runs import (
    check_tracking_store,
    end_left_running,
    end_stale_runs,
    local_default_uri,
    note_left_running,
    parent_run,
    tracking_lost,
    ui_hint,
)
from fashion_hpo.search_space import config_from_params
from fashion_hpo.seeding import trial_seed
from fashion_hpo.settings import REFIT_EPOCHS_FACTOR, RunSettings
from fashion_hpo.storage import retry_stale_trial
from fashion_hpo.study import (
    best_trial,
    budget_left,
    load_existing_study,
    open_study,
    pareto_front,
    run_search,
    trial_accuracy,
    trial_counts,
    with_study_setup,
)
from fashion_hpo.tracking import give_up_on_tracking, log_costs, log_epoch, tag_pareto_front, tracked_objective
from fashion_hpo.training import Evaluation, build_and_fit, confusion_matrix, evaluate
from fashion_hpo.workers import WorkersFailed, search_in_workers


@dataclass(frozen=True)
class FinalModel:
    """The refit best configuration and its one test-set evaluation."""

    model: torch.nn.Module
    architecture: ModelConfig
    test: Evaluation
    confusion: torch.Tensor


def refit_epochs(best: FrozenTrial, settings: RunSettings) -> int:
    """`--refit-epochs`, or by default REFIT_EPOCHS_FACTOR times the epochs the best trial trained."""
    return settings.refit_epochs or REFIT_EPOCHS_FACTOR * max(best.intermediate_values, default=settings.epochs)


def refit_and_test(data: FashionData, best: FrozenTrial, settings: RunSettings, epochs: int) -> FinalModel:
    """Retrain the best trial's config (same seed) on all 60,000 training images for `epochs`, then test it once."""
    config = config_from_params(best.params, best.user_attrs.get("model", settings.model))
    model = build_and_fit(config, data.full_train, None, epochs, trial_seed(settings.seed, best.number)).model
    return FinalModel(model, config.model, evaluate(model, data.test), confusion_matrix(model, data.test))


@dataclass(frozen=True)
class Registration:
    """Where the study's best model ended up in the registry, and why it got its alias."""

    version: ModelVersion
    alias: str
    reason: str
    test: Evaluation | None


def register_best(
    data: Callable[[], FashionData], best: FrozenTrial, settings: RunSettings, run_id: str
) -> Registration:
    """Refit, test once, log and register the best trial, then promote it; a trial registered before is reused.

    `data` is called only when there is something to refit, so re-registering a known trial loads nothing."""
    kind = best.user_attrs.get("model", settings.model)
    costs = {name: float(best.user_attrs[name]) for name in (N_PARAMS, FLOPS, LATENCY_MS) if name in best.user_attrs}
    card = ModelCard(
        settings.study_name,
        best.number,
        kind,
        trial_accuracy(best),
        math.nan,
        best.params,
        costs,
        settings.limits.describe(),
    )
    existing = find_version(settings.registered_model_name, card)
    if existing is not None:
        reason = f"trial {best.number} is already registered as version {existing.version}; nothing new to register"
        mlflow.set_tags({"registered_version": existing.version, "promotion": reason})
        return Registration(existing, ", ".join(existing.aliases) or "none", reason, None)
    splits = data()
    training, test = refit_inputs(splits, settings)
    log_inputs([training, test])
    epochs = refit_epochs(best, settings)
    mlflow.set_tag("refit_epochs", epochs)
    final = refit_and_test(splits, best, settings, epochs)
    card = replace(card, test_accuracy=final.test.accuracy)
    info = log_model(final.model, final.architecture, splits.test.images[:4].cpu().numpy(), card)
    log_test_results(final.test, final.confusion, info.model_id, test.dataset)
    version = register(info.model_uri, settings.registered_model_name, card, run_id)
    alias, reason = promote(version, final.test.accuracy, settings.promote, settings.limits)
    mlflow.set_tags({"registered_version": version.version, "alias": alias, "promotion": reason})
    return Registration(version, alias, reason, final.test)


def print_registration(registration: Registration) -> None:
    """The test result and where the model is, with why it has its alias."""
    version = registration.version
    if registration.test is not None:
        test = registration.test
        print(f"Test accuracy of the refit best model: {test.accuracy:.4f} (loss {test.loss:.4f})")
    print(f"Registered: models:/{version.name}/{version.version} (alias @{registration.alias}: {registration.reason})")
    print(f"Load it with mlflow.pyfunc.load_model('models:/{version.name}@{CHAMPION_ALIAS}')")


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
    log_description(
        description(settings.study_name, counts, best, registered, plots, Front(settings.objective_names, front))
    )


@contextmanager
def stop_on_tracking_outage() -> Iterator[None]:
    """A tracking server lost through all of MLflow's retries ends the command with one line, no traceback."""
    try:
        yield
    except Exception as err:
        if not connection_lost(err):
            raise
        raise tracking_lost() from None


@contextmanager
def note_run_on_outage(study: optuna.Study, run_id: str) -> Iterator[None]:
    """When the block loses the tracking server: MLflow's later requests fail at once (the invocation's run cannot
    be ended now anyway), and the study notes the run for the next invocation to end."""
    try:
        yield
    except BaseException as err:
        if connection_lost(err):
            give_up_on_tracking()
            note_left_running(study, run_id)
        raise


@contextmanager
def closing_link(settings: RunSettings) -> Iterator[None]:
    """When the block ends, however it ends, print where to compare the trials in MLflow's UI (a worker of
    --workers leaves that to the command that started it)."""
    run = mlflow.active_run()
    experiment_id = run.info.experiment_id if run is not None else None
    try:
        yield
    finally:
        if experiment_id is not None and not settings.parent_run_id:
            hint = ui_hint(mlflow.get_tracking_uri(), experiment_id, local_default_uri())
            if hint.command is not None:
                print(f"Start MLflow's UI: {hint.command}")
            print(f"Compare the trials: {hint.link}")


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


def summarize(study: optuna.Study, settings: RunSettings) -> FrozenTrial | None:
    """Print and log the study's trial counts and best trial (also after an interrupt); returns the best."""
    reconcile_runs(study, settings, active_run_id())
    counts, best = trial_counts(study), best_trial(study, settings.limits)
    front = pareto_front(study, settings.limits)
    if len(settings.objective_names) > 1:
        tag_pareto_front(front, settings.study_name)
    print_summary(counts, best, settings)
    print_front(front, settings)
    # A worker of --workers leaves the study's table and plots (seconds of work each) to the run above it.
    log_study_summary(study, counts, best, artifacts=not settings.parent_run_id)
    describe(settings, counts, best, front, plots=not settings.parent_run_id)
    return best


def reclaim_stale_trial(study: optuna.Study, trial: FrozenTrial, settings: RunSettings) -> None:
    """A trial whose worker died: end its runs FAILED, then queue its parameters again (at most twice)."""
    end_stale_runs(trial)
    retry_stale_trial(study, trial)
    reconcile_runs(study, settings, active_run_id(), dead={trial.number})


def active_run_id() -> str | None:
    """The invocation's run while the study runs (Optuna reclaims before a trial's own run starts)."""
    run = mlflow.active_run()
    return run.info.run_id if run else None


def search_here(study: optuna.Study, data: FashionData, settings: RunSettings) -> None:
    """Run this process's share of the trials, each in its own child run."""
    objective = make_objective(
        data,
        settings.model,
        settings.epochs,
        settings.seed,
        settings.max_train_samples,
        log_epoch,
        limits=settings.limits,
        objectives=settings.objective_names,
        report_costs=log_costs,
    )
    inputs = search_inputs(data, settings)
    log_inputs(inputs)  # on the invocation's run; each trial's run gets them too
    tracked, tracker = tracked_objective(objective, settings, functools.partial(log_inputs, inputs))
    if budget_left(study, settings.n_trials) <= 0:
        print(
            f"Study {settings.study_name!r} already has its --n-trials {settings.n_trials} trials; raise it for more."
        )
    try:
        run_search(study, tracked, settings, callbacks=[tracker], show_progress_bar=settings.progress_bar)
    except KeyboardInterrupt:
        tracker.mark_interrupted()
        raise


def run_study(settings: RunSettings, device: torch.device) -> int:
    """Search (here, or in `--workers` processes), track, refit, test and register; returns the exit code."""
    check_tracking_store()
    in_workers = settings.workers > 1
    # Loaded once per process: workers load their own, and this process only if it searches or refits.
    data = functools.cache(lambda: load_data(settings.data_dir, settings.seed, device))
    if not in_workers:
        data()  # before the study opens: a data problem is a usage error, with no trial and no run created
    study = open_study(settings, functools.partial(reclaim_stale_trial, settings=settings))
    print_objectives_notice(settings)
    try:
        with (
            stop_on_tracking_outage(),
            parent_run(settings) as run_id,
            note_run_on_outage(study, run_id),
            closing_link(settings),
        ):
            end_left_running(study)  # what earlier invocations could not end when they lost the tracking server
            reconcile_runs(study, settings, run_id)  # what killed workers and tracking outages left behind
            try:
                if in_workers:
                    search_in_workers(settings, run_id)
                else:
                    search_here(study, data(), settings)
            except (KeyboardInterrupt, WorkersFailed):
                summarize(study, settings)  # what was found is kept and shown either way
                raise
            best = summarize(study, settings)
            if best is None:
                print(
                    f"{no_best_reason(study, settings)}, so no model was registered{first_error(study)}.",
                    file=sys.stderr,
                )
                return 1
            if settings.register:
                registration = register_best(data, best, settings, run_id)
                front = pareto_front(study, settings.limits)
                describe(settings, trial_counts(study), best, front, registration, plots=not settings.parent_run_id)
                print_registration(registration)
    except WorkersFailed as failed:
        print(f"{failed}; the study's trials are kept: rerun the command to continue it.", file=sys.stderr)
        return 1
    return 0


def run_register(settings: RunSettings, device: torch.device) -> int:
    """Refit and register the best trial of an existing study, without searching; returns the exit code."""
    check_tracking_store()
    study = load_existing_study(settings)
    settings = with_study_setup(settings, study)
    best = best_trial(study, settings.limits)
    if best is None:
        print(
            f"Study {settings.study_name!r}: {no_best_reason(study, settings)}; nothing to register.", file=sys.stderr
        )
        return 1
    with (
        stop_on_tracking_outage(),
        parent_run(settings, run_name=f"register-{settings.study_name}") as run_id,
        closing_link(settings),
    ):
        registration = register_best(
            lambda: load_data(settings.data_dir, settings.seed, device), best, settings, run_id
        )
        describe(settings, trial_counts(study), best, pareto_front(study, settings.limits), registration, plots=False)
        print_registration(registration)
    return 0
