"""The MLflow Model Registry: log the final model, register it, point the `champion` alias at it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec
from torch import nn

import fashion_hpo
from fashion_hpo.constants import CHAMPION_ALIAS, CLASS_NAMES
from fashion_hpo.models import IMAGE_SHAPE, N_CLASSES

MODEL_ARTIFACT = "model"
SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *IMAGE_SHAPE))]),
    outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, N_CLASSES))]),
)
CONTRACT = (
    "Input: float32 array (N, 1, 28, 28) of pixel intensities in [0, 1], light garment on dark background "
    "as in FashionMNIST (normalization happens inside the model). Output: float32 array (N, 10) of class "
    "scores (logits; argmax is the predicted class, softmax gives probabilities), columns in class order: "
    + ", ".join(f"{i}={name}" for i, name in enumerate(CLASS_NAMES))
    + "."
)


@dataclass(frozen=True)
class ModelCard:
    """What the registered version records about where it came from."""

    study_name: str
    trial_number: int
    model_kind: str
    val_accuracy: float
    test_accuracy: float

    def tags(self) -> dict[str, str]:
        """Version tags, as strings."""
        return {
            "study_name": self.study_name,
            "best_trial_number": str(self.trial_number),
            "model_kind": self.model_kind,
            "val_accuracy": f"{self.val_accuracy:.4f}",
            "test_accuracy": f"{self.test_accuracy:.4f}",
        }


def pip_requirements() -> list[str]:
    """Explicit requirements: inferring them costs seconds per call. MLflow adds its own pin."""
    torch_version = torch.__version__.split("+")[0]
    return [f"torch=={torch_version}", f"numpy>={np.__version__.split('.')[0]}"]


def log_model(model: nn.Module, example: np.ndarray, card: ModelCard) -> mlflow.models.model.ModelInfo:
    """Log the model (on CPU) to the active run with signature, input example and the package's code."""
    return mlflow.pytorch.log_model(
        model.to("cpu").eval(),
        name=MODEL_ARTIFACT,
        signature=SIGNATURE,
        input_example=example.astype(np.float32),
        pip_requirements=pip_requirements(),
        # The pickled model refers to fashion_hpo.models; shipping the package makes it load anywhere.
        code_paths=[str(Path(fashion_hpo.__file__).parent)],
        metadata={"class_names": list(CLASS_NAMES), "contract": CONTRACT, **card.tags()},
    )


def register(model_uri: str, name: str, card: ModelCard, run_id: str) -> ModelVersion:
    """Register `model_uri` under `name`, tag and describe the version, and make it the champion."""
    version = mlflow.register_model(model_uri, name, tags=card.tags())
    client = MlflowClient()
    description = (
        f"Best trial {card.trial_number} of study {card.study_name!r} ({card.model_kind}); "
        f"validation accuracy {card.val_accuracy:.4f}, test accuracy {card.test_accuracy:.4f}; "
        f"parent run {run_id}. {CONTRACT}"
    )
    client.update_model_version(name, version.version, description=description)
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
    return client.get_model_version(name, version.version)
