"""Run settings: one frozen dataclass, validated once at the edge (CLI / MLproject) and logged as-is."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy.engine
import sqlalchemy.exc

if TYPE_CHECKING:
    import torch

from fashion_hpo.constants import (
    DEFAULT_REGISTERED_MODEL_NAME,
    LATENCY_MS,
    N_PARAMS,
    OBJECTIVE_DIRECTIONS,
    OPTIMIZED_METRIC,
)

PRUNERS = ("median", "hyperband", "successive-halving", "none")
SAMPLERS = ("tpe", "random", "qmc")
DEVICES = ("auto", "cpu", "cuda")
STORAGE_DIALECTS = ("sqlite", "postgresql", "mysql")
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
MODEL_DEFAULT = -1  # a size knob left to the model's default, resolved when the settings are made


class UsageError(ValueError):
    """A setting the user gave cannot work; `flag` names the option to fix."""

    def __init__(self, flag: str, message: str) -> None:
        label = "environment variable" if flag.isupper() and "_" in flag else "argument"
        super().__init__(f"{label} {flag}: {message}")
        self.flag = flag


@dataclass(frozen=True)
class CostLimits:
    """Deployment constraints (0 = none): at most `max_params` parameters, at most `max_latency_ms` per image."""

    max_params: int = 0
    max_latency_ms: float = 0.0

    def excess(self, name: str, value: float) -> float | None:
        """How far `value` of cost `name` exceeds its limit (<= 0: within it); None when that cost is unlimited."""
        limit = {N_PARAMS: self.max_params, LATENCY_MS: self.max_latency_ms}.get(name, 0)
        return value - limit if limit else None

    def allows(self, costs: dict[str, float]) -> bool:
        """Whether recorded costs (a trial's user attributes, a version's tags) are within every limit.

        A cost that was never measured (a trial pruned before its latency was timed) is not held against it."""
        return all((self.excess(name, float(value)) or 0.0) <= 0 for name, value in costs.items())

    def describe(self) -> str:
        """The limits as a short phrase, e.g. `n_params <= 100000, latency_ms <= 0.05`, or `none`."""
        limits = [f"{N_PARAMS} <= {self.max_params}"] if self.max_params else []
        limits += [f"{LATENCY_MS} <= {self.max_latency_ms:g}"] if self.max_latency_ms else []
        return ", ".join(limits) or "none"


NO_LIMITS = CostLimits()


@dataclass(frozen=True)
class RunSettings:
    """Everything one `fashion-hpo study` invocation needs; defaults are the documented ones."""

    n_trials: int = 100
    timeout: int = 600
    epochs: int = 10
    refit_epochs: int = 0
    model: str = "mlp"
    pruner: str = "median"
    sampler: str = "tpe"
    startup_trials: int = 10  # Optuna's TPE default
    seed: int = 42
    study_name: str = ""
    storage: str = DEFAULT_STORAGE
    max_train_samples: int = MODEL_DEFAULT  # TRIAL_TRAIN_SAMPLES of the model
    device: str = "auto"
    data_dir: Path = field(default_factory=lambda: Path("data"))
    registered_model_name: str = DEFAULT_REGISTERED_MODEL_NAME
    register: bool = True
    promote: str = "if-better"
    workers: int = 1
    threads: int = 0
    heartbeat_interval: int = 10
    grace_period: int = 60
    run_name: str = ""
    parent_run_id: str = ""
    progress_bar: bool = True
    baseline_trial: bool = True
    max_params: int = 0
    max_latency_ms: float = 0.0
    objectives: str = OPTIMIZED_METRIC

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

    def loggable(self) -> dict[str, str]:
        """The settings as MLflow params, with any password in a URL redacted."""
        params = {key: str(value) for key, value in asdict(self).items()}
        params["storage"] = redact_url(self.storage)
        return params


def flag_of(setting: str) -> str:
    """The command-line flag of a RunSettings field (`max_train_samples` -> `--max-train-samples`)."""
    return f"--{setting.replace('_', '-')}"


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))


# How MlflowException names a server's HTTP 401 and 403 answers (mlflow.protos.databricks_pb2 error codes).
REFUSALS = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}


def credentials_refused(err: Exception, uri: str, action: str) -> UsageError | None:
    """A tracking server's 401 or 403 as one line naming the variables that carry the credentials; None for
    any other error. `action` says what was refused (for a 403)."""
    status = REFUSALS.get(str(getattr(err, "error_code", "")))
    if status is None:
        return None
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    server = f"the tracking server {redact_url(uri)}"
    if status == 403:
        reason = f"{server} does not let user {user!r} {action} (HTTP 403): ask its admin for that permission"
    elif user:
        reason = f"{server} rejected user {user!r} (HTTP 401): check it and MLFLOW_TRACKING_PASSWORD"
    else:
        reason = f"{server} requires a login (HTTP 401): set it and MLFLOW_TRACKING_PASSWORD"
    return UsageError("MLFLOW_TRACKING_USERNAME", reason)


def sqlite_file(url: str) -> str | None:
    """The database file of a SQLite URL; None for other databases and for in-memory SQLite."""
    if not url.startswith("sqlite"):
        return None
    database = sqlalchemy.engine.make_url(url).database
    return database if database and database != ":memory:" else None


def check_storage(url: str, source: str = "--storage") -> None:
    """Reject storage URLs that SQLAlchemy cannot parse or whose database kind Optuna cannot use; `source` names
    where the URL came from."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UsageError(source, f"not a database URL: {redact_url(url)!r} (e.g. {DEFAULT_STORAGE})") from None
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
