"""The study-side flags: one table of argparse options (help texts state the defaults), and the way back from
settings to flags that `--workers` uses to start its workers."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from fashion_hpo.constants import LATENCY_MS, MODEL_KINDS, N_PARAMS, OPTIMIZED_METRIC, PROMOTE_CHOICES
from fashion_hpo.settings import (
    DEVICES,
    MODEL_DEFAULT,
    PRUNERS,
    REFIT_EPOCHS_FACTOR,
    SAMPLERS,
    STORAGE_ENV,
    TRIAL_TRAIN_SAMPLES,
    RunSettings,
    storage_from_environment,
)

DEFAULTS = RunSettings()


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type for integers of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def train_samples(text: str) -> int:
    """--max-train-samples: an integer >= 0, or `auto` for the model's default."""
    return MODEL_DEFAULT if text == "auto" else count(0)(text)


def non_negative_float(text: str) -> float:
    """An argparse type for finite numbers >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def flag_specs() -> dict[str, dict[str, Any]]:
    """Every flag of the study-side commands: argparse options, help texts stating their defaults."""
    return {
        "--n-trials": dict(
            type=count(1),
            default=DEFAULTS.n_trials,
            help="trials of the study in all (complete, pruned or failed), whichever worker runs them; a rerun "
            "continues up to this total (default: %(default)s)",
        ),
        "--timeout": dict(
            type=count(0),
            default=DEFAULTS.timeout,
            help="this worker stops starting trials after this many seconds; 0 = no limit (default: %(default)s)",
        ),
        "--epochs": dict(type=count(1), default=DEFAULTS.epochs, help="epochs per trial (default: %(default)s)"),
        "--refit-epochs": dict(
            type=count(0),
            default=DEFAULTS.refit_epochs,
            help=f"epochs of the best configuration's refit on all 60,000 training images; 0 = {REFIT_EPOCHS_FACTOR} "
            "x the epochs its trial trained (default: %(default)s)",
        ),
        "--model": dict(choices=MODEL_KINDS, default=DEFAULTS.model, help="architecture family (default: %(default)s)"),
        "--pruner": dict(choices=PRUNERS, default=DEFAULTS.pruner, help="Optuna pruner (default: %(default)s)"),
        "--sampler": dict(choices=SAMPLERS, default=DEFAULTS.sampler, help="Optuna sampler (default: %(default)s)"),
        "--startup-trials": dict(
            type=count(0),
            default=DEFAULTS.startup_trials,
            help="tpe only: completed trials drawn at random before TPE models the results (the baseline trial "
            "counts as one) (default: %(default)s)",
        ),
        "--seed": dict(
            type=count(0),
            default=DEFAULTS.seed,
            help="seeds the sampler, the train/validation split and torch (default: %(default)s)",
        ),
        "--study-name": dict(
            default="", help="Optuna study and MLflow experiment name (default: fashion-mnist-<model>)"
        ),
        "--storage": dict(
            default="",
            help=f"Optuna storage URL; an existing study of that name is continued (default: ${STORAGE_ENV}, "
            f"else {DEFAULTS.storage}; the variable keeps a password off the command line)",
        ),
        "--max-train-samples": dict(
            type=train_samples,
            default=MODEL_DEFAULT,
            help="train each trial on this many training images; 0 = all 50,000; auto = "
            + ", ".join(f"{samples or 'all'} for {model}" for model, samples in TRIAL_TRAIN_SAMPLES.items())
            + " (default: auto)",
        ),
        "--device": dict(
            choices=DEVICES, default=DEFAULTS.device, help="auto picks CUDA when present (default: %(default)s)"
        ),
        "--data-dir": dict(
            type=Path,
            default=DEFAULTS.data_dir,
            help="folder for FashionMNIST/raw; filled from Debian's dataset-fashion-mnist (default: %(default)s)",
        ),
        "--registered-model-name": dict(
            default=DEFAULTS.registered_model_name,
            help="MLflow Model Registry name of the best model (default: %(default)s)",
        ),
        "--workers": dict(
            type=count(1),
            default=DEFAULTS.workers,
            help="worker processes on this machine searching the study together; needs a storage file or server "
            "(default: %(default)s)",
        ),
        "--threads": dict(
            type=count(0),
            default=DEFAULTS.threads,
            help="torch threads per worker; 0 = this machine's cores / --workers (default: %(default)s)",
        ),
        "--heartbeat-interval": dict(
            type=count(1),
            default=DEFAULTS.heartbeat_interval,
            help="seconds between a running trial's heartbeats in the storage (default: %(default)s)",
        ),
        "--grace-period": dict(
            type=count(1),
            default=DEFAULTS.grace_period,
            help="seconds without a heartbeat after which a trial's worker counts as dead: the trial is marked "
            "failed and retried (default: %(default)s)",
        ),
        "--run-name": dict(default="", help="MLflow name of this invocation's run (default: the study name)"),
        "--parent-run-id": dict(
            default="",
            help="nest this invocation's MLflow run under this run; --workers does so for its workers (default: none)",
        ),
        "--promote": dict(
            choices=PROMOTE_CHOICES,
            default=DEFAULTS.promote,
            help="if-better: the new model becomes @champion only if its test accuracy beats the current one, "
            "else @challenger; always: it becomes @champion (default: %(default)s)",
        ),
        "--max-params": dict(
            type=count(0),
            default=DEFAULTS.max_params,
            help="constraint: trainable parameters at most this; a larger configuration is pruned before it trains, "
            "and only trials within it can be registered or become @champion; 0 = none (default: %(default)s)",
        ),
        "--max-latency-ms": dict(
            type=non_negative_float,
            default=DEFAULTS.max_latency_ms,
            help="constraint: CPU milliseconds per image (batches of 256) at most this, measured on each trained "
            "trial; only trials within it can be registered or become @champion; 0 = none (default: %(default)s)",
        ),
        "--objectives": dict(
            default=DEFAULTS.objectives,
            help=f"comma-separated, {OPTIMIZED_METRIC} first: one = maximize it; two (e.g. "
            f"{OPTIMIZED_METRIC},{LATENCY_MS} or {OPTIMIZED_METRIC},{N_PARAMS}) = a multi-objective study whose Pareto "
            "front is logged, pruning off (default: %(default)s)",
        ),
    }


REGISTER_FLAGS = (
    "--refit-epochs",
    "--study-name",
    "--model",
    "--storage",
    "--seed",
    "--device",
    "--data-dir",
    "--registered-model-name",
    "--promote",
    "--max-params",
    "--max-latency-ms",
)


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    """The run settings named by the parsed flags (defaults for flags the command does not take)."""
    values = {f.name: getattr(args, f.name) for f in fields(RunSettings) if hasattr(args, f.name)}
    values["storage"] = values.get("storage") or storage_from_environment()  # MLproject passes '' for none
    return RunSettings(**values)


def study_argv(settings: RunSettings) -> list[str]:
    """The `fashion-hpo study` flags that reproduce these settings (how --workers starts its workers)."""
    argv = [item for flag in flag_specs() for item in (flag, str(getattr(settings, flag[2:].replace("-", "_"))))]
    if settings.storage == os.environ.get(STORAGE_ENV):
        argv[argv.index("--storage") + 1] = ""  # the workers inherit the variable: no password on their command line
    switches = {"--no-register": settings.register, "--no-progress-bar": settings.progress_bar}
    switches["--no-baseline-trial"] = settings.baseline_trial
    return argv + [flag for flag, on in switches.items() if not on]
