"""The study pipeline: load data once, search with tracking, refit the best trial, test it once, register it."""

from __future__ import annotations

import functools
import sys
import time

import mlflow
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from fashion_hpo.core.settings import RunSettings
from fashion_hpo.data.splits import FashionData, load_data
from fashion_hpo.pipeline.guards import closing_link, note_run_on_outage, stop_on_tracking_outage
from fashion_hpo.pipeline.progress import SearchProgress, duration
from fashion_hpo.pipeline.register import print_registration, register_best
from fashion_hpo.pipeline.summary import (
    active_run_id,
    describe,
    first_error,
    no_best_reason,
    print_objectives_notice,
    summarize,
)
from fashion_hpo.pipeline.workers import WorkersFailed, search_in_workers
from fashion_hpo.search.loop import budget_left, run_search
from fashion_hpo.search.objective import make_objective
from fashion_hpo.search.stopping import Plateau
from fashion_hpo.search.study import Callback, open_study
from fashion_hpo.search.trials import pareto_front, trial_counts
from fashion_hpo.search.warm_start import WARM_START, warm_start
from fashion_hpo.storage.rdb import retry_stale_trial
from fashion_hpo.tracking.artifacts import (
    log_inputs,
    search_inputs,
)
from fashion_hpo.tracking.metrics import log_costs, log_epoch
from fashion_hpo.tracking.reconcile import reconcile_runs
from fashion_hpo.tracking.runs import (
    check_tracking_store,
    end_left_running,
    end_stale_runs,
    parent_run,
)
from fashion_hpo.tracking.trials import tracked_objective
from fashion_hpo.training.loop import EpochResult


def reclaim_stale_trial(study: optuna.Study, trial: FrozenTrial, settings: RunSettings) -> None:
    """A trial whose worker died: end its runs FAILED, then queue its parameters again (at most twice)."""
    end_stale_runs(trial)
    retry_stale_trial(study, trial)
    reconcile_runs(study, settings, active_run_id(), dead={trial.number})


def search_here(study: optuna.Study, data: FashionData, settings: RunSettings) -> str:
    """Run this process's share of the trials, each in its own child run, showing each epoch and trial; returns why
    the search ended."""
    left = budget_left(study, settings.n_trials)
    pending = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)))
    progress = SearchProgress(study, settings, done=settings.n_trials - left - pending)

    def report(trial: optuna.Trial, result: EpochResult) -> None:
        log_epoch(trial, result)
        progress.epoch(trial, result)

    objective = make_objective(data, settings, report, log_costs)
    inputs = search_inputs(data, settings)
    log_inputs(inputs)  # on the invocation's run; each trial's run gets them too
    tracked, tracker = tracked_objective(objective, settings, functools.partial(log_inputs, inputs))
    if left <= 0:
        print(
            f"Study {settings.study_name!r} already has its --n-trials {settings.n_trials} trials; raise it for more."
        )
    plateau = Plateau(study, settings.patience, settings.min_delta)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress lines say what Optuna's would
    try:
        callbacks: list[Callback] = [tracker, progress, plateau]
        run_search(study, tracked, settings, callbacks, stopped=lambda: plateau.stopped)
    except KeyboardInterrupt:
        tracker.mark_interrupted()
        raise
    finally:
        progress.close()
    if plateau.stopped:
        return plateau.describe()
    return search_end(study, settings, progress.trials_here, time.monotonic() - progress.started)


def search_end(study: optuna.Study, settings: RunSettings, trials_here: int, seconds: float) -> str:
    """Why this process's search ended, and how to go on: the study-wide --n-trials, or this run's --timeout."""
    if budget_left(study, settings.n_trials) <= 0:
        return f"Search ended: the study has its --n-trials {settings.n_trials} trials."
    ran = f"{trials_here} trial{'s' if trials_here != 1 else ''} in {duration(seconds)}"
    if settings.timeout and seconds >= settings.timeout:
        return (
            f"Search ended: the --timeout of {settings.timeout} s ran out after {ran}; rerun the same command to "
            f"continue the study toward --n-trials {settings.n_trials}."
        )
    return f"Search ended after {ran}: the other workers hold the study's remaining trials."


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
    for line in warm_start(study, settings) if settings.warm_start_from else []:
        print(line)
    try:
        with (
            stop_on_tracking_outage(),
            parent_run(settings) as run_id,
            note_run_on_outage(study, run_id),
            closing_link(settings),
        ):
            if settings.warm_start_from:
                mlflow.set_tag(WARM_START, settings.warm_start_from)
            end_left_running(study)  # what earlier invocations could not end when they lost the tracking server
            reconcile_runs(study, settings, run_id)  # what killed workers and tracking outages left behind
            try:
                if in_workers:
                    search_in_workers(settings, run_id)
                    ended = ""
                else:
                    ended = search_here(study, data(), settings)
            except (KeyboardInterrupt, WorkersFailed):
                summarize(study, settings)  # what was found is kept and shown either way
                raise
            best = summarize(study, settings, ended)
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
