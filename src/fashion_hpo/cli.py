"""Command line: `fashion-hpo study` searches, tracks, refits the best trial, tests it once, and registers it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from fashion_hpo.constants import MODEL_KINDS
from fashion_hpo.settings import DEVICES, PRUNERS, SAMPLERS, RunSettings, UsageError, validate

DEFAULTS = RunSettings()


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def count(minimum: int) -> type:
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


def add_study_flags(parser: argparse.ArgumentParser) -> None:
    """The `study` flags; each help text states its default."""
    add = parser.add_argument
    add("--n-trials", type=count(1), default=DEFAULTS.n_trials, help="trials to run (default: %(default)s)")
    add(
        "--timeout",
        type=count(0),
        default=DEFAULTS.timeout,
        help="stop starting trials after this many seconds; 0 = no limit (default: %(default)s)",
    )
    add(
        "--epochs",
        type=count(1),
        default=DEFAULTS.epochs,
        help="epochs per trial and refit (default: %(default)s)",
    )
    add(
        "--model",
        choices=MODEL_KINDS,
        default=DEFAULTS.model,
        help="architecture family (default: %(default)s)",
    )
    add("--pruner", choices=PRUNERS, default=DEFAULTS.pruner, help="Optuna pruner (default: %(default)s)")
    add("--sampler", choices=SAMPLERS, default=DEFAULTS.sampler, help="Optuna sampler (default: %(default)s)")
    add(
        "--seed",
        type=count(0),
        default=DEFAULTS.seed,
        help="seeds the sampler, the train/validation split and torch (default: %(default)s)",
    )
    add(
        "--study-name",
        default="",
        help="Optuna study and MLflow experiment name (default: fashion-mnist-<model>)",
    )
    add(
        "--storage",
        default=DEFAULTS.storage,
        help="Optuna storage URL; an existing study of that name is continued (default: %(default)s)",
    )
    add(
        "--max-train-samples",
        type=count(0),
        default=DEFAULTS.max_train_samples,
        help="train each trial on this many training images; 0 = all 50,000 (default: %(default)s)",
    )
    add(
        "--device",
        choices=DEVICES,
        default=DEFAULTS.device,
        help="auto picks CUDA when present (default: %(default)s)",
    )
    add(
        "--data-dir",
        type=Path,
        default=DEFAULTS.data_dir,
        help="folder for FashionMNIST/raw, filled from Debian's dataset-fashion-mnist if empty (default: %(default)s)",
    )
    add(
        "--registered-model-name",
        default=DEFAULTS.registered_model_name,
        help="MLflow Model Registry name of the best model (default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The `fashion-hpo` parser and its subcommands."""
    parser = OneLineParser(prog="fashion-hpo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    add_study_flags(commands.add_parser("study", help="run the tracked study and register the best model"))
    return parser


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    """The run settings named by the parsed flags."""
    return RunSettings(**{f.name: getattr(args, f.name) for f in fields(RunSettings)})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fashion-hpo` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"{parser.prog} {args.command}"
    try:
        settings = settings_from_args(args)
        device = validate(settings)
        # Imported here so that `--help` and bad flags answer without loading torch, MLflow and Optuna.
        from fashion_hpo.data import DataError
        from fashion_hpo.pipeline import run_study

        try:
            return run_study(settings, device)
        except DataError as err:
            raise UsageError("--data-dir", str(err)) from err
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
