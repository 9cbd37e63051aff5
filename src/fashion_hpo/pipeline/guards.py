"""How a command's runs end when the tracking server goes away, and the link to them that it prints last."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
import optuna

from fashion_hpo.core.process import connection_lost
from fashion_hpo.core.settings import RunSettings
from fashion_hpo.tracking.runs import (
    local_default_uri,
    note_left_running,
    tracking_lost,
    ui_hint,
)
from fashion_hpo.tracking.trials import give_up_on_tracking


@contextmanager
def stop_on_tracking_outage() -> Iterator[None]:
    """A tracking server lost through all of MLflow's retries ends the command with one line, no traceback."""
    try:
        yield
    except Exception as err:
        if not connection_lost(err):
            raise
        raise tracking_lost() from None


@contextmanager
def note_run_on_outage(study: optuna.Study, run_id: str) -> Iterator[None]:
    """When the block loses the tracking server: MLflow's later requests fail at once (the invocation's run cannot
    be ended now anyway), and the study notes the run for the next invocation to end."""
    try:
        yield
    except BaseException as err:
        if connection_lost(err):
            give_up_on_tracking()
            note_left_running(study, run_id)
        raise


@contextmanager
def closing_link(settings: RunSettings) -> Iterator[None]:
    """When the block ends, however it ends, print where to compare the trials in MLflow's UI (a worker of
    --workers leaves that to the command that started it)."""
    run = mlflow.active_run()
    experiment_id = run.info.experiment_id if run is not None else None
    try:
        yield
    finally:
        if experiment_id is not None and not settings.parent_run_id:
            hint = ui_hint(mlflow.get_tracking_uri(), experiment_id, local_default_uri())
            if hint.command is not None:
                print(f"Start MLflow's UI: {hint.command}")
            print(f"Compare the trials: {hint.link}")
