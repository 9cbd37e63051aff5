"""FashionMNIST from Debian's dataset-fashion-mnist: install, split, and clear errors for bad files."""

from __future__ import annotations

import functools
import gzip
import hashlib
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
import torch
from torchvision.datasets import FashionMNIST

from fashion_hpo.core.files import file_sha256
from fashion_hpo.data import cache, files
from fashion_hpo.data.files import check_raw_files, ensure_raw_files
from fashion_hpo.data.raw import DEBIAN_DATASET_DIR, LOCK_NAME, RAW_FILES, STAMP_NAME, DataError, raw_dir, read_stamp
from fashion_hpo.data.splits import FashionData, Split, batches, load_data, scaled
from fashion_hpo.model.architectures import MLPConfig, TrialConfig
from fashion_hpo.training.loop import build_and_fit


@pytest.fixture(scope="module")
def data_dir(real_data_dir: Path) -> Path:
    """A data folder filled from the Debian package (which CI installs)."""
    return real_data_dir


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
    assert real_data.train.images.dtype == torch.uint8, "pixels are kept as bytes, scaled a batch at a time"
    images = scaled(real_data.train.images)
    assert images.dtype == torch.float32 and images.shape[1:] == (1, 28, 28)
    assert images.min().item() >= 0.0 and images.max().item() <= 1.0
    assert abs(images.mean().item() - 0.2860) < 0.01, "FashionMNIST's pixel mean"
    train_rows = {row.tobytes() for row in real_data.train.images[:2000].flatten(1).numpy()}
    assert not any(row.tobytes() in train_rows for row in real_data.val.images.flatten(1).numpy())
    assert torch.bincount(real_data.test.labels).tolist() == [1000] * 10


@pytest.mark.slow  # loads the real dataset twice more
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


def test_pixels_kept_as_bytes_train_exactly_as_scaled_floats() -> None:
    """Scaling a batch at a time changes no number: a model trained on uint8 pixels matches one trained on the same
    images scaled up front, to the bit."""
    generator = torch.Generator().manual_seed(0)
    pixels = Split(
        torch.randint(0, 256, (256, 1, 28, 28), dtype=torch.uint8, generator=generator), torch.arange(256) % 10
    )
    floats = Split(pixels.images.to(torch.float32) / 255.0, pixels.labels)
    config = TrialConfig(MLPConfig((64,), (0.0,)), "Adam", 1e-3, 64, 0.0, 0.0)
    runs = [build_and_fit(config, split, split, epochs=2, seed=1) for split in (pixels, floats)]
    assert [r.val.loss for r in runs[0].history] == [r.val.loss for r in runs[1].history]
    assert all(
        torch.equal(a, b)
        for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values(), strict=True)
    )


def test_missing_data_names_both_remedies(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        ensure_raw_files(tmp_path / "data", source_dir=tmp_path / "no-such-package", download=False)
    assert "apt-get install dataset-fashion-mnist" in str(err.value)
    assert "download" in str(err.value)


def write_idx_archives(folder: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> Path:
    """Four tiny `.gz` IDX archives laid out like Debian's package: random pixels and labels, valid headers."""
    generator = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        pixels = torch.randint(0, 256, (n * 28 * 28,), dtype=torch.uint8, generator=generator).numpy().tobytes()
        labels = torch.randint(0, 10, (n,), dtype=torch.uint8, generator=generator).numpy().tobytes()
        images = (2051).to_bytes(4, "big") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + pixels
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images, compresslevel=1))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress((2049).to_bytes(4, "big") + n.to_bytes(4, "big") + labels)
        )
    return folder


@pytest.fixture
def archives(tmp_path: Path) -> Path:
    """A source folder of tiny synthetic archives."""
    return write_idx_archives(tmp_path / "source")


def prepared(data_dir: Path, source: Path) -> Path:
    """`data_dir` filled from `source` and checked, as a study's start does; its raw folder."""
    ensure_raw_files(data_dir, source_dir=source, download=False)
    check_raw_files(data_dir)
    return raw_dir(data_dir)


