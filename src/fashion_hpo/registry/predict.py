"""Use a registered model: classify image files, or check it on the test set."""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from fashion_hpo.core.errors import credentials_refused
from fashion_hpo.model.architectures import CLASS_NAMES
from fashion_hpo.registry.images import read_image

INVERT_CHOICES = ("auto", "yes", "no")


class ModelLoadError(RuntimeError):
    """The model URI does not resolve to a loadable model."""


# A prediction whose top class probability is below this is reported as uncertain.
UNCERTAIN_BELOW = 0.5


@dataclass(frozen=True)
class Prediction:
    """One classified image; `uncertain` when its top probability is below UNCERTAIN_BELOW."""

    source: str
    class_index: int
    class_name: str
    probability: float
    uncertain: bool

    def line(self) -> str:
        """The human-readable line: file, class name, probability, and a warning when the model is unsure."""
        warning = f"\tuncertain: top probability below {UNCERTAIN_BELOW}" if self.uncertain else ""
        return f"{self.source}\t{self.class_name}\t{self.probability:.4f}{warning}"


def load_model(model_uri: str, scratch: Path) -> Any:
    """The pyfunc model at `model_uri`, or ModelLoadError with the reason in one line. A registered version is
    downloaded into `scratch` and checked against the digests recorded when it was registered, then loaded from
    there (the files checked are the files loaded)."""
    import mlflow.pyfunc

    from fashion_hpo.registry.integrity import IntegrityError, download_verified, registered_version

    try:
        version = registered_version(model_uri)
        if version is None:
            return mlflow.pyfunc.load_model(model_uri)
        folder = download_verified(version, scratch)
        for mismatch in requirement_mismatches(folder):
            print(f"warning: the model was saved with {mismatch}", file=sys.stderr)
        return mlflow.pyfunc.load_model(str(folder), suppress_warnings=True)  # its check: requirement_mismatches
    except IntegrityError as err:
        raise ModelLoadError(f"refusing {model_uri!r}: {err}") from None
    except Exception as err:
        refused = credentials_refused(err, mlflow.get_tracking_uri(), f"load {model_uri}")
        if refused is not None:
            raise refused from None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"cannot load {model_uri!r}: {reason}") from None


def requirement_mismatches(folder: Path) -> list[str]:
    """What the model at `folder` was saved with that this environment lacks: its pip requirements not met, as
    "name==X (installed: Y)", and another Python minor version. Checked package by package, where MLflow's own check
    first maps the files of every installed package, over a second per load."""
    from importlib.metadata import PackageNotFoundError, version

    from mlflow.models import Model
    from packaging.requirements import InvalidRequirement, Requirement

    mismatches = []
    path = folder / "requirements.txt"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            requirement = Requirement(line.strip())
        except InvalidRequirement:  # comments, blank lines, options and paths: nothing to compare
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed: str | None = version(requirement.name)
        except PackageNotFoundError:
            installed = None
        if installed is None or not requirement.specifier.contains(installed, prereleases=True):
            mismatches.append(f"{requirement} (installed: {installed or 'none'})")
    saved_with = Model.load(str(folder)).flavors.get("python_function", {}).get("python_version", "")
    running = ".".join(map(str, sys.version_info[:3]))
    if saved_with.split(".")[:2] != running.split(".")[:2]:
        mismatches.append(f"Python {saved_with} (running: {running})")
    return mismatches


def predict_frame(model: Any, images: np.ndarray) -> pd.DataFrame:
    """The pyfunc's predictions for any number of (N, 1, 28, 28) images, in batches it accepts."""
    import pandas as pd

    from fashion_hpo.model.serving import MAX_BATCH

    images = images.astype(np.float32)
    return pd.concat([model.predict(images[i : i + MAX_BATCH]) for i in range(0, len(images), MAX_BATCH)])


def classify(model: Any, images: np.ndarray, sources: list[str]) -> list[Prediction]:
    """Predictions for a batch of (N, 1, 28, 28) images through the pyfunc contract."""
    frame = predict_frame(model, images)
    return [
        Prediction(
            source,
            int(row.class_index),
            row.class_name,
            float(max(row.probabilities)),
            float(max(row.probabilities)) < UNCERTAIN_BELOW,
        )
        for source, row in zip(sources, frame.itertuples(index=False), strict=True)
    ]


