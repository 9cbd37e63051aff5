"""The MLflow Model Registry: log the final model, register it, point the `champion` alias at it."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, DataType, Schema, TensorSpec
from mlflow.types.schema import Array
from torch import nn

import fashion_hpo
from fashion_hpo.core.constants import CHALLENGER_ALIAS, CHAMPION_ALIAS, LATENCY_MS, N_PARAMS
from fashion_hpo.core.limits import NO_LIMITS, CostLimits
from fashion_hpo.model import serving
from fashion_hpo.model.architectures import CLASS_NAMES, IMAGE_SHAPE, N_CLASSES, ModelConfig
from fashion_hpo.registry.integrity import logged_digests
from fashion_hpo.registry.significance import PairedComparison

MODEL_ARTIFACT = "model"
# The input tensor is what mlflow.pytorch's torch.export traces; the pyfunc's logged signature keeps the outputs only
# (serving.save_model), since it accepts a pixel table as well as arrays and checks its inputs itself.
SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *IMAGE_SHAPE))]),
    outputs=Schema(
        [
            ColSpec(DataType.long, "class_index"),
            ColSpec(DataType.string, "class_name"),
            ColSpec(Array(DataType.double), "probabilities"),
        ]
    ),
)
CONTRACT = (
    "Input: pixel intensities in [0, 1], light garment on dark background as in FashionMNIST, as an array "
    "(N, 1, 28, 28), (N, 28, 28) or (N, 784), or a table of 784 pixel columns in row-major order; normalization "
    "happens inside the model. Output (mlflow.pyfunc): one row per image with "
    f"class_index, class_name and probabilities (the {N_CLASSES} class probabilities in class order: "
    + ", ".join(f"{i}={name}" for i, name in enumerate(CLASS_NAMES))
    + '); model_config {"output": "class_index"} returns the class index alone, as mlflow.evaluate with '
    'model_type="classifier" needs. mlflow.pytorch.load_model returns the torch module, whose output is the '
    "(N, 10) logits of a float32 (N, 1, 28, 28) tensor."
)


@dataclass(frozen=True)
class ModelCard:
    """What the registered version records about where it came from."""

    study_name: str
    trial_number: int
    model_kind: str
    val_accuracy: float
    test_accuracy: float
    params: dict[str, object] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)  # the trial's n_params, flops, latency_ms
    constraints: str = "none"  # the limits it was chosen under (CostLimits.describe)

    def tags(self) -> dict[str, str]:
        """Version tags, as strings."""
        return {
            "study_name": self.study_name,
            "best_trial_number": str(self.trial_number),
            "model_kind": self.model_kind,
            "val_accuracy": f"{self.val_accuracy:.4f}",
            "test_accuracy": f"{self.test_accuracy:.4f}",
            **{name: format_cost(name, value) for name, value in self.costs.items()},
            "constraints": self.constraints,
            "params": json.dumps(self.params, sort_keys=True),  # what --warm-start-from a version starts from
        }


def format_cost(name: str, value: float) -> str:
    """A cost as a tag: counts as integers, milliseconds to 4 decimals."""
    return f"{value:.4f}" if name == LATENCY_MS else str(int(value))


def version_costs(version: ModelVersion) -> dict[str, float]:
    """The constrained costs a registered version records (none for a version another tool registered)."""
    return {name: float(version.tags[name]) for name in (N_PARAMS, LATENCY_MS) if name in version.tags}


def pip_requirements() -> list[str]:
    """Explicit requirements: inferring them costs seconds per call. MLflow adds its own pin."""
    torch_version = torch.__version__.split("+")[0]
    return [f"torch=={torch_version}", f"numpy>={np.__version__.split('.')[0]}"]


def flavor_kwargs(model: nn.Module, architecture: ModelConfig, example: np.ndarray, code: Path) -> dict[str, Any]:
    """How the model is saved: the torch module on CPU and its architecture, signature, input example, requirements,
    and the code it loads with (`code`, see `shipped_code`)."""
    return {
        "pytorch_model": model.to("cpu").eval(),
        "architecture": architecture,
        "signature": SIGNATURE,
        "input_example": example.astype(np.float32),
        "pip_requirements": pip_requirements(),
        "code_paths": [str(code)],
    }


def shipped_code(folder: Path) -> Path:
    """The code the registered model loads with, copied into `folder`: the package's `__init__` and its `model`
    subpackage (architectures and the pyfunc), which import nothing else of the package (an import-linter contract
    checks it), so the model loads anywhere with mlflow and torch."""
    package = Path(fashion_hpo.__file__).parent
    target = folder / package.name
    target.mkdir()
    shutil.copy2(package / "__init__.py", target / "__init__.py")
    shutil.copytree(package / "model", target / "model", ignore=shutil.ignore_patterns("__pycache__"))
    return target


def log_model(model: nn.Module, architecture: ModelConfig, example: np.ndarray, card: ModelCard) -> ModelInfo:
    """Log the model to the active run: pytorch flavor plus this project's pyfunc contract."""
    metadata = {"class_names": list(CLASS_NAMES), "contract": CONTRACT, **card.tags()}
    with tempfile.TemporaryDirectory() as scratch:
        return Model.log(
            artifact_path=None,
            name=MODEL_ARTIFACT,
            flavor=serving,
            metadata=metadata,
            **flavor_kwargs(model, architecture, example, shipped_code(Path(scratch))),
        )


