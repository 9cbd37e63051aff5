"""Benchmark 3: what MLflow tracking costs per trial.

The same seeded study (same sampler seed, same trials) runs with tracking off and on, alternating in one process;
the time of `study.optimize` is compared: the trials with their child runs and the callback that closes each run
(the parent run's setup, plots and registration excluded). Then tracking alone, without training's noise: a study of
trials that train nothing but report as many epochs and costs as a real trial, tracked and not.
Writes a JSON file next to this script.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from functools import partial

import mlflow
import optuna
import torch
from benchmark_args import device_label, parse_args, timed

from fashion_hpo.core.settings import RunSettings
from fashion_hpo.data.splits import FashionData, load_data
from fashion_hpo.search.objective import make_objective
from fashion_hpo.tracking.metrics import log_costs, log_epoch
from fashion_hpo.tracking.runs import parent_run
from fashion_hpo.tracking.trials import tracked_objective
from fashion_hpo.training.costs import ModelCosts
from fashion_hpo.training.loop import EpochResult, Evaluation


def trial_seconds(data: FashionData, settings: RunSettings, tracked: bool, device: torch.device) -> float:
    """Seconds of one seeded study's trials, with or without MLflow tracking (the callback that closes each run
    included; creating the parent run excluded)."""
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=settings.seed), pruner=optuna.pruners.NopPruner()
    )
    report = log_epoch if tracked else None
    objective = make_objective(data, settings, report)
    if not tracked:
        return timed(partial(study.optimize, objective, n_trials=settings.n_trials), device)
    with parent_run(settings):
        wrapped, tracker = tracked_objective(objective, settings)
        return timed(partial(study.optimize, wrapped, n_trials=settings.n_trials, callbacks=[tracker]), device)


def untrained_objective(epochs: int, tracked: bool) -> Callable[[optuna.Trial], float]:
    """A trial that samples two params and reports `epochs` epochs and its costs, as a real trial does, in no time."""

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        trial.suggest_int("n_units_l0", 4, 1024, log=True)
        for epoch in range(1, epochs + 1):
            if tracked:
                log_epoch(trial, EpochResult(epoch, 0.5, Evaluation(loss=0.4, accuracy=0.8), 0.1))
        if tracked:
            log_costs(trial, ModelCosts(n_params=1000, flops=2000, latency_ms=0.01))
        return 0.8

    return objective


def tracking_alone(settings: RunSettings, n_trials: int) -> dict[str, float]:
    """Seconds per trial of a study of untrained trials, tracked and not, and the difference: what tracking costs."""
    seconds = {}
    for tracked in (False, True):
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
        objective = untrained_objective(settings.epochs, tracked)
        if not tracked:
            seconds[tracked] = timed(partial(study.optimize, objective, n_trials=n_trials)) / n_trials
            continue
        with parent_run(settings):
            wrapped, tracker = tracked_objective(objective, settings)
            seconds[tracked] = (
                timed(partial(study.optimize, wrapped, n_trials=n_trials, callbacks=[tracker])) / n_trials
            )
    return {"untracked_s": seconds[False], "tracked_s": seconds[True], "per_trial_s": seconds[True] - seconds[False]}


def main() -> None:
    args = parse_args(__doc__, __file__, "3 trials x 2 epochs", device=True)
    n_trials, epochs, samples = (3, 2, 2000) if args.quick else (8, 5, 10_000)
    settings = RunSettings(n_trials=n_trials, epochs=epochs, max_train_samples=samples, seed=1, study_name="overhead")
    data = load_data(args.data_dir, seed=0, device=args.device)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
        os.environ["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
        order = [False, True, True, False]  # alternate, so that drift of the machine cancels out
        seconds = {False: 0.0, True: 0.0}
        for tracked in order:
            seconds[tracked] += trial_seconds(data, settings, tracked, args.device)
        alone = tracking_alone(settings, 10 if args.quick else 50)
    overhead = seconds[True] / seconds[False] - 1
    per_trial = (seconds[True] - seconds[False]) / (2 * n_trials)
    print(f"{n_trials} trials x {epochs} epochs x {samples} samples, twice each way, {device_label(args.device)}")
    print(f"trial seconds  off: {seconds[False]:.2f}  on: {seconds[True]:.2f}  overhead: {overhead:+.1%} (goal <= 3%)")
    print(f"tracking cost per trial: {per_trial:.3f} s (per untracked trial: {seconds[False] / (2 * n_trials):.2f} s)")
    print(
        f"tracking alone ({epochs} epochs and costs reported, nothing trained): {alone['per_trial_s']:.3f} s per trial "
        f"(goal <= 0.05 s; the untracked trial {alone['untracked_s'] * 1000:.1f} ms)"
    )
    result = {
        "device": device_label(args.device),
        "n_trials": n_trials,
        "epochs": epochs,
        "samples": samples,
        "off_s": seconds[False],
        "on_s": seconds[True],
        "overhead": overhead,
        "per_trial_s": per_trial,
        "tracking_alone": alone,
    }
    args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
