"""A trial's training state saved at the end of each epoch, so that a retry of a trial whose worker died resumes
where it stopped: one small local file per trial, written atomically, overwritten each epoch, removed when the trial
ends (anchor: optuna-examples pytorch/pytorch_checkpoint.py)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fashion_hpo.core.files import write_atomically
from fashion_hpo.core.urls import redact_url
from fashion_hpo.model.architectures import TrialConfig

# The user attribute (and, through the tracking callback, the run's tag and param) of a retry of a trial whose worker
# died: the epochs it took from the checkpoint of the trial it retries; 0 when it found none and trained from scratch.
RESUMED_FROM_EPOCH = "resumed_from_epoch"
# Bumped when what a checkpoint holds changes: a file of another format is not resumed from.
FORMAT = 1
# Epoch results as saved: (epoch, train_loss, val_loss, val_accuracy, seconds).
SavedEpoch = tuple[int, float, float, float, float]


@dataclass(frozen=True)
class Trainer:
    """What one training run changes as it goes: the model, optimizer, LR schedule and batch-order generator."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator

    def state(self) -> dict[str, Any]:
        """Their states, with torch's global random state (dropout draws from it)."""
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": cuda,
        }

    def load(self, state: dict[str, Any]) -> None:
        """Put back the states that `state` saved."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])


@dataclass(frozen=True)
class Saved:
    """A checkpoint read back: the training state after `epochs` epochs and those epochs' results."""

    state: dict[str, Any]
    epochs: list[SavedEpoch]

    @property
    def epoch(self) -> int:
        """The last epoch it saved."""
        return len(self.epochs)


@dataclass(frozen=True)
class EpochCheckpoint:
    """Where a trial saves its state each epoch (`path`), what identifies its training (`key`), and the state of an
    earlier attempt to resume from (`saved`)."""

    path: Path
    key: str
    saved: Saved | None = None

    def save(self, trainer: Trainer, epochs: Iterable[SavedEpoch]) -> None:
        """Write the state after the last of `epochs`, replacing the previous epoch's, whole or not at all."""
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, "key": self.key, "epochs": list(epochs), **trainer.state()}, buffer)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, [buffer.getvalue()])


def training_key(config: TrialConfig, epochs: int, n_train: int) -> str:
    """What a resumed run must share with the saved one: configuration, epochs (the LR schedule's length) and the
    number of training images."""
    return json.dumps({"config": asdict(config), "epochs": epochs, "n_train": n_train}, sort_keys=True, default=str)


def checkpoint_folder(folder: Path, study_name: str, storage: str) -> Path:
    """A study's folder of checkpoints: its name made file-safe, plus a digest of its storage, so that studies of
    one name in two storages do not share files."""
    digest = hashlib.sha256(redact_url(storage).encode()).hexdigest()[:8]
    return folder / f"{re.sub(r'[^A-Za-z0-9._-]', '_', study_name)}-{digest}"


def trial_checkpoint(folder: Path, number: int) -> Path:
    """The checkpoint file of trial `number` in a study's folder."""
    return folder / f"trial-{number:05d}.pt"


def find_saved(paths: Iterable[Path], key: str) -> Saved | None:
    """The first of `paths` that holds a readable checkpoint of training `key`; None when none does."""
    for path in paths:
        saved = read_checkpoint(path, key)
        if saved is not None:
            return saved
    return None


def read_checkpoint(path: Path, key: str) -> Saved | None:
    """The checkpoint at `path` if it is there, readable and of training `key`, else None (and a warning for one
    that is there but unusable: the trial then trains from scratch)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        logging.getLogger(__name__).warning("Not resuming from unreadable checkpoint %s: %s", path, err)
        return None
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("key") != key:
        logging.getLogger(__name__).warning("Not resuming from %s: it saved another training", path)
        return None
    epochs = [tuple(epoch) for epoch in state["epochs"]]
    return Saved(state, epochs)


def remove_checkpoints(paths: Iterable[Path]) -> None:
    """Delete these checkpoint files where they exist."""
    for path in paths:
        path.unlink(missing_ok=True)