def find_version(name: str, card: ModelCard) -> ModelVersion | None:
    """The version already registered from the same study's same best trial, if any."""
    versions = MlflowClient().search_model_versions(f"name = '{name}'")
    for version in versions:
        tags = version.tags
        if tags.get("study_name") == card.study_name and tags.get("best_trial_number") == str(card.trial_number):
            return version
    return None


def register(model_uri: str, name: str, card: ModelCard, run_id: str) -> ModelVersion:
    """Register `model_uri` under `name`, with tags that trace it back to its trial and record its files' digests
    (checked before it is loaded), and a description."""
    tags = {**card.tags(), "parent_run_id": run_id, **logged_digests(model_uri)}
    version = mlflow.register_model(model_uri, name, tags=tags)
    description = (
        f"Best trial {card.trial_number} of study {card.study_name!r} ({card.model_kind}); "
        f"validation accuracy {card.val_accuracy:.4f}, test accuracy {card.test_accuracy:.4f}; "
        f"parent run {run_id}; params {json.dumps(card.params, sort_keys=True)}. {CONTRACT}"
    )
    MlflowClient().update_model_version(name, version.version, description=description)
    return MlflowClient().get_model_version(name, version.version)


def promote(
    version: ModelVersion,
    test_accuracy: float,
    policy: str,
    limits: CostLimits = NO_LIMITS,
    compare: Callable[[ModelVersion], PairedComparison] | None = None,
    significance: float = 0.05,
) -> tuple[str, str]:
    """Point `champion` at the version if it meets `limits` and beats the current champion's test accuracy (a tie
    keeps the incumbent; with `if-significant`, by McNemar's p below `significance`) or the champion does not meet
    `limits`; else `challenger`. `compare` pairs the two models' predictions on the same test images; its result is
    recorded on the version. Returns the alias and the reason, which names the test that decided."""
    client = MlflowClient()
    try:
        champion = client.get_model_version_by_alias(version.name, CHAMPION_ALIAS)
    except MlflowException:
        champion = None
    if not limits.allows(version_costs(version)):
        alias, reason = CHALLENGER_ALIAS, f"outside the constraints {limits.describe()}"
    elif champion is None or str(champion.version) == str(version.version):
        alias, reason = CHAMPION_ALIAS, "first registered model" if champion is None else "already champion"
    elif not limits.allows(version_costs(champion)):
        alias = CHAMPION_ALIAS
        reason = f"champion version {champion.version} is outside the constraints {limits.describe()}; this one is not"
    else:
        comparison = compare(champion) if compare is not None else None
        if comparison is not None:
            for key, value in comparison.tags().items():
                client.set_model_version_tag(version.name, version.version, key, value)
        alias, reason = against_champion(champion, test_accuracy, policy, comparison, significance)
        reason += f", both within {limits.describe()}" if limits != NO_LIMITS else ""
    client.set_registered_model_alias(version.name, alias, version.version)
    return alias, reason


def against_champion(
    champion: ModelVersion,
    test_accuracy: float,
    policy: str,
    comparison: PairedComparison | None,
    significance: float,
) -> tuple[str, str]:
    """The alias a version gets against a champion within the same constraints, and why."""
    incumbent = float(champion.tags.get("test_accuracy", "-inf"))
    paired = f"; paired difference {comparison.describe()}" if comparison is not None else ""
    if policy == "always":
        return CHAMPION_ALIAS, f"--promote always replaced version {champion.version}{paired}"
    if policy == "if-significant" and comparison is not None:
        better = comparison.better_at(significance)
        verdict = "is" if better else "is not"
        reason = f"test accuracy {test_accuracy:.4f} {verdict} significantly better than champion version "
        reason += f"{champion.version} ({incumbent:.4f}) at p < {significance:g}{paired}"
        return (CHAMPION_ALIAS if better else CHALLENGER_ALIAS), reason
    better = round(test_accuracy, 4) > incumbent  # tags hold 4 decimals: k/10,000 test images
    word = "beats" if better else "does not beat"
    reason = f"test accuracy {test_accuracy:.4f} {word} champion version {champion.version} ({incumbent:.4f})"
    return (CHAMPION_ALIAS if better else CHALLENGER_ALIAS), reason + paired
