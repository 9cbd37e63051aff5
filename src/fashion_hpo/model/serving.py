"""The registered model's pyfunc flavor: images in; class index, class name and probabilities out.

This folder (`fashion_hpo.model`) travels inside the logged model as its code (code_paths), so a service that loads
`models:/fashion-mnist-classifier@champion` needs mlflow and torch, not an installed fashion_hpo. It imports nothing
else of the package (an import-linter contract in pyproject.toml).

The model folder holds the network twice, each for its own user: mlflow.pytorch's torch.export program is what
`mlflow.pytorch.load_model` returns (MLflow's standard tooling); the weights as a state dict with the architecture as
JSON are what this pyfunc loads: it rebuilds the module with `torch.load(weights_only=True)`, which takes milliseconds
where loading the exported program takes seconds (benchmarks/champion_load.py), and unpickles nothing but tensors.

Inputs are checked here (`as_batch`), not by MLflow: a 4-D array and a table of 784 pixel columns cannot share one
MLflow input schema (a TensorSpec enforces its rank; a column schema rejects arrays of more than 2 dimensions), so
the pyfunc's signature declares the outputs only. The model config's `output` picks what `predict` returns: the
whole frame (default), or the class_index or class_name column alone, which is what mlflow.evaluate's classifier
evaluator needs (it takes the model's output as the predicted labels).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.models.model import MLMODEL_FILE_NAME, MODEL_CONFIG
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from fashion_hpo.model.architectures import CLASS_NAMES, IMAGE_SHAPE, CNNConfig, MLPConfig, ModelConfig, build_model

MAX_BATCH = 4096  # per request; bigger inputs are split by the caller
OUTPUT_COLUMNS = ("class_index", "class_name", "probabilities")
OUTPUTS = ("frame", "class_index", "class_name")  # model_config {"output": ...}: what predict returns
DEFAULT_CONFIG: dict[str, Any] = {"output": "frame"}
STATE_DICT_FILE, ARCHITECTURE_FILE = "state_dict.pt", "architecture.json"  # in the model's data folder
CONFIG_TYPES: dict[str, type[MLPConfig] | type[CNNConfig]] = {cls.__name__: cls for cls in (MLPConfig, CNNConfig)}


def bad_input(message: str) -> MlflowException:
    """An error that the scoring server answers with HTTP 400 and this message."""
    return MlflowException(f"Invalid input: {message}", error_code=INVALID_PARAMETER_VALUE)


def as_batch(images: Any) -> np.ndarray:
    """Images as float32 (N, 1, 28, 28); (N, 28, 28), (N, 784) and a table of 784 pixel columns (row-major) are
    reshaped. Rejects anything else."""
    if isinstance(images, pd.DataFrame):
        images = images.to_numpy()
    try:
        array = np.asarray(images, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise bad_input(f"pixels must be numbers ({err})") from None
    if (array.ndim == 2 and array.shape[1] == 28 * 28) or (array.ndim == 3 and array.shape[1:] == (28, 28)):
        array = array.reshape(-1, *IMAGE_SHAPE)
    if array.ndim != 4 or array.shape[1:] != IMAGE_SHAPE:
        raise bad_input(
            f"expected shape (N, 1, 28, 28), (N, 28, 28), (N, 784) or a table of 784 pixel columns, got {array.shape}"
        )
    check_batch(array)
    return array if array.flags.writeable else array.copy()  # a DataFrame's values may be read-only


def check_batch(array: np.ndarray) -> None:
    """Batch size within 1..MAX_BATCH, every pixel finite and in [0, 1]."""
    if not 1 <= len(array) <= MAX_BATCH:
        raise bad_input(f"batch size must be between 1 and {MAX_BATCH}, got {len(array)}")
    if not np.isfinite(array).all():
        raise bad_input("pixels must be finite (found NaN or infinity)")
    if array.min() < 0.0 or array.max() > 1.0:
        raise bad_input(
            f"pixel intensities must be in [0, 1], got [{array.min():.3g}, {array.max():.3g}] (divide 0-255 by 255)"
        )


def predictions_frame(probabilities: np.ndarray) -> pd.DataFrame:
    """One row per image: predicted class index, class name, and the 10 class probabilities."""
    index = probabilities.argmax(axis=1)
    return pd.DataFrame(
        {
            "class_index": index.astype(np.int64),
            "class_name": [CLASS_NAMES[i] for i in index],
            "probabilities": [row.tolist() for row in probabilities],
        },
        columns=list(OUTPUT_COLUMNS),
    )


class FashionClassifier:
    """What `mlflow.pyfunc.load_model` returns for the registered model."""

    def __init__(self, module: torch.nn.Module, output: str = "frame") -> None:
        if output not in OUTPUTS:
            raise bad_input(f"model_config output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        self.module = module  # saved in eval mode; an exported program cannot switch modes
        self.output = output

    @torch.inference_mode()
    def probabilities(self, images: Any) -> np.ndarray:
        """Class probabilities (N, 10) for a batch in any accepted shape."""
        batch = torch.from_numpy(as_batch(images))
        return torch.softmax(self.module(batch), dim=1).numpy()

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame | pd.Series:
        """The pyfunc contract: a DataFrame with class_index, class_name and probabilities per image (or the one
        column the model config's `output` names)."""
        frame = predictions_frame(self.probabilities(model_input))
        return frame if self.output == "frame" else frame[self.output]


def architecture_json(config: ModelConfig) -> str:
    """The architecture as JSON: the config's type name and its fields."""
    return json.dumps({"type": type(config).__name__, "fields": asdict(config)}, indent=2)


def architecture_from_json(text: str) -> ModelConfig:
    """The config `architecture_json` wrote (JSON lists back to tuples)."""
    document = json.loads(text)
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in document["fields"].items()}
    return CONFIG_TYPES[document["type"]](**fields)


