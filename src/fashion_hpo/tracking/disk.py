"""A full disk as one line naming what was being written and what to do (the OS says ENOSPC; SQLite, through MLflow
or Optuna, says "database or disk is full"). Imports nothing heavy: the CLI asks it about any error it did not
expect."""

from __future__ import annotations

import errno
import logging
import os
import sys
import traceback
from collections.abc import Iterator

SQLITE_FULL = "database or disk is full"
TRACKING, OPTUNA = "mlflow", "optuna"  # the package whose code was writing, found in the traceback
# Loggers that print the traceback of a database error their code then raises.
RERAISING_LOGGERS = ("mlflow.store.db.utils",)
FAILED_TRIALS_LOGGER = "optuna.study._optimize"  # Optuna's line per failed trial, with the error's traceback


class DiskFullRecords(logging.Filter):
    """Drops a log record of a full disk: the error goes on up, and the CLI says it once, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record but one whose exception is a full disk."""
        err = record.exc_info[1] if record.exc_info else None
        return err is None or not is_disk_full(err)


class DiskFullTraceback(logging.Filter):
    """Keeps the line of a trial that a full disk failed (Optuna logs it and goes on), without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record; drop its traceback when its exception is a full disk."""
        err = record.exc_info[1] if record.exc_info else None
        if err is not None and is_disk_full(err):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_disk_full_logs() -> None:
    """Keep the loggers that re-raise what they log from printing a full disk's traceback, and Optuna's line of a
    trial it failed from printing one (once per process)."""
    for name in RERAISING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DiskFullRecords) for f in logger.filters):
            logger.addFilter(DiskFullRecords())
    trials = logging.getLogger(FAILED_TRIALS_LOGGER)
    if not any(isinstance(f, DiskFullTraceback) for f in trials.filters):
        trials.addFilter(DiskFullTraceback())


def causes(err: BaseException) -> Iterator[BaseException]:
    """The error and the errors it was raised from or while handling, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_disk_full(err: BaseException) -> bool:
    """Whether the error, or one it came from, is a full disk."""
    return any((isinstance(e, OSError) and e.errno == errno.ENOSPC) or SQLITE_FULL in str(e) for e in causes(err))


def written_file(err: BaseException) -> str | None:
    """The file the OS refused to write, when an error in the chain names it."""
    for e in causes(err):
        if isinstance(e, OSError) and e.errno == errno.ENOSPC and e.filename:
            return str(e.filename)
    return None


def writer(err: BaseException) -> str | None:
    """Which store's client was writing: the innermost MLflow or Optuna frame of the outermost error."""
    for e in causes(err):
        for frame in reversed(traceback.extract_tb(e.__traceback__)):
            for package in (TRACKING, OPTUNA):
                if f"{os.sep}{package}{os.sep}" in frame.filename:
                    return package
    return None


def tracking_store() -> str:
    """The MLflow tracking store in use: its SQLite file, or its URI with any password hidden."""
    from fashion_hpo.core.urls import redact_url, sqlite_file

    mlflow = sys.modules.get("mlflow")
    uri = mlflow.get_tracking_uri() if mlflow is not None else os.environ.get("MLFLOW_TRACKING_URI", "")
    return sqlite_file(uri) or redact_url(uri)


def last_artifacts() -> str:
    """Where the process's last MLflow run keeps its artifacts (a model is logged there too), or how to find it."""
    mlflow = sys.modules.get("mlflow")
    run = mlflow.last_active_run() if mlflow is not None else None
    return run.info.artifact_uri.removeprefix("file://") if run is not None else "the experiment's artifact location"


def disk_full_line(err: BaseException) -> str | None:
    """One line for a full disk: what was being written, where to free space or what to point elsewhere; None for
    any other error."""
    if not is_disk_full(err):
        return None
    package, sqlite = writer(err), any(SQLITE_FULL in str(e) for e in causes(err))
    where, other = "a file", "--data-dir / --storage / MLFLOW_TRACKING_URI"
    if package == TRACKING:
        where, other = (f"the MLflow tracking store {tracking_store()}", "MLFLOW_TRACKING_URI")
        if not sqlite:  # a file of the run (a plot, the model) in its artifact store
            where = f"the MLflow run's artifacts {last_artifacts()}"
    elif package == OPTUNA:
        where, other = "the Optuna storage", "--storage"
    elif (path := written_file(err)) is not None:
        where, other = path, "--data-dir"
    return (
        f"no space left on device writing {where}: free space there (or choose another {other}) and rerun the same "
        "command to continue"
    )


def artifact_failure(err: BaseException, artifact_uri: str) -> str:
    """Why an artifact of a run could not be logged, as a clause; on a full disk, also where to free space."""
    said = f"{type(err).__name__}: {err}"
    if not is_disk_full(err):
        return said
    folder = artifact_uri.removeprefix("file://")
    return f"{said}; free space in {folder} and rerun the same command to log the study's summary on a new run"
