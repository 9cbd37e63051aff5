"""Run settings, declared once: each field's default, help, type and commands. The CLI, MLproject and the docs'
parameter table are built from these fields (`python -m fashion_hpo.cli.reference` writes the last two)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, cast

from fashion_hpo.core.constants import (
    DEFAULT_REGISTERED_MODEL_NAME,
    LATENCY_MS,
    MODEL_KINDS,
    N_PARAMS,
    OPTIMIZED_METRIC,
    PROMOTE_CHOICES,
)
from fashion_hpo.core.limits import CostLimits
from fashion_hpo.core.urls import redact_url

PRUNERS = ("median", "hyperband", "successive-halving", "none")
SAMPLERS = ("tpe", "random", "qmc")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_STORAGE = "sqlite:///optuna.db"
# The storage URL when --storage is not given: keeps a database password off command lines, where `mlflow run`
# would log it as a parameter and `ps` would show it.
STORAGE_ENV = "FASHION_HPO_STORAGE"
# Trials train short so that more configurations fit the budget; the one refit can afford a longer schedule.
REFIT_EPOCHS_FACTOR = 2
# Training images per trial when --max-train-samples is not given (0 = all 50,000). A CNN trial on all of them takes
# 5-9 minutes on 2 cores, so a 30-minute study judged 4-10 configurations, mostly random draws; on 10,000
# it takes about a minute, and the study judged 19 and 32, enough for the pruner and TPE to act
# (benchmarks/quality_cnn*.json). MLP trials are cheap on all of them. The refit always trains on all 60,000.
TRIAL_TRAIN_SAMPLES = {"mlp": 0, "cnn": 10_000}
OUTAGE_TIMEOUT_S = 300  # --storage-outage-timeout's default, the proxy's too (storage/outage.py says why)
MODEL_DEFAULT = -1  # a size knob left to the model's default, resolved when the settings are made
STUDY, REGISTER = "study", "register"


def count(minimum: int) -> Callable[[str], int]:
    """A parser for integers of at least `minimum`."""

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
    """A parser for finite numbers >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def setting(
    default: Any,
    help: str,
    *,
    parse: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] = (),
    commands: tuple[str, ...] = (STUDY,),
    shown: str | None = None,
    mlproject: bool = True,
    positional: bool = False,
) -> Any:
    """A settings field: its default, its `--help` text, how a flag's text is parsed and which `choices` it takes,
    the commands that have it, the default as typed (`shown`, when the field's differs), and whether MLproject
    passes it."""
    metadata: dict[str, Any] = {"help": help, "parse": parse, "choices": choices, "commands": commands}
    metadata |= {"shown": shown}
    metadata |= {"mlproject": mlproject, "positional": positional}
    if isinstance(default, list | Path):
        return field(default_factory=lambda: default, metadata=metadata)
    return field(default=default, metadata=metadata)


def typed_default(spec: Field[Any]) -> str:
    """A field's default as a user types it on the command line or in MLproject."""
    if spec.metadata["shown"] is not None:
        return str(spec.metadata["shown"])
    return str(field_default(spec))


def field_default(spec: Field[Any]) -> Any:
    """A field's default value (made by its factory, for a list or a path)."""
    return spec.default if spec.default is not MISSING else cast(Callable[[], Any], spec.default_factory)()


def flag_of(setting_name: str) -> str:
    """The command-line flag of a settings field (`max_train_samples` -> `--max-train-samples`)."""
    return f"--{setting_name.replace('_', '-')}"


def command_fields(cls: type, command: str) -> list[Field[Any]]:
    """The fields of settings class `cls` that `command` takes, in declaration order."""
    return [spec for spec in fields(cls) if command in spec.metadata["commands"]]


ALL = (STUDY, REGISTER)