def rebuild_module(folder: Path) -> torch.nn.Module:
    """The classifier rebuilt from the architecture and state dict saved in `folder`, in eval mode."""
    module = build_model(architecture_from_json((folder / ARCHITECTURE_FILE).read_text()))
    module.load_state_dict(torch.load(folder / STATE_DICT_FILE, map_location="cpu", weights_only=True))
    return module.eval()


def load_module(data_path: str) -> torch.nn.Module:
    """The saved classifier on the CPU, rebuilt from its architecture and weights."""
    return rebuild_module(Path(data_path))


def save_model(
    path: str, mlflow_model: Model, pytorch_model: torch.nn.Module, architecture: ModelConfig, **kwargs: Any
) -> None:
    """Flavor hook for `Model.log`: save as mlflow.pytorch does (its torch.export traces the signature's input
    tensor), add the state dict and architecture, then serve through this module's pyfunc, which checks its inputs
    itself: the signature keeps the outputs only, and the model config its default `output`."""
    import mlflow.pytorch

    mlflow.pytorch.save_model(pytorch_model, path, mlflow_model=mlflow_model, **kwargs)
    pyfunc = mlflow_model.flavors["python_function"]
    data = Path(path) / pyfunc["data"]
    torch.save(pytorch_model.state_dict(), data / STATE_DICT_FILE)
    (data / ARCHITECTURE_FILE).write_text(architecture_json(architecture))
    pyfunc["loader_module"], pyfunc[MODEL_CONFIG] = __name__, dict(DEFAULT_CONFIG)
    outputs = mlflow_model.signature.outputs if mlflow_model.signature is not None else None
    mlflow_model.signature = ModelSignature(outputs=outputs) if outputs is not None else None
    mlflow_model.save(os.path.join(path, MLMODEL_FILE_NAME))


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> FashionClassifier:
    """MLflow's loader-module hook for the python_function flavor; `model_config` may set `output`."""
    output = (model_config or DEFAULT_CONFIG).get("output", "frame")
    return FashionClassifier(load_module(data_path), str(output))
