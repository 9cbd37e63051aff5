"""The runs around the trials: the invocation's parent run, the tracking-store probe, and ending the runs that a
dead worker or an interrupted trial left RUNNING."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from unittest import mock
from urllib.parse import urlsplit, urlunsplit

import mlflow
import optuna
from mlflow.environment_variables import MLFLOW_EXPERIMENT_ID
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.file_utils import path_to_local_sqlite_uri
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.trial import FrozenTrial

from fashion_hpo.core.constants import INTERRUPTED, STUDY_TAG
from fashion_hpo.core.errors import UsageError, credentials_refused
from fashion_hpo.core.process import racing
from fashion_hpo.core.settings import RunSettings
from fashion_hpo.core.urls import redact_url
from fashion_hpo.storage.rdb import sqlite_file_lock
from fashion_hpo.tracking.callback import trial_run_id

# The documented marker of a model-training (not GenAI) experiment in MLflow 3's UI (ExperimentKindUtils.ts).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CUSTOM_MODEL_DEVELOPMENT = "custom_model_development"
# Where `mlflow ui` listens by default, and the query that opens its runs table in the Model training workflow
# (MLflow 3's UI otherwise opens an experiment on its GenAI overview, where no run is shown).
MLFLOW_UI_URL = "http://127.0.0.1:5000"
RUNS_VIEW = "#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def end_stale_runs(trial: FrozenTrial) -> None:
    """End the MLflow runs of a trial whose worker stopped sending heartbeats, and of that worker, as FAILED.

    The worker was killed or hung, so nothing else would ever end them; a tag says why."""
    client = MlflowClient()
    run_id = trial_run_id(trial)
    if run_id is None:
        return  # killed before its run was created
    worker_run_id = client.get_run(run_id).data.tags.get(MLFLOW_PARENT_RUN_ID)
    reason = f"trial {trial.number} stopped sending heartbeats (worker killed or hung); reclaimed and retried"
    fail_running(client, [client.get_run(i) for i in filter(None, (run_id, worker_run_id))], "reclaimed", reason)


def fail_running(client: MlflowClient, runs: list[mlflow.entities.Run], tag: str, reason: str) -> None:
    """End those of `runs` still RUNNING as FAILED, with tag `tag` saying why."""
    for run in runs:
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, tag, reason)
            client.set_terminated(run.info.run_id, status="FAILED")


def end_dead_worker_runs(parent_run_id: str, run_name: str, reason: str) -> None:
    """End the run named `run_name` under `parent_run_id` and its trial runs, where left RUNNING, as FAILED.

    For a worker process that died (killed between or during trials): nothing else would end its runs."""
    client = MlflowClient()
    experiment = [client.get_run(parent_run_id).info.experiment_id]
    worker_runs = client.search_runs(
        experiment, f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.run_name = '{run_name}'"
    )
    for worker in worker_runs:
        trials = client.search_runs(
            experiment, f"tags.mlflow.parentRunId = '{worker.info.run_id}' and attributes.status = 'RUNNING'"
        )
        fail_running(client, [*trials, worker], "worker_failed", reason)


# A reachable server answers at once; an unreachable one should fail in seconds, not after MLflow's
# default retries with backoff (minutes). Users' own settings of these variables win.
PROBE_HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}


def check_tracking_store() -> None:
    """Fail fast, before any trial, when the MLflow tracking store cannot be reached."""
    uri = mlflow.get_tracking_uri()
    added = {name: value for name, value in PROBE_HTTP_SETTINGS.items() if name not in os.environ}
    try:
        with mock.patch.dict(os.environ, added):
            probe_store(uri)
    except Exception as err:
        refused = credentials_refused(err, uri, "read its experiments")
        if refused is not None:
            raise refused from None  # a login problem, not a network one: no retry can fix it
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise UsageError(
            "MLFLOW_TRACKING_URI", f"cannot reach the tracking store {redact_url(uri)}: {reason}"
        ) from None


def probe_store(uri: str) -> None:
    """Ask the store for one experiment. Workers started together on a new SQLite store would race to create
    MLflow's tables (a half-migrated schema, `_alembic_tmp_*` clashes): one at a time creates them."""
    with sqlite_file_lock(uri):
        MlflowClient().search_experiments(max_results=1)


def choose_experiment(study_name: str) -> None:
    """Use an experiment named after the study, unless `mlflow run` or the user's env already chose one."""
    chosen = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
    if not any(os.environ.get(name) for name in chosen):
        experiment = mlflow.set_experiment(study_name)
        if MLFLOW_EXPERIMENT_ID.get() != experiment.experiment_id:
            # MLflow 3.17's set_experiment, when another process created the experiment between its lookup and its
            # create, returns it without making it active: the runs would go to the Default experiment.
            mlflow.set_experiment(experiment_id=experiment.experiment_id)


