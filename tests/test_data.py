"""FashionMNIST from Debian's dataset-fashion-mnist: install, split, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fashion_hpo.data import (
    DEBIAN_DATASET_DIR,
    RAW_FILES,
    DataError,
    FashionData,
    batches,
    ensure_raw_files,
    load_data,
    raw_dir,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder filled from the Debian package (which CI installs)."""
    folder = tmp_path_factory.mktemp("data")
    ensure_raw_files(folder, download=False)
    return folder


@pytest.fixture(scope="module")
def real_data(data_dir: Path) -> FashionData:
    return load_data(data_dir, seed=0)


def test_raw_files_are_decompressed_from_the_debian_package(data_dir: Path) -> None:
    assert DEBIAN_DATASET_DIR.is_dir(), "install it: apt-get install dataset-fashion-mnist"
    sizes = {name: (raw_dir(data_dir) / name).stat().st_size for name in RAW_FILES}
    assert sizes["train-images-idx3-ubyte"] == 16 + 60_000 * 28 * 28
    assert sizes["t10k-labels-idx1-ubyte"] == 8 + 10_000


def test_splits_are_50k_10k_10k_scaled_and_disjoint(real_data: FashionData) -> None:
    assert (len(real_data.train), len(real_data.val), len(real_data.test)) == (50_000, 10_000, 10_000)
    assert len(real_data.full_train) == 60_000
    images = real_data.train.images
    assert images.dtype == torch.float32 and images.shape[1:] == (1, 28, 28)
    assert images.min().item() >= 0.0 and images.max().item() <= 1.0
    assert abs(images.mean().item() - 0.2860) < 0.01, "FashionMNIST's pixel mean"
    train_rows = {row.tobytes() for row in real_data.train.images[:2000].flatten(1).numpy()}
    assert not any(row.tobytes() in train_rows for row in real_data.val.images.flatten(1).numpy())
    assert torch.bincount(real_data.test.labels).tolist() == [1000] * 10


def test_split_is_fixed_by_the_seed(data_dir: Path, real_data: FashionData) -> None:
    again, other = load_data(data_dir, seed=0), load_data(data_dir, seed=1)
    assert torch.equal(again.val.labels, real_data.val.labels)
    assert not torch.equal(other.val.labels, real_data.val.labels)
    assert torch.equal(other.test.labels, real_data.test.labels), "the test set never moves"


def test_batches_cover_the_split_once_per_epoch(real_data: FashionData) -> None:
    split = real_data.val.head(1000)
    seen = torch.cat([labels for _, labels in batches(split, 128, torch.Generator().manual_seed(0))])
    assert len(seen) == 1000
    assert torch.equal(seen.sort().values, split.labels.sort().values)
    assert not torch.equal(seen, split.labels), "shuffled"


def test_missing_data_names_both_remedies(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        ensure_raw_files(tmp_path / "data", source_dir=tmp_path / "no-such-package", download=False)
    assert "apt-get install dataset-fashion-mnist" in str(err.value)
    assert "download" in str(err.value)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [(lambda b: b"garbage", "magic number"), (lambda b: b[:100_000], "truncated")],
)
def test_corrupt_idx_file_is_named_with_its_remedy(data_dir: Path, tmp_path: Path, damage, problem: str) -> None:
    broken = raw_dir(tmp_path)
    broken.mkdir(parents=True)
    for name in RAW_FILES:
        content = (raw_dir(data_dir) / name).read_bytes()
        (broken / name).write_bytes(damage(content) if name == "train-images-idx3-ubyte" else content)
    with pytest.raises(DataError) as err:
        load_data(tmp_path, seed=0)
    message = str(err.value)
    assert "train-images-idx3-ubyte" in message and problem in message and "delete it" in message
