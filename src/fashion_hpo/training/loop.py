"""Training and evaluation. Functions return values; they neither print nor log."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fashion_hpo.data.splits import Split, batches, scaled
from fashion_hpo.model.architectures import TrialConfig, build_model
from fashion_hpo.training.checkpoint import EpochCheckpoint, SavedEpoch, Trainer

# How many batches pass between checks for a diverged loss: each check is one host sync.
FINITE_CHECK_EVERY = 20
EVAL_BATCH_SIZE = 4096


class NonFiniteLossError(ArithmeticError):
    """Training diverged: the loss became NaN or infinite."""


@dataclass(frozen=True)
class Evaluation:
    """Mean cross-entropy loss and accuracy over a split."""

    loss: float
    accuracy: float


@dataclass(frozen=True)
class EpochResult:
    """What one epoch produced: its training loss, the validation scores, and its wall time."""

    epoch: int
    train_loss: float
    val: Evaluation
    seconds: float

    def saved(self) -> SavedEpoch:
        """The result as a checkpoint keeps it."""
        return (self.epoch, self.train_loss, self.val.loss, self.val.accuracy, self.seconds)

    @classmethod
    def from_saved(cls, saved: SavedEpoch) -> EpochResult:
        """The result a checkpoint kept."""
        epoch, train_loss, val_loss, val_accuracy, seconds = saved
        return cls(int(epoch), train_loss, Evaluation(val_loss, val_accuracy), seconds)


def make_optimizer(model: nn.Module, config: TrialConfig) -> torch.optim.Optimizer:
    """The optimizer named in the config, with its learning rate, weight decay and momentum."""
    cls = getattr(torch.optim, config.optimizer)
    kwargs: dict[str, float] = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.optimizer == "SGD":
        kwargs["momentum"] = config.momentum
    return cls(model.parameters(), **kwargs)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    split: Split,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    """One pass over `split` in shuffled batches; returns the mean training loss."""
    model.train()
    total = torch.zeros((), device=split.labels.device)
    for i, (images, labels) in enumerate(batches(split, batch_size, generator), start=1):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(labels)
        if i % FINITE_CHECK_EVERY == 0 and not torch.isfinite(total):
            raise NonFiniteLossError(f"training loss became {total.item()} at batch {i}")
    mean = (total / len(split)).item()
    if not math.isfinite(mean):
        raise NonFiniteLossError(f"training loss became {mean}")
    return mean


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class scores for many images, computed in large batches."""
    model.eval()
    return torch.cat([model(scaled(images[i : i + EVAL_BATCH_SIZE])) for i in range(0, len(images), EVAL_BATCH_SIZE)])


def evaluate(model: nn.Module, split: Split) -> Evaluation:
    """Mean loss and accuracy of the model on a split."""
    logits = predict_logits(model, split.images)
    loss = F.cross_entropy(logits, split.labels).item()
    accuracy = (logits.argmax(dim=1) == split.labels).float().mean().item()
    return Evaluation(loss=loss, accuracy=accuracy)


def fit(
    model: nn.Module,
    config: TrialConfig,
    train: Split,
    val: Split | None,
    epochs: int,
    seed: int,
    on_epoch: Callable[[EpochResult], None] | None = None,
    checkpoint: EpochCheckpoint | None = None,
) -> list[EpochResult]:
    """Train for `epochs` epochs, evaluating on `val` after each; `on_epoch` may stop early by raising.

    With a checkpoint, the state is saved after each epoch (before `on_epoch` hears of it); one holding a saved state
    resumes from it: `on_epoch` hears the saved epochs once, then training goes on from the next."""
    # Conv weights channels-last make convolutions run NHWC: a CNN trial 1.33x faster on this CPU (measured by
    # benchmarks/cnn_speedups.py); a no-op for MLPs, which have no 4-D weights.
    model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    # Cosine decay to zero over the run: the last epoch, which is the trial's value, is the settled one.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    trainer = Trainer(model, optimizer, schedule, torch.Generator().manual_seed(seed))
    history = resume(trainer, checkpoint, on_epoch)
    for epoch in range(len(history) + 1, epochs + 1):
        history.append(train_and_evaluate(trainer, config, train, val, epoch))
        if checkpoint is not None:
            checkpoint.save(trainer, (result.saved() for result in history))
        if on_epoch is not None:
            on_epoch(history[-1])
    return history


def resume(
    trainer: Trainer, checkpoint: EpochCheckpoint | None, on_epoch: Callable[[EpochResult], None] | None
) -> list[EpochResult]:
    """The epochs a checkpoint's saved state trained, put back into `trainer` and told to `on_epoch` once each."""
    if checkpoint is None or checkpoint.saved is None:
        return []
    trainer.load(checkpoint.saved.state)
    history = [EpochResult.from_saved(saved) for saved in checkpoint.saved.epochs]
    for result in history:
        if on_epoch is not None:
            on_epoch(result)
    return history


def train_and_evaluate(
    trainer: Trainer, config: TrialConfig, train: Split, val: Split | None, epoch: int
) -> EpochResult:
    """One epoch of training and the LR schedule's step, then the validation scores."""
    start = time.perf_counter()
    train_loss = train_epoch(trainer.model, trainer.optimizer, train, config.batch_size, trainer.generator)
    trainer.schedule.step()
    scores = evaluate(trainer.model, val) if val is not None else Evaluation(math.nan, math.nan)
    return EpochResult(epoch, train_loss, scores, time.perf_counter() - start)


@dataclass(frozen=True)
class Fitted:
    """A trained model and its per-epoch history."""

    model: nn.Module
    history: list[EpochResult]


def build_and_fit(
    config: TrialConfig,
    train: Split,
    val: Split | None,
    epochs: int,
    seed: int,
    on_epoch: Callable[[EpochResult], None] | None = None,
    checkpoint: EpochCheckpoint | None = None,
) -> Fitted:
    """Build the config's model on the data's device, seed its weights and batch order with `seed`, and train it.

    The one recipe shared by a trial and the refit of its configuration, so that both start from the same weights;
    a trial passes its checkpoint (see `fit`)."""
    torch.manual_seed(seed)
    model = build_model(config.model).to(train.labels.device)
    return Fitted(model, fit(model, config, train, val, epochs, seed, on_epoch, checkpoint))


def confusion_matrix(model: nn.Module, split: Split, n_classes: int = 10) -> torch.Tensor:
    """Counts of (true class, predicted class) pairs over a split, as an int64 CPU tensor."""
    predicted = predict_logits(model, split.images).argmax(dim=1)
    pairs = split.labels * n_classes + predicted
    return torch.bincount(pairs, minlength=n_classes * n_classes).reshape(n_classes, n_classes).cpu()