@contextmanager
def parent_run(settings: RunSettings, run_name: str | None = None) -> Iterator[str]:
    """The invocation's run (under `mlflow run`, the project's own run), ended with the right status.

    A worker started by `--workers` nests its run under the run of the command that started it."""
    try:
        choose_experiment(settings.study_name)
        run = mlflow.start_run(
            run_name=run_name or settings.run_name or settings.study_name,
            parent_run_id=settings.parent_run_id or None,
            tags={STUDY_TAG: settings.study_name},
        )
    except MlflowException as err:
        refused = credentials_refused(err, mlflow.get_tracking_uri(), "log runs to the study's experiment")
        if refused is None:
            raise
        raise refused from None
    try:
        experiment_id = run.info.experiment_id  # workers started together tag the new experiment at once
        racing(lambda: MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, CUSTOM_MODEL_DEVELOPMENT))
        # `mlflow run` already logged the entry point's parameters; MLflow forbids changing a param.
        logged = run.data.params
        mlflow.log_params({k: v for k, v in settings.loggable().items() if k not in logged})
        yield run.info.run_id
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")  # first, so that a second Ctrl-C cannot leave the run RUNNING
        MlflowClient().set_tag(run.info.run_id, INTERRUPTED, "true")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


@dataclass(frozen=True)
class UiHint:
    """How to see an experiment's runs: the `mlflow ui` command to start first (None for a tracking server),
    then the link that opens the runs table."""

    command: str | None
    link: str


def ui_hint(tracking_uri: str, experiment_id: str, default_uri: str) -> UiHint:
    """The link to `experiment_id`'s runs view on the tracking server, or on `mlflow ui` started with the store;
    `--backend-store-uri` only when the store is not `default_uri`, the one `mlflow ui` opens by itself."""
    view = RUNS_VIEW.format(experiment_id=experiment_id)
    parts = urlsplit(tracking_uri)
    if parts.scheme in ("http", "https"):
        # The browser asks for credentials itself; a link must not carry them.
        server = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query="", fragment=""))
        return UiHint(None, f"{server.rstrip('/')}/{view}")
    command = "mlflow ui"
    if tracking_uri != default_uri:
        command += f" --backend-store-uri {redact_url(tracking_uri)}"
    return UiHint(command, f"{MLFLOW_UI_URL}/{view}")


def local_default_uri() -> str:
    """The store `mlflow ui` opens when started here without options: ./mlflow.db (MLflow 3's default)."""
    return path_to_local_sqlite_uri(os.path.abspath("mlflow.db"))


# A study user attribute per run that an invocation had to leave RUNNING because the tracking server was gone
# (the run's id follows the prefix): the next invocation of the study ends it.
LEFT_RUNNING = "run_left_running:"
TRACKING_LOST = "tracking_lost"


def tracking_lost() -> UsageError:
    """The one line for a tracking server that stopped answering mid-study, through all of MLflow's retries."""
    return UsageError(
        "MLFLOW_TRACKING_URI",
        f"lost the tracking server {redact_url(mlflow.get_tracking_uri())}: no answer through MLflow's retries "
        "(MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR); the study keeps its finished "
        "trials: rerun the same command once the server answers to continue it (the runs left RUNNING are ended then)",
    )


def note_left_running(study: optuna.Study, run_id: str) -> None:
    """Note in the study (its storage still answers) a run that cannot be ended while the tracking server is down."""
    study.set_user_attr(f"{LEFT_RUNNING}{run_id}", "RUNNING")


def end_left_running(study: optuna.Study) -> list[str]:
    """End as FAILED, tagged tracking_lost, the runs that earlier invocations noted as left RUNNING when they lost
    the tracking server; returns their ids."""
    client = MlflowClient()
    ended: list[str] = []
    for key, value in study.user_attrs.items():
        if not key.startswith(LEFT_RUNNING) or value != "RUNNING":
            continue
        run_id = key.removeprefix(LEFT_RUNNING)
        reason = "the tracking server was lost while this run was RUNNING; ended by the next invocation of the study"
        try:
            fail_running(client, [client.get_run(run_id)], TRACKING_LOST, reason)
            ended.append(run_id)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":  # not in this tracking store: nothing to end
                raise
        study.set_user_attr(key, "ended")
    return ended