def classify_files(model: Any, paths: list[Path], invert: str) -> tuple[list[Prediction], list[str]]:
    """Classify every readable image; unreadable ones become one error line each."""
    images, sources, errors = [], [], []
    for path in paths:
        try:
            images.append(read_image(path, invert))
            sources.append(str(path))
        except (OSError, ValueError) as err:
            errors.append(f"{path}: error: cannot read image ({type(err).__name__}: {err})")
    predictions = classify(model, np.stack(images), sources) if images else []
    return predictions, errors


def print_predictions(predictions: list[Prediction], as_json: bool) -> None:
    """One line per image, or one JSON document."""
    if as_json:
        records = [p.__dict__ for p in predictions]
        print(json.dumps({"predictions": records}, indent=2))
        return
    for prediction in predictions:
        print(prediction.line())


def test_set_accuracy(model: Any, data_dir: Path, n: int) -> tuple[int, float]:
    """Accuracy of the model on the first n official test images (all when n exceeds 10,000)."""
    from fashion_hpo.data.splits import load_test_split, scaled

    test = load_test_split(data_dir).head(n)
    predicted = predict_frame(model, scaled(test.images).numpy())["class_index"].to_numpy()
    return len(test), float((predicted == test.labels.numpy()).mean())


def run_predict(model_uri: str, paths: list[Path], invert: str, as_json: bool) -> int:
    """The `predict IMAGE...` command; exit code 1 when any file could not be classified."""
    with tempfile.TemporaryDirectory() as scratch:
        model = load_model(model_uri, Path(scratch))
        predictions, errors = classify_files(model, paths, invert)
    print_predictions(predictions, as_json)
    for error in errors:
        print(error, file=sys.stderr)
    return 1 if errors else 0


def run_test_samples(model_uri: str, data_dir: Path, n: int) -> int:
    """The `predict --test-samples N` command: a quick check that the registered model works."""
    with tempfile.TemporaryDirectory() as scratch:
        model = load_model(model_uri, Path(scratch))
        count, accuracy = test_set_accuracy(model, data_dir, n)
    print(f"{model_uri}: accuracy {accuracy:.4f} on {count} test images ({len(CLASS_NAMES)} classes)")
    return 0


def run_verify(model_uri: str, keep: Path | None) -> int:
    """The `verify` command: check a registered version's files against its recorded digests, optionally keeping
    the checked copy in the new folder `keep` (to serve that copy rather than download the model again)."""
    import mlflow

    from fashion_hpo.registry.integrity import (
        FILES_TAG,
        WEIGHTS_TAG,
        IntegrityError,
        download_verified,
        registered_version,
    )

    try:
        version = registered_version(model_uri)
    except Exception as err:
        refused = credentials_refused(err, mlflow.get_tracking_uri(), f"read {model_uri}")
        if refused is not None:
            raise refused from None
        raise ModelLoadError(f"cannot resolve {model_uri!r}: {str(err).strip().splitlines()[0]}") from None
    if version is None:
        raise ModelLoadError(f"{model_uri!r} names no registered version (models:/NAME@ALIAS or models:/NAME/N)")
    with tempfile.TemporaryDirectory(dir=keep.parent if keep else None) as scratch:
        try:
            folder = download_verified(version, Path(scratch))
        except IntegrityError as err:
            raise ModelLoadError(f"refusing {model_uri!r}: {err}") from None
        if keep is not None:
            folder.rename(keep)  # only once checked: a folder at --keep is always a verified copy
    tags = version.tags
    print(
        f"{model_uri}: version {version.version} of {version.name!r} matches its recorded SHA-256 digests "
        f"({WEIGHTS_TAG} {tags[WEIGHTS_TAG][:16]}..., {FILES_TAG} {tags[FILES_TAG][:16]}...)"
        + (f"; checked copy in {keep}" if keep else "")
    )
    return 0
