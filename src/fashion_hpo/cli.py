"""Command line: `fashion-hpo study | register | predict`."""

from __future__ import annotations

import argparse
import ctypes
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from fashion_hpo.constants import CHAMPION_ALIAS, DEFAULT_REGISTERED_MODEL_NAME, MODEL_KINDS, PROMOTE_CHOICES
from fashion_hpo.predict import INVERT_CHOICES
from fashion_hpo.settings import (
    DEVICES,
    PRUNERS,
    REFIT_EPOCHS_FACTOR,
    SAMPLERS,
    RunSettings,
    UsageError,
    threads_per_worker,
    validate,
)

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
        "--seed": dict(
            type=count(0),
            default=DEFAULTS.seed,
            help="seeds the sampler, the train/validation split and torch (default: %(default)s)",
        ),
        "--study-name": dict(
            default="", help="Optuna study and MLflow experiment name (default: fashion-mnist-<model>)"
        ),
        "--storage": dict(
            default=DEFAULTS.storage,
            help="Optuna storage URL; an existing study of that name is continued (default: %(default)s)",
        ),
        "--max-train-samples": dict(
            type=count(0),
            default=DEFAULTS.max_train_samples,
            help="train each trial on this many training images; 0 = all 50,000 (default: %(default)s)",
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
)


def add_predict_flags(parser: argparse.ArgumentParser) -> None:
    """The `predict` flags."""
    add = parser.add_argument
    add("images", nargs="*", type=Path, metavar="IMAGE", help="PNG/JPEG files to classify (any size or colour mode)")
    add(
        "--model-uri",
        default=f"models:/{DEFAULT_REGISTERED_MODEL_NAME}@{CHAMPION_ALIAS}",
        help="model to load (default: %(default)s)",
    )
    add(
        "--invert",
        choices=INVERT_CHOICES,
        default="auto",
        help="FashionMNIST is a light garment on a dark background: yes inverts every image, no none, auto those "
        "whose border is light, like a photo on white (default: %(default)s)",
    )
    add("--json", action="store_true", help="print the predictions as JSON (default: one line per image)")
    add(
        "--test-samples",
        type=count(0),
        default=0,
        help="instead of files, classify this many official test images and print the accuracy (default: %(default)s)",
    )
    add(
        "--data-dir",
        type=Path,
        default=DEFAULTS.data_dir,
        help="FashionMNIST folder for --test-samples (default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The `fashion-hpo` parser and its subcommands."""
    parser = OneLineParser(prog="fashion-hpo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    study = commands.add_parser("study", help="run the tracked study, then refit, test and register the best model")
    for flag, spec in flag_specs().items():
        study.add_argument(flag, **spec)
    study.add_argument(
        "--no-register",
        dest="register",
        action="store_false",
        help="search only; register later with `fashion-hpo register` (default: register)",
    )
    study.add_argument(
        "--no-baseline-trial",
        dest="baseline_trial",
        action="store_false",
        help="start a new study from the sampler's draws only (default: its first trial trains the search space's "
        "baseline configuration, a known-good starting point)",
    )
    study.add_argument(
        "--no-progress-bar",
        dest="progress_bar",
        action="store_false",
        help="do not draw Optuna's progress bar, e.g. in logs (default: draw it)",
    )
    register = commands.add_parser("register", help="refit, test and register the best trial of an existing study")
    for flag, spec in flag_specs().items():
        if flag in REGISTER_FLAGS:
            register.add_argument(flag, **spec)
    add_predict_flags(commands.add_parser("predict", help="classify images with a registered model"))
    return parser


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    """The run settings named by the parsed flags (defaults for flags the command does not take)."""
    return RunSettings(**{f.name: getattr(args, f.name) for f in fields(RunSettings) if hasattr(args, f.name)})


def study_argv(settings: RunSettings) -> list[str]:
    """The `fashion-hpo study` flags that reproduce these settings (how --workers starts its workers)."""
    argv = [item for flag in flag_specs() for item in (flag, str(getattr(settings, flag[2:].replace("-", "_"))))]
    switches = {"--no-register": settings.register, "--no-progress-bar": settings.progress_bar}
    switches["--no-baseline-trial"] = settings.baseline_trial
    return argv + [flag for flag, on in switches.items() if not on]


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> None:
    """Let glibc keep freed memory for the next batch instead of unmapping it each time.

    Conv activations are tens of MB per batch; with glibc's defaults every batch maps and unmaps them again, which
    doubled a CNN epoch's time here (system time; 18.6 s -> 9.3 s on 5,000 images). The cost is a resident size that
    stays at its peak, which a training process reaches anyway.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc (macOS, musl): its allocator does not need this
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)


def use_threads(threads: int) -> None:
    """Set torch's intra-op threads, so that workers sharing a machine do not oversubscribe its cores."""
    import torch

    torch.set_num_threads(threads)


def run_command(args: argparse.Namespace) -> int:
    """Dispatch a parsed command line; user-fixable problems raise UsageError."""
    if args.command == "predict":
        return run_predict_command(args)
    settings = settings_from_args(args)
    device = validate(settings)
    keep_freed_memory()
    use_threads(threads_per_worker(settings))
    # Imported here so that `--help` and bad flags answer without loading torch, MLflow and Optuna.
    from fashion_hpo.data import DataError
    from fashion_hpo.pipeline import run_register, run_study

    try:
        return run_study(settings, device) if args.command == "study" else run_register(settings, device)
    except DataError as err:
        raise UsageError("--data-dir", str(err)) from err


def run_predict_command(args: argparse.Namespace) -> int:
    """`fashion-hpo predict`: files, or --test-samples."""
    from fashion_hpo.data import DataError
    from fashion_hpo.predict import ModelLoadError, run_predict, run_test_samples

    args.images = [path for path in args.images if str(path) not in ("", ".")]  # MLproject passes '' for none
    if not args.images and not args.test_samples:
        raise UsageError("IMAGE", "give image files to classify, or --test-samples N")
    try:
        if args.test_samples:
            return run_test_samples(args.model_uri, args.data_dir, args.test_samples)
        return run_predict(args.model_uri, args.images, args.invert, args.json)
    except ModelLoadError as err:
        raise UsageError("--model-uri", str(err)) from err
    except DataError as err:
        raise UsageError("--data-dir", str(err)) from err


class DropInterruptTraceback(logging.Filter):
    """Optuna logs a trial stopped by Ctrl-C with the traceback of the KeyboardInterrupt; the line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            record.exc_info, record.exc_text = None, None
        return True


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: runs are closed as KILLED, finished trials are kept."""


def raise_terminated(signum: int, frame: object) -> None:
    """SIGTERM handler."""
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fashion-hpo` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_terminated)
    logging.getLogger("optuna.study._optimize").addFilter(DropInterruptTraceback())  # the logger of failed trials
    try:
        return run_command(args)
    except UsageError as err:
        print(f"{parser.prog} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        name = "SIGTERM" if isinstance(interrupt, Terminated) else "SIGINT"
        print(
            f"{parser.prog} {args.command}: interrupted ({name}); rerun the same command to continue", file=sys.stderr
        )
        return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)
