"""The decoded splits, cached beside the raw files with their digests: a later start loads them in a tenth of a second
instead of importing torchvision and parsing the IDX files (benchmarks/startup.py)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

from fashion_hpo.core.files import write_atomically
from fashion_hpo.data.raw import RAW_FILES, DataError, raw_dir, read_stamp

# The decoded splits, saved with the digests of the raw files they came from: a later start loads them in a tenth of
# a second instead of importing torchvision and parsing the IDX files (benchmarks/startup.py).
CACHE_NAME = ".fashion-hpo-tensors.pt"

CACHE_FORMAT = 1  # raised whenever what the cache holds changes: a cache of another format is decoded again


def decode(data_dir: Path) -> dict[str, torch.Tensor]:
    """Both official splits decoded by torchvision: uint8 images (N, 28, 28) and int64 labels."""
    from torchvision.datasets import FashionMNIST

    tensors = {}
    for split, train in (("train", True), ("test", False)):
        try:
            dataset = FashionMNIST(str(data_dir), train=train, download=False)
        except Exception as err:  # torchvision reports corrupt IDX files as assertion or reshape errors
            raise DataError(
                f"cannot read FashionMNIST from {raw_dir(data_dir)} ({type(err).__name__}: {err}); "
                "delete that folder and rerun to restore the files"
            ) from err
        tensors[f"{split}_images"], tensors[f"{split}_labels"] = dataset.data, dataset.targets.to(torch.int64)
    return tensors


def raw_digests(folder: Path) -> dict[str, str] | None:
    """The stamp's SHA-256 of every raw file, or None when it lacks one (a read-only folder never stamped)."""
    files = read_stamp(folder).files
    return {name: files[name].sha256 for name in RAW_FILES} if all(name in files for name in RAW_FILES) else None


def read_cache(path: Path, digests: dict[str, str]) -> dict[str, torch.Tensor] | None:
    """The cached splits if the cache was made from raw files with these digests; None otherwise."""
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # none yet, damaged, or written by another torch version: decode again and replace it
        return None
    if not isinstance(cache, dict) or (cache.get("format"), cache.get("digests")) != (CACHE_FORMAT, digests):
        return None
    tensors = cache.get("tensors")
    return tensors if well_formed(tensors) else None


def well_formed(tensors: object) -> bool:
    """Whether `tensors` holds both splits as `decode` returns them: uint8 images (N, 28, 28), N int64 labels."""
    keys = {f"{split}_{kind}" for split in ("train", "test") for kind in ("images", "labels")}
    if not isinstance(tensors, dict) or set(tensors) != keys:
        return False
    return all(
        images.dtype == torch.uint8
        and images.shape[1:] == (28, 28)
        and labels.dtype == torch.int64
        and labels.shape == (len(images),)
        for images, labels in (
            (tensors["train_images"], tensors["train_labels"]),
            (tensors["test_images"], tensors["test_labels"]),
        )
    )


def write_cache(path: Path, digests: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
    """Save the decoded splits with their raw files' digests, atomically; a read-only folder keeps no cache."""
    buffer = io.BytesIO()
    torch.save({"format": CACHE_FORMAT, "digests": digests, "tensors": tensors}, buffer)
    with contextlib.suppress(OSError):  # then every start decodes the IDX files, as without a cache
        write_atomically(path, [buffer.getvalue()])


def read_splits(data_dir: Path) -> dict[str, torch.Tensor]:
    """Both official splits: from the tensor cache when it matches the raw files, else decoded (and cached)."""
    folder = raw_dir(data_dir)
    digests = raw_digests(folder)
    cached = read_cache(folder / CACHE_NAME, digests) if digests is not None else None
    if cached is not None:
        return cached
    tensors = decode(data_dir)
    if digests is not None:
        write_cache(folder / CACHE_NAME, digests, tensors)
    return tensors
