"""FashionMNIST: find the raw files, load them once, split, and batch from in-memory tensors."""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.datasets import FashionMNIST

DEBIAN_DATASET_DIR = Path("/usr/share/datasets/fashion-mnist")
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
TRAIN_SIZE, VAL_SIZE = 50_000, 10_000


class DataError(RuntimeError):
    """The dataset cannot be found or read; the message says how to fix it."""


@dataclass(frozen=True)
class Split:
    """One split held as tensors: images float32 (N, 1, 28, 28) in [0, 1], labels int64 (N,)."""

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


def raw_dir(data_dir: Path) -> Path:
    """Where torchvision's FashionMNIST expects the decompressed IDX files."""
    return Path(data_dir) / "FashionMNIST" / "raw"


def has_raw_files(data_dir: Path) -> bool:
    """True when all four decompressed IDX files are present."""
    return all((raw_dir(data_dir) / name).is_file() for name in RAW_FILES)


def install_from_archives(data_dir: Path, source_dir: Path = DEBIAN_DATASET_DIR) -> bool:
    """Decompress the four `.gz` IDX files of `source_dir` into the raw folder; False if any is missing."""
    sources = [source_dir / f"{name}.gz" for name in RAW_FILES]
    if not all(path.is_file() for path in sources):
        return False
    target = raw_dir(data_dir)
    target.mkdir(parents=True, exist_ok=True)
    for source, name in zip(sources, RAW_FILES, strict=True):
        partial = target / f"{name}.partial"
        # Write then rename, so an interrupted copy never looks like a complete file.
        with gzip.open(source, "rb") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        partial.replace(target / name)
    return True


def ensure_raw_files(data_dir: Path, source_dir: Path = DEBIAN_DATASET_DIR, download: bool = True) -> None:
    """Make the raw files available: already there, else from Debian's package, else torchvision's download."""
    if has_raw_files(data_dir) or install_from_archives(data_dir, source_dir):
        return
    if download:
        try:
            FashionMNIST(str(data_dir), train=True, download=True)
            FashionMNIST(str(data_dir), train=False, download=True)
            return
        except Exception:
            pass
    raise DataError(
        f"FashionMNIST not found in {raw_dir(data_dir)}: install it with "
        f"`apt-get install dataset-fashion-mnist` (files in {source_dir}) or allow torchvision to download it"
    )


def idx_problem(path: Path) -> str | None:
    """Why an IDX file is unusable (missing, wrong magic number, wrong size), or None when it looks right."""
    if not path.is_file():
        return "missing"
    with open(path, "rb") as file:
        header = file.read(16)
    is_images = "images" in path.name
    magic, header_size, item_size = (2051, 16, 28 * 28) if is_images else (2049, 8, 1)
    if len(header) < header_size or int.from_bytes(header[:4], "big") != magic:
        return f"wrong magic number (expected {magic})"
    expected = header_size + int.from_bytes(header[4:8], "big") * item_size
    actual = path.stat().st_size
    return None if actual == expected else f"truncated or padded: {actual} bytes, expected {expected}"


def check_raw_files(data_dir: Path) -> None:
    """Fail with the file's name and the remedy when a raw IDX file is corrupt."""
    for name in RAW_FILES:
        path = raw_dir(data_dir) / name
        problem = idx_problem(path)
        if problem is not None:
            raise DataError(
                f"{path} is unusable ({problem}): delete it and rerun to restore it from {DEBIAN_DATASET_DIR} "
                "(`apt-get install --reinstall dataset-fashion-mnist` if that copy is damaged too)"
            )


def _read(data_dir: Path, train: bool) -> Split:
    """Read one official split through torchvision, as scaled tensors."""
    try:
        dataset = FashionMNIST(str(data_dir), train=train, download=False)
    except Exception as err:  # torchvision reports corrupt IDX files as assertion or reshape errors
        raise DataError(
            f"cannot read FashionMNIST from {raw_dir(data_dir)} ({type(err).__name__}: {err}); "
            "delete that folder and rerun to restore the files"
        ) from err
    images = dataset.data.unsqueeze(1).to(torch.float32).div_(255.0)
    return Split(images, dataset.targets.to(torch.int64))


def load_data(data_dir: Path, seed: int, device: torch.device | str = "cpu") -> FashionData:
    """Load FashionMNIST once: a seeded 50k/10k train/validation split of the official train set, and test."""
    ensure_raw_files(Path(data_dir))
    check_raw_files(Path(data_dir))
    official_train, test = _read(data_dir, train=True), _read(data_dir, train=False)
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
            yield split.images[start : start + batch_size], split.labels[start : start + batch_size]
        return
    order = torch.randperm(n, generator=generator).to(split.labels.device)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield split.images[idx], split.labels[idx]


def load_test_split(data_dir: Path) -> Split:
    """Only the official 10,000 test images, on the CPU (for checking a trained model)."""
    ensure_raw_files(Path(data_dir))
    check_raw_files(Path(data_dir))
    return _read(data_dir, train=False)
