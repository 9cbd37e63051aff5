"""Command line: `fashion-hpo study | register | predict | verify`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fashion_hpo.constants import CHAMPION_ALIAS, DEFAULT_REGISTERED_MODEL_NAME
from fashion_hpo.flags import DEFAULTS, REGISTER_FLAGS, count, flag_specs, settings_from_args
from fashion_hpo.predict import INVERT_CHOICES
from fashion_hpo.process import handle_interrupts, keep_freed_memory, signal_name, use_threads
from fashion_hpo.settings import UsageError, threads_per_worker, validate


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


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


def add_verify_flags(parser: argparse.ArgumentParser) -> None:
    """The `verify` flags."""
    parser.add_argument(
        "model_uri",
        nargs="?",
        default=f"models:/{DEFAULT_REGISTERED_MODEL_NAME}@{CHAMPION_ALIAS}",
        metavar="MODEL",
        help="models:/NAME@ALIAS or models:/NAME/VERSION (default: %(default)s)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="keep the checked copy in this new folder, e.g. to serve it with `mlflow models serve -m FOLDER` "
        "(default: check only)",
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
    add_verify_flags(
        commands.add_parser("verify", help="check a registered model's files against the digests of its version")
    )
    return parser


def run_command(args: argparse.Namespace) -> int:
    """Dispatch a parsed command line; user-fixable problems raise UsageError."""
    if args.command == "predict":
        return run_predict_command(args)
    if args.command == "verify":
        return run_verify_command(args)
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


def run_verify_command(args: argparse.Namespace) -> int:
    """`fashion-hpo verify`: a serving user's check before `mlflow models serve`."""
    from fashion_hpo.predict import ModelLoadError, run_verify

    if args.keep is not None and (args.keep.exists() or not args.keep.parent.is_dir()):
        raise UsageError("--keep", f"{args.keep} must be a new folder in an existing one")
    try:
        return run_verify(args.model_uri, args.keep)
    except ModelLoadError as err:
        raise UsageError("MODEL", str(err)) from err


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fashion-hpo` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handle_interrupts(f"{parser.prog} {args.command}")
    try:
        return run_command(args)
    except UsageError as err:
        print(f"{parser.prog} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        signum = signal_name(interrupt)
        # A fresh line: the interrupt may have cut a progress bar or a log line short.
        sys.stderr.write(
            f"\n{parser.prog} {args.command}: interrupted ({signum.name}); rerun the same command to continue\n"
        )
        sys.stderr.flush()
        return 128 + signum
