"""A 3-trial study against a temporary MLflow store: one parent run, one nested child run per trial."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import optuna
import pytest
import sqlalchemy
import sqlalchemy.orm
from mlflow.entities import DatasetInput
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.dbmodels.models import SqlDataset, SqlExperiment, SqlExperimentTag
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from fashion_hpo.core.constants import INTERRUPTED, VAL_ACCURACY
from fashion_hpo.core.process import connection_lost
from fashion_hpo.core.settings import RunSettings
from fashion_hpo.data.splits import FashionData
from fashion_hpo.pipeline.guards import closing_link
from fashion_hpo.search.loop import run_search
from fashion_hpo.search.objective import make_objective
from fashion_hpo.search.study import open_study
from fashion_hpo.search.trials import best_trial, trial_counts
from fashion_hpo.tracking import metrics as tracking_metrics
from fashion_hpo.tracking.artifacts import log_inputs, log_plots, log_study_summary, search_inputs
from fashion_hpo.tracking.callback import callback_tags
from fashion_hpo.tracking.description import Registered, description
from fashion_hpo.tracking.metrics import log_epoch
from fashion_hpo.tracking.runs import CUSTOM_MODEL_DEVELOPMENT, EXPERIMENT_KIND_TAG, UiHint, parent_run, ui_hint
from fashion_hpo.tracking.trials import tracked_objective
from fashion_hpo.training.loop import EpochResult, Evaluation
from tests.conftest import MLP_PARAMS, free_port, temporary_tracking

EPOCHS = 2


class PruneTrialOne(optuna.pruners.BasePruner):
    """Prunes trial 1 at its last epoch, so that every trial still logs a full learning curve."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == 1 and trial.last_step == EPOCHS


def report_then_fail_trial_two(trial: optuna.Trial, result: EpochResult) -> None:
    """Log the epoch like the real study does; trial 2 then crashes after its last epoch."""
    log_epoch(trial, result)
    if trial.number == 2 and result.epoch == EPOCHS:
        raise RuntimeError("simulated crash in trial 2")


@pytest.fixture(scope="module")
def tracked_study(
    tiny_data: FashionData, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunSettings, str]]:
    """Runs the 3-trial study (complete, pruned, failed); yields its settings and parent run id."""
    tmp_path = tmp_path_factory.mktemp("tracked")
    with temporary_tracking(tmp_path):
        yield run_tracked_study(tiny_data, tmp_path)


def run_tracked_study(tiny_data: FashionData, tmp_path: Path) -> tuple[RunSettings, str]:
    """The study of this module, run through the same pieces as `fashion-hpo study`."""
    settings = RunSettings(
        n_trials=3, epochs=EPOCHS, study_name="tracked", storage=f"sqlite:///{tmp_path}/o.db", baseline_trial=False
    )
    study = open_study(settings)
    study.pruner = PruneTrialOne()
    for _ in range(3):
        study.enqueue_trial(MLP_PARAMS)
    objective = make_objective(tiny_data, RunSettings(epochs=EPOCHS, seed=0), report=report_then_fail_trial_two)
    with parent_run(settings) as run_id:
        inputs = search_inputs(tiny_data, settings)
        tracked, tracker = tracked_objective(objective, settings, functools.partial(log_inputs, inputs))
        run_search(study, tracked, settings, callbacks=[tracker])
        log_study_summary(study, trial_counts(study), best_trial(study))
    return settings, run_id


def children_of(parent_id: str) -> list[mlflow.entities.Run]:
    """The parent's nested runs, in trial order."""
    parent = MlflowClient().get_run(parent_id)
    runs = MlflowClient().search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    return sorted(runs, key=lambda run: run.info.run_name)


def test_one_parent_and_one_child_per_trial(tracked_study: tuple[RunSettings, str]) -> None:
    settings, parent_id = tracked_study
    parent = MlflowClient().get_run(parent_id)
    all_runs = MlflowClient().search_runs([parent.info.experiment_id])
    assert len(all_runs) == 4
    children = children_of(parent_id)
    assert [run.info.run_name for run in children] == ["trial-0000", "trial-0001", "trial-0002"]
    assert parent.info.run_name == settings.study_name
    assert parent.info.status == "FINISHED"
    assert MlflowClient().get_experiment(parent.info.experiment_id).name == settings.study_name


