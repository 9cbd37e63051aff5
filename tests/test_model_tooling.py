"""The registered model with MLflow's standard tooling: a table of pixels, every array layout, and mlflow.evaluate.

On a tiny untrained model saved exactly as it is logged (tests/test_model_use.py checks the same on the real
champion).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from tests.test_registry import save_tiny

PIXELS = [f"pixel{i}" for i in range(784)]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny CNN saved to a folder exactly as it is logged."""
    return save_tiny(tmp_path_factory.mktemp("tooling") / "model")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """30 random float32 images (N, 1, 28, 28) in [0, 1]."""
    return np.random.default_rng(5).random((30, 1, 28, 28), dtype=np.float32)


def pixel_table(images: np.ndarray) -> pd.DataFrame:
    """One row per image, one float64 column per pixel in row-major order, as a CSV of pixels reads."""
    return pd.DataFrame(images.reshape(len(images), -1).astype(np.float64), columns=PIXELS)


def test_the_logged_signature_leaves_inputs_to_the_model_and_declares_the_outputs(saved_model: str) -> None:
    model = Model.load(saved_model)
    assert model.signature is not None and model.signature.inputs is None
    assert model.signature.outputs is not None
    assert model.signature.outputs.input_names() == ["class_index", "class_name", "probabilities"]
    assert model.flavors["python_function"]["config"] == {"output": "frame"}


def test_every_input_form_gives_the_predictions_of_the_4d_array(saved_model: str, images: np.ndarray) -> None:
    model = mlflow.pyfunc.load_model(saved_model)
    expected = model.predict(images)
    flat = images.reshape(len(images), -1)
    forms = {
        "(N, 28, 28)": images[:, 0],
        "(N, 784)": flat,
        "float64 (N, 1, 28, 28)": images.astype(np.float64),
        "pixel table": pixel_table(images),
        "unnamed table": pd.DataFrame(flat),
    }
    for name, data in forms.items():
        frame = model.predict(data)
        assert list(frame.columns) == ["class_index", "class_name", "probabilities"], name
        assert frame["class_index"].tolist() == expected["class_index"].tolist(), name
        np.testing.assert_allclose(np.stack(frame["probabilities"]), np.stack(expected["probabilities"]), atol=1e-6)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pixel_table(np.full((2, 1, 28, 28), 255.0)), r"\[0, 1\]"),
        (pixel_table(np.zeros((2, 1, 28, 28))).assign(label=[1, 2]), "784 pixel columns"),
        (pd.DataFrame([["white"] * 784]), "must be numbers"),
        (pixel_table(np.full((1, 1, 28, 28), np.nan)), "finite"),
        (pixel_table(np.zeros((4097, 1, 28, 28), dtype=np.float32)), "batch size"),
    ],
    ids=["0-255", "label-column", "strings", "nan", "oversized"],
)
def test_a_bad_pixel_table_is_rejected_with_the_arrays_messages(
    saved_model: str, table: pd.DataFrame, message: str
) -> None:
    with pytest.raises(MlflowException, match=message):
        mlflow.pyfunc.load_model(saved_model).predict(table)


def test_model_config_output_returns_one_column(saved_model: str, images: np.ndarray) -> None:
    frame = mlflow.pyfunc.load_model(saved_model).predict(images)
    for column in ("class_index", "class_name"):
        alone = mlflow.pyfunc.load_model(saved_model, model_config={"output": column}).predict(pixel_table(images))
        assert isinstance(alone, pd.Series) and alone.tolist() == frame[column].tolist()
    with pytest.raises(MlflowException, match="output must be one of frame, class_index, class_name"):
        mlflow.pyfunc.load_model(saved_model, model_config={"output": "logits"})


