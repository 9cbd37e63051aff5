"""Registry integrity: SHA-256 digests of a logged model's files, written on its registered version by the process
that registers it, and checked against a fresh download before the model is loaded.

A model is code (the package shipped with it, its requirements) and weights: whoever can replace its files
in the artifact store could otherwise run anything wherever `models:/...@champion` is loaded.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path, PurePosixPath
from unittest import mock

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from fashion_hpo.core.files import file_sha256

WEIGHTS_TAG = "weights_sha256"
FILES_TAG = "model_sha256"
WEIGHTS_FOLDER = "data"  # where mlflow.pytorch saves the module
# MLflow writes this file (the version's name and number) into every downloaded copy of a registered version.
DOWNLOAD_ONLY = "registered_model_meta"
REGISTERED_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))")
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


class IntegrityError(RuntimeError):
    """A registered model's files do not match the digests recorded on its version."""


def model_files(folder: Path) -> list[PurePosixPath]:
    """The model's files, relative to its folder, sorted; without MLflow's download marker and Python caches."""
    files = (PurePosixPath(p.relative_to(folder).as_posix()) for p in folder.rglob("*") if p.is_file())
    return sorted(f for f in files if f.as_posix() != DOWNLOAD_ONLY and "__pycache__" not in f.parts)


def listing_digest(folder: Path, files: list[PurePosixPath]) -> str:
    """The SHA-256 of `sha256sum`'s listing of `files` (one `<digest>  <path>` line each, in this order)."""
    listing = "".join(f"{file_sha256(folder / f)}  {f}\n" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def digests(folder: Path) -> dict[str, str]:
    """The version tags for a saved model folder: the digest of its weights and the digest of all its files."""
    files = model_files(folder)
    weights = [f for f in files if f.parts[0] == WEIGHTS_FOLDER]
    if not weights:
        raise IntegrityError(f"no weights under {folder / WEIGHTS_FOLDER}: not a saved torch model")
    return {WEIGHTS_TAG: listing_digest(folder, weights), FILES_TAG: listing_digest(folder, files)}


def download(uri: str, destination: str) -> Path:
    """Download a model's files without MLflow's progress bar (these commands answer in lines; a user's own
    setting of the variable wins)."""
    with mock.patch.dict(os.environ, {PROGRESS_BAR: os.environ.get(PROGRESS_BAR, "false")}):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=destination))


def logged_digests(model_uri: str) -> dict[str, str]:
    """The digests of a logged model as the artifact store holds it (read back once, right after logging)."""
    with tempfile.TemporaryDirectory() as scratch:
        return digests(download(model_uri, scratch))


def registered_version(model_uri: str) -> ModelVersion | None:
    """The registered version that `models:/NAME@ALIAS` or `models:/NAME/VERSION` names (resolved once, so a
    moving alias cannot swap the model between check and load); None for any other URI."""
    match = REGISTERED_URI.fullmatch(model_uri)
    if match is None:
        return None
    client = MlflowClient()
    if match["alias"]:
        return client.get_model_version_by_alias(match["name"], match["alias"])
    return client.get_model_version(match["name"], match["version"])


def check(version: ModelVersion, folder: Path) -> None:
    """Raise IntegrityError unless the files in `folder` match the digests recorded on `version`."""
    label = f"version {version.version} of {version.name!r}"
    recorded = {tag: version.tags.get(tag) for tag in (WEIGHTS_TAG, FILES_TAG)}
    if not all(recorded.values()):
        raise IntegrityError(
            f"{label} has no {WEIGHTS_TAG}/{FILES_TAG} tags (not registered by this fashion-hpo): nothing to check "
            "its files against; register it again with `fashion-hpo register`"
        )
    found = digests(folder)
    if found[WEIGHTS_TAG] != recorded[WEIGHTS_TAG]:
        changed = f"its weights ({WEIGHTS_FOLDER}/) do not match its {WEIGHTS_TAG} tag"
    elif found[FILES_TAG] != recorded[FILES_TAG]:
        changed = f"its files (code, MLmodel or requirements; the weights match) do not match its {FILES_TAG} tag"
    else:
        return
    raise IntegrityError(f"{label}: {changed}, so they were changed after it was registered")


def download_verified(version: ModelVersion, scratch: Path) -> Path:
    """Download the version's files into `scratch` and check them; returns the verified folder to load from."""
    folder = download(f"models:/{version.name}/{version.version}", str(scratch))
    check(version, folder)
    return folder