@dataclass(frozen=True)
class RunSettings:
    """Everything one `fashion-hpo study` (or `register`) invocation needs."""

    n_trials: int = setting(
        100,
        "trials of the study in all (complete, pruned or failed), whichever worker runs them; a rerun continues up "
        "to this total",
        parse=count(1),
    )
    timeout: int = setting(
        600, "this worker stops starting trials after this many seconds; 0 = no limit", parse=count(0)
    )
    epochs: int = setting(10, "epochs per trial", parse=count(1))
    refit_epochs: int = setting(
        0,
        f"epochs of the best configuration's refit on all 60,000 training images; 0 = {REFIT_EPOCHS_FACTOR} x the "
        "epochs its trial trained",
        parse=count(0),
        commands=ALL,
    )
    model: str = setting("mlp", "architecture family", choices=MODEL_KINDS, commands=ALL)
    pruner: str = setting("median", "Optuna pruner", choices=PRUNERS)
    sampler: str = setting("tpe", "Optuna sampler", choices=SAMPLERS)
    startup_trials: int = setting(
        10,
        "tpe only: completed trials drawn at random before TPE models the results (the baseline trial counts as one)",
        parse=count(0),
    )
    seed: int = setting(42, "seeds the sampler, the train/validation split and torch", parse=count(0), commands=ALL)
    study_name: str = setting(
        "", "Optuna study and MLflow experiment name; empty = fashion-mnist-<model>", commands=ALL
    )
    storage: str = setting(
        DEFAULT_STORAGE,
        f"Optuna storage URL; an existing study of that name is continued; empty = ${STORAGE_ENV}, else "
        f"{DEFAULT_STORAGE} (the variable keeps a password off the command line)",
        commands=ALL,
        shown="",
    )
    max_train_samples: int = setting(
        MODEL_DEFAULT,
        "train each trial on this many training images; 0 = all 50,000; auto = "
        + ", ".join(f"{samples or 'all'} for {model}" for model, samples in TRIAL_TRAIN_SAMPLES.items()),
        parse=train_samples,
        shown="auto",
    )
    device: str = setting("auto", "auto picks CUDA when present", choices=DEVICES, commands=ALL)
    data_dir: Path = setting(
        Path("data"),
        "folder for FashionMNIST/raw; filled from Debian's dataset-fashion-mnist",
        parse=Path,
        commands=ALL,
    )
    checkpoint_dir: str = setting(
        "",
        "folder where each running trial saves its state after every epoch (removed when the trial ends), so that a "
        "retry of a trial whose worker died resumes from its last epoch; local to each machine unless shared; "
        "empty = <data-dir>/checkpoints",
    )
    registered_model_name: str = setting(
        DEFAULT_REGISTERED_MODEL_NAME, "MLflow Model Registry name of the best model", commands=ALL
    )
    register: bool = setting(
        True, "refit, test and register the best trial (--no-register: search only)", mlproject=False
    )
    promote: str = setting(
        "if-better",
        "if-better: the new model becomes @champion only if its test accuracy beats the current one's, else "
        "@challenger; if-significant: only if it is better with McNemar's p below --significance on the same test "
        "images; always: it becomes @champion",
        choices=PROMOTE_CHOICES,
        commands=ALL,
    )
    significance: float = setting(
        0.05,
        "--promote if-significant: the p-value below which a better test accuracy is progress, not noise",
        parse=non_negative_float,
        commands=ALL,
    )
    workers: int = setting(
        1,
        "worker processes on this machine searching the study together; needs a storage file or server",
        parse=count(1),
    )
    threads: int = setting(0, "torch threads per process; 0 = the cores / --workers", parse=count(0), commands=ALL)
    heartbeat_interval: int = setting(10, "seconds between a running trial's heartbeats in the storage", parse=count(1))
    grace_period: int = setting(
        60,
        "seconds without a heartbeat after which a trial's worker counts as dead: the trial is marked failed and "
        "retried",
        parse=count(1),
    )
    storage_outage_timeout: int = setting(
        OUTAGE_TIMEOUT_S,
        "seconds a worker waits for the --storage database through an outage (a restart, a failover) before it "
        "stops; its running trial is retried when the command is rerun",
        parse=count(0),
    )
    run_name: str = setting("", "MLflow name of this invocation's run; empty = the study name", mlproject=False)
    parent_run_id: str = setting(
        "", "nest this invocation's MLflow run under this run (--workers does so for its workers)", mlproject=False
    )
    progress_bar: bool = setting(
        True, "draw the progress bar in a terminal (--no-progress-bar: plain lines, e.g. in logs)", mlproject=False
    )
    baseline_trial: bool = setting(
        True,
        "a new study's first trial trains the search space's baseline configuration, a known-good starting point "
        "(--no-baseline-trial: the sampler's draws only)",
        mlproject=False,
    )
    patience: int = setting(
        0,
        "end the search once this many trials in a row, complete or pruned, did not raise the best value by more "
        "than --min-delta; 0 = never",
        parse=count(0),
    )
    min_delta: float = setting(
        0.0, "--patience: the least rise of the best value that counts", parse=non_negative_float
    )
    warm_start_from: str = setting(
        "",
        "a new study's first trials are the best configurations of this study in the same --storage, or the one "
        "a registered version records (models:/NAME@ALIAS or models:/NAME/VERSION); no baseline trial then; "
        "empty = none",
    )
    warm_start_trials: int = setting(3, "--warm-start-from a study: how many of its best trials", parse=count(1))
    max_params: int = setting(
        0,
        "constraint: trainable parameters at most this; a larger configuration is pruned before it trains, and only "
        "trials within it can be registered or become @champion; 0 = none",
        parse=count(0),
        commands=ALL,
    )
    max_latency_ms: float = setting(
        0.0,
        "constraint: CPU milliseconds per image (batches of 256) at most this, measured on each trained trial; only "
        "trials within it can be registered or become @champion; 0 = none",
        parse=non_negative_float,
        commands=ALL,
    )
    objectives: str = setting(
        OPTIMIZED_METRIC,
        f"comma-separated, {OPTIMIZED_METRIC} first: one = maximize it; two (e.g. {OPTIMIZED_METRIC},{LATENCY_MS} "
        f"or {OPTIMIZED_METRIC},{N_PARAMS}) = a multi-objective study whose Pareto front is logged, pruning off",
    )

    @property
    def limits(self) -> CostLimits:
        """The deployment constraints these settings give."""
        return CostLimits(self.max_params, self.max_latency_ms)

    @property
    def objective_names(self) -> tuple[str, ...]:
        """The study's objectives in order (validation accuracy first), from the comma-separated setting."""
        return tuple(name.strip() for name in self.objectives.split(","))

    def __post_init__(self) -> None:
        if not self.study_name:
            object.__setattr__(self, "study_name", f"fashion-mnist-{self.model}")
        if self.max_train_samples == MODEL_DEFAULT:
            object.__setattr__(self, "max_train_samples", TRIAL_TRAIN_SAMPLES[self.model])
        object.__setattr__(self, "data_dir", Path(self.data_dir))

    def loggable(self) -> dict[str, str]:
        """The settings as MLflow params, with any password in a URL redacted."""
        params = {key: str(value) for key, value in asdict(self).items()}
        params["storage"] = redact_url(self.storage)
        return params

    def to_json(self) -> str:
        """The settings as JSON, exactly: how `--workers` hands them to its worker processes."""
        return json.dumps({**asdict(self), "data_dir": str(self.data_dir)})

    @classmethod
    def from_json(cls, text: str) -> RunSettings:
        """The settings `to_json` wrote."""
        return cls(**json.loads(text))
