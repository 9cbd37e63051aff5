"""The registered model's contract, and champion / challenger promotion, on a tiny untrained model."""

from __future__ import annotations

import importlib.metadata
import math
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from fashion_hpo.core.settings import RunSettings
from fashion_hpo.data.splits import FashionData
from fashion_hpo.model import serving
from fashion_hpo.model.architectures import CLASS_NAMES, CNNConfig, MLPConfig, ModelConfig, build_model
from fashion_hpo.registry.predict import requirement_mismatches
from fashion_hpo.registry.significance import PairedComparison
from fashion_hpo.registry.versions import (
    ModelCard,
    find_version,
    flavor_kwargs,
    log_model,
    promote,
    register,
    shipped_code,
)
from fashion_hpo.tracking.artifacts import log_test_results, refit_inputs
from fashion_hpo.training.loop import Evaluation

NAME = "fashion-mnist-classifier"


def register_tiny(
    test_accuracy: float,
    trial_number: int = 0,
    policy: str = "if-better",
    paired: PairedComparison | None = None,
) -> tuple[str, str, str]:
    """Log and register a small model with the given test accuracy (and `paired` outcome against the champion);
    returns (version, alias, reason)."""
    card = ModelCard("s", trial_number, "mlp", 0.5, test_accuracy, {"lr": 0.001})
    torch.manual_seed(trial_number)
    architecture = MLPConfig(hidden_units=(8,), dropouts=(0.0,))
    with mlflow.start_run() as run:
        info = log_model(build_model(architecture), architecture, np.random.rand(2, 1, 28, 28).astype(np.float32), card)
        version = register(info.model_uri, NAME, card, run.info.run_id)
        compare = (lambda champion: paired) if paired is not None else None
        alias, reason = promote(version, test_accuracy, policy, compare=compare)
    return str(version.version), alias, reason


def champion() -> str:
    return str(MlflowClient().get_model_version_by_alias(NAME, "champion").version)


def test_only_a_better_model_takes_the_champion_alias(tracking_uri: str) -> None:
    assert register_tiny(0.85, 0)[:2] == ("1", "champion")
    worse = register_tiny(0.84, 1)
    assert worse[:2] == ("2", "challenger") and "does not beat champion version 1" in worse[2]
    assert register_tiny(0.85, 2)[:2] == ("3", "challenger"), "a tie keeps the incumbent"
    assert champion() == "1"
    assert register_tiny(0.86, 3)[:2] == ("4", "champion")
    assert register_tiny(0.10, 4, policy="always")[:2] == ("5", "champion")
    assert champion() == "5"
    assert str(MlflowClient().get_model_version_by_alias(NAME, "challenger").version) == "3"


def test_a_win_within_noise_takes_the_alias_only_under_if_better(tracking_uri: str) -> None:
    register_tiny(0.9300, 0)
    noise = PairedComparison(n=10_000, new_only=52, champion_only=50)  # a 0.0002 "win"
    version, alias, reason = register_tiny(0.9302, 1, "if-significant", noise)
    assert alias == "challenger" and "is not significantly better than champion version 1" in reason
    assert "McNemar p = 0.92" in reason
    tags = MlflowClient().get_model_version(NAME, version).tags
    assert tags["mcnemar_p_value"] == "0.9212" and tags["test_accuracy_delta"] == "+0.0002"
    assert tags["test_accuracy_delta_ci95"].startswith("[-0.00") and champion() == "1"
    assert register_tiny(0.9302, 2, "if-better", noise)[1] == "champion", "if-better moves it, and says the p"
    progress = PairedComparison(n=10_000, new_only=140, champion_only=60)
    version, alias, reason = register_tiny(0.9382, 3, "if-significant", progress)
    assert alias == "champion" and "is significantly better" in reason and champion() == version


def test_version_records_its_lineage_and_is_found_again(tracking_uri: str) -> None:
    register_tiny(0.8, trial_number=7)
    version = MlflowClient().get_model_version(NAME, "1")
    assert version.tags["study_name"] == "s" and version.tags["best_trial_number"] == "7"
    assert version.tags["test_accuracy"] == "0.8000" and version.tags["model_kind"] == "mlp"
    assert version.tags["parent_run_id"] == version.run_id
    assert '"lr": 0.001' in version.description and "class_name" in version.description
    card = ModelCard("s", 7, "mlp", 0.5, math.nan)
    assert str(find_version(NAME, card).version) == "1"
    assert find_version(NAME, ModelCard("s", 8, "mlp", 0.5, math.nan)) is None


def test_the_logged_model_carries_its_test_metrics_measured_on_the_test_set(
    tracking_uri: str, tiny_data: FashionData
) -> None:
    training, test = refit_inputs(tiny_data, RunSettings(study_name="s"))
    architecture = MLPConfig(hidden_units=(8,), dropouts=(0.0,))
    confusion = torch.eye(10, dtype=torch.long) * 10
    example = np.random.rand(2, 1, 28, 28).astype(np.float32)
    with mlflow.start_run():
        info = log_model(build_model(architecture), architecture, example, ModelCard("s", 0, "mlp", 0.5, 0.75))
        log_test_results(Evaluation(loss=0.7, accuracy=0.75), confusion, info.model_id, test.dataset)
    metrics = {m.key: m for m in MlflowClient().get_logged_model(info.model_id).metrics}
    assert (metrics["test_accuracy"].value, metrics["test_loss"].value) == (0.75, 0.7)
    assert metrics["test_accuracy"].dataset_name == "fashion-mnist-test"
    assert metrics["test_accuracy"].dataset_digest == test.dataset.digest
    assert (test.context, training.context, training.dataset.name) == ("test", "training", "fashion-mnist-train-full")
    assert test.dataset.source.to_json().endswith('t10k-images-idx3-ubyte"}')