def labels_with_known_accuracy(saved_model: str, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Labels that agree with the model's predictions on the first two thirds of the images only."""
    predicted = mlflow.pyfunc.load_model(saved_model).predict(images)["class_index"].to_numpy()
    labels = predicted.copy()
    cut = 2 * len(labels) // 3
    labels[cut:] = (labels[cut:] + 1) % 10
    return labels, cut / len(labels)


@pytest.mark.parametrize("evaluate", [mlflow.models.evaluate, mlflow.evaluate], ids=["models.evaluate", "evaluate"])
def test_mlflow_evaluate_as_a_classifier_on_a_pixel_table(
    saved_model: str, images: np.ndarray, tracking_uri: str, evaluate: object
) -> None:
    labels, accuracy = labels_with_known_accuracy(saved_model, images)
    data = pixel_table(images).assign(label=labels)
    assert callable(evaluate)
    with mlflow.start_run():
        result = evaluate(
            saved_model, data, targets="label", model_type="classifier", model_config={"output": "class_index"}
        )
    assert result.metrics["example_count"] == len(images)
    assert result.metrics["accuracy_score"] == pytest.approx(accuracy)


def test_evaluate_without_the_model_config_fails_on_the_frame(
    saved_model: str, images: np.ndarray, tracking_uri: str
) -> None:
    """The classifier evaluator takes the whole output as the predicted labels: the frame needs the config."""
    data = pixel_table(images).assign(label=np.arange(len(images)) % 10)
    with mlflow.start_run(), pytest.raises(ValueError, match="same number of dimensions"):
        mlflow.models.evaluate(saved_model, data, targets="label", model_type="classifier")


def test_a_csv_of_pixels_scores_through_mlflow_models_predict(
    saved_model: str, images: np.ndarray, tmp_path: Path
) -> None:
    """Batch scoring as `mlflow models predict -t csv` does it: the CSV read into a DataFrame, then pyfunc."""
    from mlflow.pyfunc.scoring_server import parse_csv_input

    csv = tmp_path / "pixels.csv"
    pixel_table(images).to_csv(csv, index=False)
    with open(csv) as file:
        table = parse_csv_input(file, schema=Model.load(saved_model).get_input_schema())
    frame = mlflow.pyfunc.load_model(saved_model).predict(table)
    expected = mlflow.pyfunc.load_model(saved_model).predict(images)
    assert frame["class_index"].tolist() == expected["class_index"].tolist()


def test_the_inference_config_environment_variable_picks_the_output(
    saved_model: str, images: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_PYFUNC_INFERENCE_CONFIG", '{"output": "class_index"}')
    alone = mlflow.pyfunc.load_model(saved_model).predict(images)
    monkeypatch.delenv("MLFLOW_PYFUNC_INFERENCE_CONFIG")
    assert alone.tolist() == mlflow.pyfunc.load_model(saved_model).predict(images)["class_index"].tolist()


def test_the_scoring_server_takes_arrays_and_tables_and_refuses_bad_pixels(
    saved_model: str, images: np.ndarray
) -> None:
    """What `mlflow models serve` does with a request body, in-process."""
    import json

    from mlflow.pyfunc.scoring_server import invocations

    model = mlflow.pyfunc.load_model(saved_model)
    expected = model.predict(images)["class_index"].tolist()
    bodies = {
        "inputs": {"inputs": images.tolist()},
        "flat inputs": {"inputs": images.reshape(len(images), -1).tolist()},
        "dataframe_split": {"dataframe_split": pixel_table(images).to_dict(orient="split")},
    }
    for name, body in bodies.items():
        answer = invocations(json.dumps(body), "application/json", model, model.metadata.get_input_schema())
        assert answer.status == 200, (name, answer.response)
        assert [p["class_index"] for p in json.loads(answer.response)["predictions"]] == expected, name
    table = pixel_table(images * 255).to_dict(orient="split")
    with pytest.raises(MlflowException, match=r"\[0, 1\]") as raised:
        invocations(json.dumps({"dataframe_split": table}), "application/json", model, None)
    assert raised.value.get_http_status_code() == 400
