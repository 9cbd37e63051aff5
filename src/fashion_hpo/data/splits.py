"""FashionMNIST in memory: loaded once per process, split 50,000 / 10,000 / test, batched by indexing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from fashion_hpo.data.cache import read_splits
from fashion_hpo.data.files import check_raw_files, ensure_raw_files

TRAIN_SIZE, VAL_SIZE = 50_000, 10_000


@dataclass(frozen=True)
class Split:
    """One split held as tensors: images (N, 1, 28, 28) as stored, labels int64 (N,).

    FashionMNIST's images stay uint8 pixels, a quarter of the memory of floats (50 MB instead of 210 MB per process,
    which decides how many workers fit on a machine), and are scaled to [0, 1] a batch at a time (`scaled`); images
    that are float already (synthetic data) are used as they are."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> Split:
        """The first n examples (all when n is 0 or larger than the split)."""
        return self if n <= 0 or n >= len(self) else Split(self.images[:n], self.labels[:n])

    def to(self, device: torch.device) -> Split:
        """The same split on another device."""
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class FashionData:
    """The three splits the study uses: train/validation carved from the official train set, and test."""

    train: Split
    val: Split
    test: Split

    @property
    def full_train(self) -> Split:
        """Train and validation together: the 60,000 official training images, for the final refit."""
        return Split(torch.cat([self.train.images, self.val.images]), torch.cat([self.train.labels, self.val.labels]))


def scaled(images: torch.Tensor) -> torch.Tensor:
    """Images as a model takes them: float32 in [0, 1] (uint8 pixels divided by 255, floats as they are)."""
    return images.to(torch.float32).div_(255.0) if images.dtype == torch.uint8 else images


def as_split(images: torch.Tensor, labels: torch.Tensor) -> Split:
    """uint8 images (N, 28, 28) and labels as a Split of uint8 images (N, 1, 28, 28)."""
    return Split(images.unsqueeze(1), labels)


def load_data(data_dir: Path, seed: int, device: torch.device | str = "cpu") -> FashionData:
    """Load FashionMNIST once: a seeded 50k/10k train/validation split of the official train set, and test."""
    ensure_raw_files(Path(data_dir))
    check_raw_files(Path(data_dir))
    tensors = read_splits(Path(data_dir))
    official_train = as_split(tensors["train_images"], tensors["train_labels"])
    test = as_split(tensors["test_images"], tensors["test_labels"])
    order = torch.randperm(len(official_train), generator=torch.Generator().manual_seed(seed))
    train_idx, val_idx = order[:TRAIN_SIZE], order[TRAIN_SIZE : TRAIN_SIZE + VAL_SIZE]
    data = FashionData(
        train=Split(official_train.images[train_idx], official_train.labels[train_idx]),
        val=Split(official_train.images[val_idx], official_train.labels[val_idx]),
        test=test,
    )
    device = torch.device(device)
    return FashionData(data.train.to(device), data.val.to(device), data.test.to(device))


def batches(
    split: Split, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, labels) batches by indexing; shuffled with a fresh permutation when a generator is given."""
    n = len(split)
    if generator is None:
        for start in range(0, n, batch_size):
            yield scaled(split.images[start : start + batch_size]), split.labels[start : start + batch_size]
        return
    order = torch.randperm(n, generator=generator).to(split.labels.device)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield scaled(split.images[idx]), split.labels[idx]


def load_test_split(data_dir: Path) -> Split:
    """Only the official 10,000 test images, on the CPU (for checking a trained model)."""
    ensure_raw_files(Path(data_dir))
    check_raw_files(Path(data_dir))
    tensors = read_splits(Path(data_dir))
    return as_split(tensors["test_images"], tensors["test_labels"])
