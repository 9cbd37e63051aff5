"""Command line: `fashion-hpo study | register | predict | verify | storage-proxy`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from fashion_hpo.cli.parser import build_parser, parse_args, settings_from_args
from fashion_hpo.core.errors import UsageError
from fashion_hpo.core.process import handle_interrupts, keep_freed_memory, signal_name, use_threads, wait_passively
from fashion_hpo.core.proxy_settings import ProxySettings
from fashion_hpo.core.settings import STUDY, RunSettings
from fashion_hpo.core.urls import proxy_address, redact_url
from fashion_hpo.core.use_settings import PredictSettings, VerifySettings
from fashion_hpo.core.validation import check_storage, threads_per_worker, validate
from fashion_hpo.storage.outage import StorageLost
from fashion_hpo.tracking.disk import disk_full_line, quiet_disk_full_logs


def run_search_command(command: str, settings: RunSettings) -> int:
    """`fashion-hpo study` or `register`."""
    device = validate(settings)
    keep_freed_memory()
    use_threads(threads_per_worker(settings))
    # Imported here so that `--help` and bad flags answer without loading torch, MLflow and Optuna.
    from fashion_hpo.data.raw import DataError
    from fashion_hpo.pipeline.register import run_register
    from fashion_hpo.pipeline.study import run_study

    try:
        return run_study(settings, device) if command == STUDY else run_register(settings, device)
    except DataError as err:
        raise UsageError("--data-dir", str(err)) from err


def run_predict_command(settings: PredictSettings) -> int:
    """`fashion-hpo predict`: files, or --test-samples."""
    from fashion_hpo.data.raw import DataError
    from fashion_hpo.registry.predict import ModelLoadError, run_predict, run_test_samples

    if not settings.images and not settings.test_samples:
        raise UsageError("IMAGE", "give image files to classify, or --test-samples N")
    try:
        if settings.test_samples:
            return run_test_samples(settings.model_uri, settings.data_dir, settings.test_samples)
        return run_predict(settings.model_uri, settings.images, settings.invert, settings.json)
    except ModelLoadError as err:
        raise UsageError("--model-uri", str(err)) from err
    except DataError as err:
        raise UsageError("--data-dir", str(err)) from err


def run_verify_command(settings: VerifySettings) -> int:
    """`fashion-hpo verify`: a serving user's check before `mlflow models serve`."""
    from fashion_hpo.registry.predict import ModelLoadError, run_verify

    keep = settings.keep
    if keep is not None and (keep.exists() or not keep.parent.is_dir()):
        raise UsageError("--keep", f"{keep} must be a new folder in an existing one")
    try:
        return run_verify(settings.model_uri, keep)
    except ModelLoadError as err:
        raise UsageError("MODEL", str(err)) from err


def run_proxy_command(settings: ProxySettings) -> int:
    """`fashion-hpo storage-proxy`: serve the database to workers until Ctrl-C or SIGTERM."""
    if proxy_address(settings.storage) is not None:
        raise UsageError("--storage", "give the database the proxy serves, not a proxy")
    check_storage(settings.storage)
    from fashion_hpo.search.study import STORAGE_ERRORS, storage_error
    from fashion_hpo.storage.proxy_server import start_proxy

    address = f"{settings.host}:{settings.port}"
    try:
        proxy = start_proxy(
            settings.storage, settings.host, settings.port, settings.threads, settings.storage_outage_timeout
        )
    except STORAGE_ERRORS as err:
        raise storage_error(err, settings.storage) from None
    except RuntimeError as err:  # gRPC's "Failed to bind to address"
        raise UsageError("--port", f"cannot listen on {address}: {str(err).split(';')[0]}") from None
    print(f"Storage proxy for {redact_url(settings.storage)}: workers take --storage grpc://{address}", flush=True)
    try:
        proxy.serve()
    except KeyboardInterrupt:
        print("Storage proxy stopped.", file=sys.stderr)
    return 0


def guarded(prog: str, run: Callable[[], int]) -> int:
    """Run a command with the stop signals handled: a user's mistake or an interrupt ends in one line."""
    wait_passively()
    handle_interrupts(prog)
    quiet_disk_full_logs()
    try:
        return run()
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except StorageLost as lost:  # the storage's database stayed away through --storage-outage-timeout
        print(f"{prog}: error: {lost}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        signum = signal_name(interrupt)
        # A fresh line: the interrupt may have cut a progress bar or a log line short.
        sys.stderr.write(f"\n{prog}: interrupted ({signum.name}); rerun the same command to continue\n")
        sys.stderr.flush()
        return 128 + signum
    except Exception as err:
        from fashion_hpo.storage.proxy import proxy_lost_line  # deferred: only a command that failed needs it

        line = disk_full_line(err) or proxy_lost_line(err)
        if line is None:
            raise
        print(f"{prog}: error: {line}", file=sys.stderr)
        return 1


def run_parsed(command: str, args: argparse.Namespace) -> int:
    """Run a parsed command line with the settings it names."""
    settings = settings_from_args(args)
    if isinstance(settings, RunSettings):
        return run_search_command(command, settings)
    if isinstance(settings, PredictSettings):
        return run_predict_command(settings)
    if isinstance(settings, ProxySettings):
        return run_proxy_command(settings)
    return run_verify_command(settings)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fashion-hpo` console script."""
    parser = build_parser()
    args = parse_args(parser, argv)
    return guarded(f"{parser.prog} {args.command}", lambda: run_parsed(args.command, args))
