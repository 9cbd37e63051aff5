"""The real thing: `mlflow run . --env-manager local` on the real FashionMNIST with a tiny budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import N_TRIALS, temporary_tracking

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EPOCHS = 1


@pytest.fixture(scope="module")
def client(project_run: tuple[Path, subprocess.CompletedProcess[str]]) -> MlflowClient:
    work, _ = project_run
    with temporary_tracking(work):
        yield MlflowClient()


def test_project_run_is_the_parent_of_one_child_per_trial(client: MlflowClient) -> None:
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(parents) == 1 and len(children) == N_TRIALS
    parent = parents[0]
    assert parent.data.tags.get("mlflow.project.entryPoint") == "main", "the parent is the project's own run"
    assert parent.info.status == "FINISHED"
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parent.info.run_id}
    assert sorted(run.info.run_name for run in children) == [f"trial-{n:04d}" for n in range(N_TRIALS)]
    for run in children:
        assert run.info.status in {"FINISHED", "KILLED", "FAILED"}
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(1, EPOCHS + 1))
        assert "lr" in run.data.params and "optimizer" in run.data.params
    baseline = [run.info.run_name for run in children if run.data.tags.get("baseline") == "True"]
    assert baseline == ["trial-0000"], "a new study starts with the search space's baseline configuration"
    metrics = parent.data.metrics
    assert metrics["trials_finished"] == N_TRIALS
    assert parent.data.tags["refit_epochs"] == str(2 * EPOCHS), "the refit trains twice the trial's epochs"
    assert 0.5 < metrics["test_accuracy"] <= 1.0
    assert "test_class_accuracy/Ankle boot" in metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"confusion_matrix.png", "trials.csv", "plots"} <= artifacts


def test_best_model_is_registered_as_champion_with_its_lineage(client: MlflowClient) -> None:
    version = client.get_model_version_by_alias("fashion-mnist-classifier", "champion")
    parent = client.get_run(version.run_id)
    assert parent.data.tags.get("mlflow.project.entryPoint") == "main", "logged from the study's parent run"
    assert version.tags["best_trial_number"] == str(int(parent.data.metrics["best_trial_number"]))
    assert float(version.tags["test_accuracy"]) == pytest.approx(parent.data.metrics["test_accuracy"], abs=1e-4)
    assert version.tags["study_name"] == "fashion-mnist-mlp"
    assert "(N, 1, 28, 28)" in version.description and "Ankle boot" in version.description


def test_champion_loads_in_a_fresh_process_and_classifies_test_images(
    project_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    work, _ = project_run
    script = f"""
import json, mlflow, numpy as np
from torchvision.datasets import FashionMNIST
test = FashionMNIST({str(work / "data")!r}, train=False)
images = (test.data[:2000].numpy().astype(np.float32) / 255.0)[:, None]
model = mlflow.pyfunc.load_model("models:/fashion-mnist-classifier@champion")
frame = model.predict(images)
accuracy = float((frame["class_index"].to_numpy() == test.targets[:2000].numpy()).mean())
print(json.dumps({{"rows": len(frame), "accuracy": accuracy}}))
"""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    result = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["rows"] == 2000
    assert report["accuracy"] > 0.6, "well above chance (0.1)"


def test_console_ends_with_the_summary_and_the_model_uri(
    project_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    _, result = project_run
    assert f"Number of finished trials: {N_TRIALS}" in result.stdout
    assert "Test accuracy of the refit best model" in result.stdout
    assert "models:/fashion-mnist-classifier@champion" in result.stdout
    assert "mlflow ui" in result.stdout


def test_the_project_run_shows_every_epoch_and_keeps_the_refit_curve(
    project_run: tuple[Path, subprocess.CompletedProcess[str]], client: MlflowClient
) -> None:
    _, result = project_run
    lines = result.stdout.splitlines()  # a pipe, not a terminal: one plain line per epoch
    assert sum(line.startswith("trial ") and f"· epoch {EPOCHS}/{EPOCHS} ·" in line for line in lines) == N_TRIALS
    assert any(line.startswith("Refit trial #") and "on 60,000 images for 2 epochs" in line for line in lines)
    assert [line.split(" · ")[1] for line in lines if line.startswith("refit · ")] == ["epoch 1/2", "epoch 2/2"]
    assert f"Search ended: the study has its --n-trials {N_TRIALS} trials." in lines
    parent = client.search_runs([client.get_experiment_by_name("e2e").experiment_id], "tags.refit_epochs = '2'")[0]
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "refit_train_loss")] == [1, 2]