TINY_CNN = CNNConfig(channels=(4, 8), kernel_size=3, batch_norm=True, dropout=0.1, dense_units=16)


def save_tiny(path: Path, architecture: ModelConfig = TINY_CNN) -> str:
    """A tiny model with random weights saved to `path` exactly as it is logged (no tracking store needed)."""
    torch.manual_seed(0)
    model = build_model(architecture)
    for module in model.modules():  # batch norm statistics that differ from the defaults, so they must be loaded
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    example = np.random.rand(2, 1, 28, 28).astype(np.float32)
    code = path.parent / f"{path.name}-code"
    code.mkdir()
    serving.save_model(str(path), Model(), **flavor_kwargs(model, architecture, example, shipped_code(code)))
    return str(path)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny CNN saved to a folder exactly as it is logged."""
    return save_tiny(tmp_path_factory.mktemp("saved") / "model")


@pytest.mark.parametrize("architecture", [TINY_CNN, MLPConfig(hidden_units=(8, 6), dropouts=(0.0, 0.2))])
def test_architecture_round_trips_through_json(architecture: ModelConfig) -> None:
    assert serving.architecture_from_json(serving.architecture_json(architecture)) == architecture


def test_pyfunc_rebuilds_the_module_from_weights_that_match_the_exported_program(saved_model: str) -> None:
    images = torch.rand(5, 1, 28, 28)
    rebuilt = serving.load_module(str(Path(saved_model) / "data"))
    assert not rebuilt.training and not isinstance(rebuilt, torch.fx.GraphModule)
    exported = mlflow.pytorch.load_model(saved_model)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(images), exported(images))


def test_pyfunc_returns_index_name_and_probabilities(saved_model: str) -> None:
    model = mlflow.pyfunc.load_model(saved_model)
    frame = model.predict(np.random.rand(3, 1, 28, 28).astype(np.float32))
    assert list(frame.columns) == ["class_index", "class_name", "probabilities"]
    for row in frame.itertuples():
        assert row.class_name == CLASS_NAMES[row.class_index]
        assert len(row.probabilities) == 10 and sum(row.probabilities) == pytest.approx(1.0, abs=1e-5)
        assert max(row.probabilities) == row.probabilities[row.class_index]
    module = mlflow.pytorch.load_model(saved_model)
    assert isinstance(module, torch.nn.Module)
    assert module(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.full((2, 1, 28, 28), np.nan, dtype=np.float32), "finite"),
        (np.full((2, 1, 28, 28), np.inf, dtype=np.float32), "finite"),
        (np.full((2, 1, 28, 28), 255.0, dtype=np.float32), "[0, 1]"),
        (np.full((2, 1, 28, 28), -0.5, dtype=np.float32), "[0, 1]"),
        (np.zeros((0, 1, 28, 28), dtype=np.float32), "batch size"),
        (np.zeros((2, 1, 14, 14), dtype=np.float32), "shape"),
    ],
)
def test_pyfunc_rejects_bad_batches_with_a_clear_message(saved_model: str, images: np.ndarray, message: str) -> None:
    model = mlflow.pyfunc.load_model(saved_model)
    with pytest.raises(MlflowException, match="(?i)" + message.replace("[", r"\[").replace("]", r"\]")):
        model.predict(images)


def test_other_image_layouts_are_reshaped_by_the_serving_module() -> None:
    from fashion_hpo.model.serving import as_batch

    flat, square = np.random.rand(4, 784), np.random.rand(4, 28, 28)
    assert as_batch(flat).shape == as_batch(square).shape == (4, 1, 28, 28)
    with pytest.raises(MlflowException, match="must be numbers"):
        as_batch([["a"] * 784])


def test_predict_checks_the_models_requirements_package_by_package(saved_model: str, tmp_path: Path) -> None:
    assert requirement_mismatches(Path(saved_model)) == [], "saved here: this environment meets them"
    (tmp_path / "requirements.txt").write_text(
        "# pinned when logged\n-r extra.txt\ntorch==0.0.1\nno-such-package-xyz>=1\nother==1; python_version < '3'\n"
        + (Path(saved_model) / "requirements.txt").read_text()
    )
    (tmp_path / "MLmodel").write_text(
        (Path(saved_model) / "MLmodel").read_text().replace("python_version: 3.", "python_version: 2.")
    )
    assert requirement_mismatches(tmp_path) == [
        f"torch==0.0.1 (installed: {importlib.metadata.version('torch')})",
        "no-such-package-xyz>=1 (installed: none)",
        f"Python 2.{'.'.join(map(str, sys.version_info[1:3]))} (running: {'.'.join(map(str, sys.version_info[:3]))})",
    ]
    (tmp_path / "requirements.txt").unlink()
    assert [m.split()[0] for m in requirement_mismatches(tmp_path)] == ["Python"], "no requirements: nothing to compare"


def test_a_new_study_is_compared_with_the_champion_on_the_same_test_images(
    tiny_cli: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("first", "second"):
        args = ["study", "--study-name", name, "--n-trials", "1", "--epochs", "1", "--promote", "if-significant"]
        assert tiny_cli(args) == 0
    tags = MlflowClient().get_model_version(NAME, "2").tags
    assert {"mcnemar_p_value", "test_accuracy_delta", "test_accuracy_delta_ci95"} <= tags.keys()
    registered = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Registered:")]
    assert "McNemar p =" not in registered[0] and "McNemar p =" in registered[1]
