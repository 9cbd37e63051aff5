"""Checks at the edge of what argument parsing cannot see: storage URLs, the data folder, devices, objectives."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy.engine
import sqlalchemy.exc

from fashion_hpo.core.constants import OBJECTIVE_DIRECTIONS, OPTIMIZED_METRIC
from fashion_hpo.core.errors import UsageError
from fashion_hpo.core.settings import DEFAULT_STORAGE, STORAGE_ENV, RunSettings
from fashion_hpo.core.urls import proxy_address, redact_url, sqlite_file

if TYPE_CHECKING:
    import torch

STORAGE_DIALECTS = ("sqlite", "postgresql", "mysql")


def check_storage(url: str, source: str = "--storage") -> None:
    """Reject storage URLs that SQLAlchemy cannot parse or whose database kind Optuna cannot use; `source` names
    where the URL came from."""
    try:
        if proxy_address(url) is not None:  # `fashion-hpo storage-proxy` in front of the database
            return
    except ValueError as err:
        raise UsageError(source, str(err)) from None
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UsageError(
            source, f"not a database URL: {redact_url(url)!r} (e.g. {DEFAULT_STORAGE}, or grpc://HOST:PORT for a proxy)"
        ) from None
    if parsed.get_backend_name() not in STORAGE_DIALECTS:
        raise UsageError(
            source,
            f"unsupported database {parsed.get_backend_name()!r}; use one of {', '.join(STORAGE_DIALECTS)}",
        )
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        folder = Path(parsed.database).resolve().parent
        if not folder.is_dir():
            raise UsageError(source, f"folder {folder} for the SQLite file does not exist")


def storage_from_environment() -> str:
    """The storage URL when --storage is not given: $FASHION_HPO_STORAGE, checked like the flag, else the default."""
    url = os.environ.get(STORAGE_ENV, "")
    if not url:
        return DEFAULT_STORAGE
    check_storage(url, STORAGE_ENV)
    return url


def check_data_dir(path: Path) -> None:
    """The data folder must be a folder we can read and write (it is created when missing)."""
    if path.exists() and not path.is_dir():
        raise UsageError("--data-dir", f"{path} is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError("--data-dir", f"cannot create {path}: {err.strerror}") from None
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise UsageError("--data-dir", f"{path} is not readable and writable")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_worker(settings: RunSettings) -> int:
    """`--threads`, or the machine's cores split evenly between the `--workers` (at least one each)."""
    return settings.threads or max(1, available_cores() // settings.workers)


def check_scale_out(settings: RunSettings) -> None:
    """Worker processes need a storage they can share, and heartbeats need a grace period longer than their interval."""
    if settings.grace_period <= settings.heartbeat_interval:
        raise UsageError(
            "--grace-period",
            f"must be longer than --heartbeat-interval ({settings.grace_period} <= {settings.heartbeat_interval})",
        )
    if settings.workers > 1 and settings.storage.startswith("sqlite") and sqlite_file(settings.storage) is None:
        raise UsageError("--storage", "an in-memory SQLite database cannot be shared by --workers; give a file")


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without it is a usage error."""
    import torch  # deferred: validating flags should not wait for torch to load

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device", "cuda requested but no CUDA device is available (use auto or cpu)")
    return torch.device(name)


def check_objectives(objectives: tuple[str, ...]) -> None:
    """Objectives are known names, validation accuracy first, each once."""
    unknown = [name for name in objectives if name not in OBJECTIVE_DIRECTIONS]
    if unknown:
        raise UsageError("--objectives", f"unknown {unknown[0]!r}; choose from {', '.join(OBJECTIVE_DIRECTIONS)}")
    if objectives[0] != OPTIMIZED_METRIC or len(set(objectives)) != len(objectives):
        raise UsageError(
            "--objectives",
            f"start with {OPTIMIZED_METRIC}, name each objective once (e.g. {OPTIMIZED_METRIC},latency_ms)",
        )


def validate(settings: RunSettings) -> torch.device:
    """Check what argument parsing cannot see; returns the device to train on."""
    device = resolve_device(settings.device)
    check_storage(settings.storage)
    check_scale_out(settings)
    check_objectives(settings.objective_names)
    check_data_dir(settings.data_dir)  # last: it is the one check that may create something
    return device