def test_status_tells_complete_pruned_and_failed_apart(tracked_study: tuple[RunSettings, str]) -> None:
    _, parent_id = tracked_study
    children = children_of(parent_id)
    assert [run.info.status for run in children] == ["FINISHED", "KILLED", "FAILED"]
    assert [run.data.tags["state"] for run in children] == ["COMPLETE", "PRUNED", "FAIL"]
    assert children[2].data.tags["exception_type"] == "RuntimeError"
    assert "simulated crash" in children[2].data.tags["exception_message"]
    killed = MlflowClient().search_runs([children[0].info.experiment_id], filter_string="attributes.status = 'KILLED'")
    assert [run.info.run_name for run in killed] == ["trial-0001"]


def test_children_hold_params_tags_and_per_epoch_curves(tracked_study: tuple[RunSettings, str]) -> None:
    settings, parent_id = tracked_study
    client = MlflowClient()
    for number, run in enumerate(children_of(parent_id)):
        assert run.data.params["lr"] == str(MLP_PARAMS["lr"])
        assert run.data.params["n_units_l0"] == "512"
        assert run.data.params["model"] == "mlp"
        assert run.data.tags["study_name"] == settings.study_name
        assert run.data.tags["number"] == str(number)
        assert "lr_distribution" in run.data.tags
        for metric in (VAL_ACCURACY, "val_loss", "train_loss", "epoch_seconds"):
            history = client.get_metric_history(run.info.run_id, metric)
            assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), metric


def test_trial_links_to_its_run(tracked_study: tuple[RunSettings, str]) -> None:
    settings, parent_id = tracked_study
    study = optuna.load_study(study_name=settings.study_name, storage=settings.storage)
    run_ids = [trial.system_attrs["mlflow_run_id"] for trial in study.trials]
    assert run_ids == [run.info.run_id for run in children_of(parent_id)]
    complete = MlflowClient().get_run(run_ids[0])
    assert complete.data.metrics[VAL_ACCURACY] == pytest.approx(study.trials[0].value)


def test_parent_holds_settings_summary_and_artifacts(tracked_study: tuple[RunSettings, str]) -> None:
    settings, parent_id = tracked_study
    parent = MlflowClient().get_run(parent_id)
    assert parent.data.params["n_trials"] == "3"
    assert parent.data.params["storage"] == settings.storage
    metrics = parent.data.metrics
    assert (metrics["trials_finished"], metrics["trials_complete"]) == (3, 1)
    assert (metrics["trials_pruned"], metrics["trials_failed"]) == (1, 1)
    assert metrics["best_trial_number"] == 0
    assert parent.data.params["best_lr"] == str(MLP_PARAMS["lr"])
    artifacts = {a.path for a in MlflowClient().list_artifacts(parent_id)}
    plots = {a.path for a in MlflowClient().list_artifacts(parent_id, "plots")}
    assert "trials.csv" in artifacts
    assert {"plots/optimization_history.png", "plots/intermediate_values.png"} <= plots


def test_what_tracking_relies_on_inside_mlflow_callback_still_holds(tracking_uri: str) -> None:
    """tracking.py's PRIVATE CONTRACT with optuna-integration: if this fails, the MLflowCallback changed inside."""
    from optuna_integration.mlflow import MLflowCallback
    from optuna_integration.mlflow.mlflow import RUN_ID_ATTRIBUTE_KEY

    run_kwargs: dict[str, object] = {"nested": False}  # not empty: the callback replaces an empty one with its own
    with pytest.warns(FutureWarning, match="MLflowCallback"):  # deprecated since 4.9.0, kept on purpose
        callback = MLflowCallback(
            metric_name=VAL_ACCURACY, create_experiment=False, tag_trial_user_attrs=True, mlflow_kwargs=run_kwargs
        )
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        objective = callback.track_in_mlflow()(a_trial_with_attributes)
    run_kwargs["run_name"] = "named-after-construction"
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=1, callbacks=[callback])
    assert created_as == ["named-after-construction"], "track_in_mlflow reads run_name from the dict it was given"
    run_id = study.trials[0].system_attrs[RUN_ID_ATTRIBUTE_KEY]
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [run.info.run_id for run in runs] == [run_id], "__call__ resumed the run that track_in_mlflow created"
    tags = {name: value for name, value in runs[0].data.tags.items() if not name.startswith("mlflow.")}
    assert tags == callback_tags(study, study.trials[0]), "TrialTracker writes the tags the callback writes"