def damage_middle(path: Path) -> None:
    """Overwrite bytes in the middle of a file in place, keeping its size (and so its IDX structure)."""
    size = path.stat().st_size
    with open(path, "r+b") as file:
        file.seek(size // 2)
        original = file.read(8)
        file.seek(size // 2)
        file.write(bytes(b ^ 0xFF for b in original))
    assert path.stat().st_size == size


def prepare_after_barrier(barrier: Barrier, data_dir: Path, source: Path) -> None:
    """One of several processes starting at the same instant on the same empty data folder."""
    barrier.wait(timeout=30)
    prepared(data_dir, source)


def test_processes_started_together_on_an_empty_folder_all_succeed_with_identical_files(
    tmp_path: Path,
) -> None:
    source = write_idx_archives(tmp_path / "source", n_train=2000, n_test=500)
    context = multiprocessing.get_context("fork")  # no re-import of torch per process
    barrier = context.Barrier(5)
    shared = tmp_path / "shared"
    workers = [context.Process(target=prepare_after_barrier, args=(barrier, shared, source)) for _ in range(5)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0] * 5
    alone = prepared(tmp_path / "alone", source)
    for name in RAW_FILES:
        assert (raw_dir(shared) / name).read_bytes() == (alone / name).read_bytes(), name
    assert sorted(path.name for path in raw_dir(shared).iterdir()) == sorted([*RAW_FILES, STAMP_NAME, LOCK_NAME])


def test_file_damaged_in_its_middle_is_named_with_its_remedy(archives: Path, tmp_path: Path) -> None:
    folder = prepared(tmp_path / "data", archives)
    damage_middle(folder / "train-images-idx3-ubyte")
    with pytest.raises(DataError) as err:
        check_raw_files(tmp_path / "data")
    message = str(err.value)
    assert "\n" not in message and "train-images-idx3-ubyte" in message
    assert "SHA-256" in message and "delete it and rerun" in message


def test_stamp_spares_hashing_until_a_file_changes(
    archives: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = prepared(tmp_path / "data", archives)
    hashed: list[str] = []
    monkeypatch.setattr(files, "file_sha256", lambda path: hashed.append(path.name) or file_sha256(path))
    an_hour_ago = time.time_ns() - 3600 * 10**9
    for name in RAW_FILES:  # files older than the stamp, whatever the file system's clock granularity
        os.utime(folder / name, ns=(an_hour_ago, an_hour_ago))
    check_raw_files(tmp_path / "data")
    assert sorted(hashed) == sorted(RAW_FILES), "modification times changed: every file is hashed again"
    hashed.clear()
    check_raw_files(tmp_path / "data")
    assert hashed == [], "the stamp vouches for unchanged files"
    os.utime(folder / "t10k-labels-idx1-ubyte", ns=(an_hour_ago + 10**9, an_hour_ago + 10**9))
    check_raw_files(tmp_path / "data")
    assert hashed == ["t10k-labels-idx1-ubyte"], "only the touched file is hashed, and it passes"
    damage_middle(folder / "t10k-images-idx3-ubyte")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        check_raw_files(tmp_path / "data")


def test_files_copied_in_without_a_stamp_are_recorded_then_guarded(archives: Path, tmp_path: Path) -> None:
    folder = prepared(tmp_path / "original", archives)
    copied = raw_dir(tmp_path / "copied")
    copied.mkdir(parents=True)
    for name in RAW_FILES:
        shutil.copyfile(folder / name, copied / name)
    check_raw_files(tmp_path / "copied")
    recorded = read_stamp(copied).files
    assert {name: stamp.sha256 for name, stamp in recorded.items()} == {
        name: file_sha256(folder / name) for name in RAW_FILES
    }, "the first check records their digests"
    damage_middle(copied / "train-labels-idx1-ubyte")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*SHA-256"):
        check_raw_files(tmp_path / "copied")


def test_damaged_archive_is_named_and_leaves_no_file(archives: Path, tmp_path: Path) -> None:
    archive = archives / "train-images-idx3-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:-100])
    with pytest.raises(DataError) as err:
        ensure_raw_files(tmp_path / "data", source_dir=archives, download=False)
    assert str(archive) in str(err.value) and "--reinstall dataset-fashion-mnist" in str(err.value)
    assert not (raw_dir(tmp_path / "data") / "train-images-idx3-ubyte").exists()
    assert not list(raw_dir(tmp_path / "data").glob("*.tmp")), "no temporary file left behind"


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves a folder without an access log."""

    def log_message(self, format: str, *args: object) -> None:
        """No access log on the test's stderr."""


@pytest.fixture
def archive_server(archives: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """torchvision's FashionMNIST download pointed at the synthetic archives, served on the loopback."""
    handler = functools.partial(QuietHandler, directory=str(archives))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        monkeypatch.setattr(FashionMNIST, "mirrors", [f"http://127.0.0.1:{server.server_address[1]}/"])
        resources = [
            (f"{name}.gz", hashlib.md5((archives / f"{name}.gz").read_bytes()).hexdigest()) for name in RAW_FILES
        ]
        monkeypatch.setattr(FashionMNIST, "resources", resources)
        yield archives
        server.shutdown()
        thread.join(timeout=10)


def test_download_fallback_installs_complete_recorded_files(archive_server: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ensure_raw_files(data_dir, source_dir=tmp_path / "no-debian-package", download=True)
    folder = raw_dir(data_dir)
    assert sorted(path.name for path in folder.iterdir()) == sorted([*RAW_FILES, STAMP_NAME, LOCK_NAME])
    assert [path.name for path in data_dir.iterdir()] == ["FashionMNIST"], "the download folder is removed"
    for name in RAW_FILES:
        assert (folder / name).read_bytes() == gzip.decompress((archive_server / f"{name}.gz").read_bytes())
    damage_middle(folder / "train-images-idx3-ubyte")
    with pytest.raises(DataError, match="SHA-256"):
        check_raw_files(data_dir)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [(lambda b: b"garbage", "magic number"), (lambda b: b[:1000], "truncated")],
)
def test_corrupt_idx_file_is_named_with_its_remedy(archives: Path, tmp_path: Path, damage, problem: str) -> None:
    broken = raw_dir(tmp_path / "data")
    broken.mkdir(parents=True)
    for name in RAW_FILES:
        content = gzip.decompress((archives / f"{name}.gz").read_bytes())
        (broken / name).write_bytes(damage(content) if name == "train-images-idx3-ubyte" else content)
    with pytest.raises(DataError) as err:
        load_data(tmp_path / "data", seed=0)
    message = str(err.value)
    assert "train-images-idx3-ubyte" in message and problem in message and "delete it" in message


def test_decoded_splits_are_cached_and_later_starts_decode_nothing(
    archives: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared(tmp_path / "data", archives)
    first = cache.read_splits(tmp_path / "data")
    assert (raw_dir(tmp_path / "data") / cache.CACHE_NAME).is_file()
    monkeypatch.setattr(cache, "decode", lambda data_dir: pytest.fail("decoded again despite the cache"))
    again = cache.read_splits(tmp_path / "data")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert first["train_images"].shape == (40, 28, 28) and first["test_labels"].shape == (20,)


def test_a_cache_made_from_other_raw_files_is_not_used(archives: Path, tmp_path: Path) -> None:
    prepared(tmp_path / "first", archives)
    cache.read_splits(tmp_path / "first")
    other = prepared(tmp_path / "second", write_idx_archives(tmp_path / "other-source", seed=1))
    shutil.copyfile(raw_dir(tmp_path / "first") / cache.CACHE_NAME, other / cache.CACHE_NAME)
    loaded = cache.read_splits(tmp_path / "second")
    assert torch.equal(loaded["train_images"], cache.decode(tmp_path / "second")["train_images"])
    assert cache.read_cache(other / cache.CACHE_NAME, cache.raw_digests(other) or {}) is not None, "replaced"


def test_a_damaged_cache_is_decoded_again_and_replaced(archives: Path, tmp_path: Path) -> None:
    folder = prepared(tmp_path / "data", archives)
    cache.read_splits(tmp_path / "data")
    (folder / cache.CACHE_NAME).write_bytes(b"half a file")
    loaded = cache.read_splits(tmp_path / "data")
    assert torch.equal(loaded["test_labels"], cache.decode(tmp_path / "data")["test_labels"])
    assert cache.read_cache(folder / cache.CACHE_NAME, cache.raw_digests(folder) or {}) is not None


@pytest.mark.slow  # a fresh interpreter importing torch
def test_a_start_with_the_cache_does_not_import_torchvision(data_dir: Path, real_data: FashionData) -> None:
    script = (
        "import sys; from pathlib import Path; from fashion_hpo.data.splits import load_test_split; "
        f"test = load_test_split(Path({str(data_dir)!r})); print(len(test), 'torchvision' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["10000", "False"]


def test_a_cache_of_another_format_or_shape_is_decoded_again(archives: Path, tmp_path: Path) -> None:
    folder = prepared(tmp_path / "data", archives)
    tensors = cache.read_splits(tmp_path / "data")
    digests = cache.raw_digests(folder) or {}
    for damaged in (
        {**tensors, "train_images": tensors["train_images"].float()},
        {"train_images": tensors["train_images"]},
    ):
        cache.write_cache(folder / cache.CACHE_NAME, digests, damaged)
        assert cache.read_cache(folder / cache.CACHE_NAME, digests) is None
    torch.save({"format": cache.CACHE_FORMAT + 1, "digests": digests, "tensors": tensors}, folder / cache.CACHE_NAME)
    assert cache.read_cache(folder / cache.CACHE_NAME, digests) is None
    assert torch.equal(cache.read_splits(tmp_path / "data")["test_images"], tensors["test_images"])
