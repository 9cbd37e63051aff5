"""Benchmark: what reconciling a study's runs with its trials costs per call (SQLite stores, no training).

A 50-trial study runs through the real tracking path (a child run per trial, linked), with a trivial objective;
then `reconcile_runs` is timed: with every trial linked (one search of the study's RUNNING runs), with 5 trials that
ended without a run (the call that creates their runs, then calls that find them: one search of all the study's
runs). Each figure is also given as a ratio to one tracked trial's own time. Writes a JSON file next to this script.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from statistics import median

import mlflow
import optuna
from benchmark_args import parse_args

from fashion_hpo.core.settings import RunSettings
from fashion_hpo.search.study import open_study
from fashion_hpo.tracking.reconcile import reconcile_runs
from fashion_hpo.tracking.runs import parent_run
from fashion_hpo.tracking.trials import tracked_objective

CALLS = 20
UNLINKED = 5


def objective(trial: optuna.Trial) -> float:
    """A trial with a parameter and a 3-epoch curve, and nothing to train."""
    x = trial.suggest_float("x", 0, 1)
    for epoch in (1, 2, 3):
        trial.report(x * epoch / 3, epoch)
    return x


def median_ms(call: Callable[[], object], times: int) -> float:
    """The median wall milliseconds of `times` calls."""
    seconds = []
    for _ in range(times):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return 1000 * median(seconds)


def main() -> None:
    args = parse_args(__doc__, __file__, "10 trials, 5 calls")
    n_trials, calls = (10, 5) if args.quick else (50, CALLS)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
        storage = f"sqlite:///{folder}/optuna.db"
        settings = RunSettings(study_name="cost", storage=storage, n_trials=n_trials + UNLINKED, baseline_trial=False)
        study = open_study(settings)
        with parent_run(settings) as parent_id:
            tracked, tracker = tracked_objective(objective, settings)
            start = time.perf_counter()
            study.optimize(tracked, n_trials=n_trials, callbacks=[tracker])
            trial_ms = 1000 * (time.perf_counter() - start) / n_trials
            linked_ms = median_ms(lambda: reconcile_runs(study, settings, parent_id), calls)
            study.optimize(objective, n_trials=UNLINKED)  # trials that end with no run, as in a tracking outage
            start = time.perf_counter()
            recovered = reconcile_runs(study, settings, parent_id).recovered
            recovering_ms = 1000 * (time.perf_counter() - start)
            unlinked_ms = median_ms(lambda: reconcile_runs(study, settings, parent_id), calls)
    assert len(recovered) == UNLINKED
    print(f"{n_trials} tracked trials + {UNLINKED} without a run, SQLite stores; one tracked trial: {trial_ms:.1f} ms")
    print(f"reconcile, every trial linked:       {linked_ms:6.1f} ms per call ({linked_ms / trial_ms:.2f} trials)")
    creating = f"reconcile, creating {UNLINKED} missing runs:"
    print(f"{creating:37} {recovering_ms:6.1f} ms ({recovering_ms / trial_ms:.2f} trials)")
    print(f"reconcile, some trials never linked: {unlinked_ms:6.1f} ms per call ({unlinked_ms / trial_ms:.2f} trials)")
    result = {
        "n_trials": n_trials,
        "trial_ms": trial_ms,
        "linked_ms": linked_ms,
        "recovering_ms": recovering_ms,
        "unlinked_ms": unlinked_ms,
    }
    args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