created_as: list[str] = []  # the name of the run a_trial_with_attributes ran in


def a_trial_with_attributes(trial: optuna.Trial) -> float:
    """Two distributions and a user attribute long enough to be cut, for the callback to turn into tags."""
    created_as.append(mlflow.active_run().info.run_name)
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.suggest_categorical("optimizer", ["Adam", "SGD"])
    trial.set_user_attr("note", "x" * 9000)
    return 0.5


def five_quick_epochs(trial: optuna.Trial) -> float:
    """A trial of milliseconds that reports five epochs, as a short real trial does."""
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    for epoch in range(1, 6):
        log_epoch(trial, EpochResult(epoch, 0.5, Evaluation(loss=0.4, accuracy=0.8), 0.01))
    return 0.8


def metric_requests(monkeypatch: pytest.MonkeyPatch, settings: RunSettings) -> list[int]:
    """Run a 2-trial tracked study of `five_quick_epochs`; the number of metrics in each request that sent some."""
    sent: list[int] = []
    log_batch = MlflowClient.log_batch

    def counting(self: MlflowClient, run_id: str, metrics=(), *args, **kwargs):  # type: ignore[no-untyped-def]
        if metrics:
            sent.append(len(metrics))
        return log_batch(self, run_id, metrics, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", counting)
    with parent_run(settings):
        tracked, tracker = tracked_objective(five_quick_epochs, settings)
        optuna.create_study(direction="maximize").optimize(tracked, n_trials=2, callbacks=[tracker])
    return sent


def test_a_short_trials_epoch_metrics_reach_its_run_in_one_request(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        tracking_metrics, "FLUSH_SECONDS", float("inf")
    )  # however slowly this machine runs the five epochs
    assert metric_requests(monkeypatch, RunSettings(study_name="batched")) == [5 * 4, 5 * 4]


def test_epoch_metrics_are_sent_as_they_come_once_flush_seconds_pass(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracking_metrics, "FLUSH_SECONDS", 0.0)
    assert metric_requests(monkeypatch, RunSettings(study_name="live")) == [4] * 10


def test_the_experiment_is_marked_as_model_training(tracked_study: tuple[RunSettings, str]) -> None:
    parent = MlflowClient().get_run(tracked_study[1])
    tags = MlflowClient().get_experiment(parent.info.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_experiment_that_mlflow_run_chose_is_marked_too(tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = MlflowClient().create_experiment("chosen-by-mlflow-run")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", chosen)
    with parent_run(RunSettings(study_name="s")):
        pass
    assert MlflowClient().get_experiment(chosen).tags["mlflow.experimentKind"] == "custom_model_development"


RUNS_VIEW = "#/experiments/7/runs?workflowType=machine_learning"


def test_ui_hint_on_mlflows_default_store_is_plain_mlflow_ui() -> None:
    hint = ui_hint("sqlite:////work/mlflow.db", "7", default_uri="sqlite:////work/mlflow.db")
    assert hint == UiHint("mlflow ui", f"http://127.0.0.1:5000/{RUNS_VIEW}")


def test_ui_hint_names_any_other_store_with_its_password_hidden() -> None:
    sqlite = ui_hint("sqlite:////tmp/x/mlflow.db", "7", default_uri="sqlite:////work/mlflow.db")
    assert sqlite == UiHint(
        "mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db", f"http://127.0.0.1:5000/{RUNS_VIEW}"
    )
    postgres = ui_hint("postgresql://me:secret@db:5432/mlflow", "7", default_uri="sqlite:////work/mlflow.db")
    assert postgres.command == "mlflow ui --backend-store-uri postgresql://me:***@db:5432/mlflow"


def test_ui_hint_on_a_tracking_server_links_to_it_without_credentials() -> None:
    assert ui_hint("http://me:secret@mlflow.example:8080/", "7", "") == UiHint(
        None, f"http://mlflow.example:8080/{RUNS_VIEW}"
    )
    assert ui_hint("https://example.org/mlflow", "7", "").link == f"https://example.org/mlflow/{RUNS_VIEW}"


def test_the_run_ends_with_the_link_to_its_runs_view_even_when_interrupted(
    tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with mlflow.start_run() as run, pytest.raises(KeyboardInterrupt), closing_link(RunSettings(study_name="s")):
        raise KeyboardInterrupt
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "Start MLflow's UI: mlflow ui",  # the store is ./mlflow.db of the working folder: mlflow ui's own default
        f"Compare the trials: http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs"
        "?workflowType=machine_learning",
    ]


def test_a_worker_leaves_the_link_to_the_command_that_started_it(
    tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with mlflow.start_run(), closing_link(RunSettings(study_name="s", parent_run_id="0" * 32)):
        pass
    assert capsys.readouterr().out == ""


def test_trials_and_parent_carry_the_splits_as_dataset_inputs(tracked_study: tuple[RunSettings, str]) -> None:
    for run in children_of(tracked_study[1]):
        inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
        assert sorted(inputs) == ["fashion-mnist-train", "fashion-mnist-validation"]
        contexts = {name: [t.value for t in i.tags if t.key == "mlflow.data.context"] for name, i in inputs.items()}
        assert contexts == {"fashion-mnist-train": ["training"], "fashion-mnist-validation": ["validation"]}
        train = inputs["fashion-mnist-train"].dataset
        assert train.digest and train.source.endswith('train-images-idx3-ubyte"}')
        assert '"features_shape": [300, 1, 28, 28]' in train.profile


def test_a_trial_that_cannot_create_its_run_stops_the_study(
    tiny_data: FashionData, tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Optuna catches the objective's error; without a run, only the tracker can stop the next trial from starting."""
    port = free_port()  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # also restores what give_up_on_tracking sets
    mlflow.set_tracking_uri(f"http://127.0.0.1:{port}")
    # The timeout ends the test if the study went on: failing trials that are marked interrupted use no budget.
    settings = RunSettings(n_trials=3, epochs=1, timeout=60, storage=f"sqlite:///{tmp_path}/o.db", baseline_trial=False)
    study = open_study(settings)
    objective = make_objective(tiny_data, RunSettings(epochs=1, seed=0), report=log_epoch)
    tracked, tracker = tracked_objective(objective, settings)
    with pytest.raises(MlflowException) as lost:
        run_search(study, tracked, settings, callbacks=[tracker])
    assert connection_lost(lost.value)
    assert [(t.state, t.user_attrs.get(INTERRUPTED)) for t in study.trials] == [(TrialState.FAIL, True)]


@contextmanager
def another_worker_writes_first(pending: Callable[[object], bool], write: Callable[[], object]) -> Iterator[None]:
    """In the block, the first session about to insert a row that is `pending` lets `write` (another worker writing
    the same row) commit first: the real interleaving of a race that MLflow's look-up-then-insert loses."""
    raced: list[object] = []

    def write_first(session: sqlalchemy.orm.Session, *_: object) -> None:
        if not raced and any(pending(row) for row in session.new):
            raced.append(write)  # before the other worker's own flush comes here
            write()

    sqlalchemy.event.listen(sqlalchemy.orm.Session, "before_flush", write_first)
    try:
        yield
    finally:
        sqlalchemy.event.remove(sqlalchemy.orm.Session, "before_flush", write_first)
    assert raced, "the other worker's write came between this one's look-up and its insert"


def test_a_worker_that_loses_the_race_to_create_the_experiment_still_runs_in_it(tracking_uri: str) -> None:
    with (
        another_worker_writes_first(
            lambda row: isinstance(row, SqlExperiment) and row.name == "s",
            lambda: MlflowClient().create_experiment("s"),
        ),
        parent_run(RunSettings(study_name="s")) as run_id,
    ):
        pass
    experiment = MlflowClient().get_experiment(MlflowClient().get_run(run_id).info.experiment_id)
    assert experiment.name == "s", "not MLflow's Default experiment"


def test_a_worker_that_loses_the_race_to_tag_the_new_experiment_still_starts(tracking_uri: str) -> None:
    experiment_id = mlflow.create_experiment("s")
    tag = functools.partial(MlflowClient().set_experiment_tag, experiment_id, EXPERIMENT_KIND_TAG)
    with (
        another_worker_writes_first(lambda row: isinstance(row, SqlExperimentTag), lambda: tag("by the other")),
        parent_run(RunSettings(study_name="s")),
    ):
        pass
    assert MlflowClient().get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == CUSTOM_MODEL_DEVELOPMENT


def test_a_worker_that_loses_the_race_to_log_a_new_dataset_still_gets_it_as_input(
    tiny_data: FashionData, tracking_uri: str
) -> None:
    inputs = search_inputs(tiny_data, RunSettings())
    winner = MlflowClient().create_run(mlflow.set_experiment("race").experiment_id).info.run_id
    datasets = [DatasetInput(i.dataset._to_mlflow_entity()) for i in inputs]
    with (
        another_worker_writes_first(
            lambda row: isinstance(row, SqlDataset), lambda: MlflowClient().log_inputs(winner, datasets)
        ),
        mlflow.start_run() as run,
    ):
        log_inputs(inputs)
    for run_id in (winner, run.info.run_id):
        names = sorted(i.dataset.name for i in MlflowClient().get_run(run_id).inputs.dataset_inputs)
        assert names == ["fashion-mnist-train", "fashion-mnist-validation"]


def test_study_names_its_objective(tracked_study: tuple[RunSettings, str]) -> None:
    settings = tracked_study[0]
    assert optuna.load_study(study_name=settings.study_name, storage=settings.storage).metric_names == [VAL_ACCURACY]


def test_each_plot_has_an_interactive_html_twin(tracked_study: tuple[RunSettings, str]) -> None:
    plots = {a.path for a in MlflowClient().list_artifacts(tracked_study[1], "plots")}
    pngs = {path for path in plots if path.endswith(".png")}
    assert pngs and {path.replace(".png", ".html") for path in pngs} <= plots


@pytest.mark.slow  # ~10 s: 40 trials' importances and plots
def test_plots_of_many_trials_save_without_a_tight_layout_warning(tracking_uri: str) -> None:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))

    def objective(trial: optuna.Trial) -> float:
        value = trial.suggest_float("x", 0, 1)
        for step in (1, 2):
            trial.report(value * step, step)
        return value

    study.optimize(objective, n_trials=40)  # intermediate values: a legend of 40 trials, taller than the figure
    with mlflow.start_run(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log_plots(study, n_complete=40)
    assert not [w for w in caught if "Tight layout not applied" in str(w.message)]


def test_description_tells_a_reviewer_what_the_study_found() -> None:
    best = optuna.trial.create_trial(
        params={"lr": 0.000123456, "optimizer": "Adam"},
        distributions={
            "lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True),
            "optimizer": optuna.distributions.CategoricalDistribution(["Adam", "SGD"]),
        },
        value=0.9012,
    )
    counts = {"finished": 5, "complete": 3, "pruned": 1, "failed": 1}
    registered = Registered("models:/fashion-mnist-classifier/4", "champion", 0.8899)
    text = description("s", counts, best, registered, plots=True)
    assert "5 trials finished: 3 complete, 1 pruned (status KILLED), 1 failed" in text
    assert f"**Best trial #{best.number}**: val_accuracy 0.9012" in text
    assert "| lr | 0.0001235 |" in text and "| optimizer | Adam |" in text
    assert "**Test accuracy** of the refit best model: 0.8899" in text
    assert "`models:/fashion-mnist-classifier/4` (alias: champion)" in text
    assert "`plots/`" in text
    assert "plots/" not in description("s", counts, None, None, plots=False)
