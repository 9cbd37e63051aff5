"""FashionMNIST: find the raw files, load them once, split, and batch from in-memory tensors."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import secrets
import shutil
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout

DEBIAN_DATASET_DIR = Path("/usr/share/datasets/fashion-mnist")
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
TRAIN_SIZE, VAL_SIZE = 50_000, 10_000
# Beside the raw files: the SHA-256 of each as prepared, and the lock under which one process prepares them.
STAMP_NAME = ".fashion-hpo-sha256.json"
# The decoded splits, saved with the digests of the raw files they came from: a later start loads them in a tenth of
# a second instead of importing torchvision and parsing the IDX files (benchmarks/startup.py).
CACHE_NAME = ".fashion-hpo-tensors.pt"
CACHE_FORMAT = 1  # raised whenever what the cache holds changes: a cache of another format is decoded again
LOCK_NAME = ".fashion-hpo.lock"
LOCK_TIMEOUT_S = 900.0  # a slow first download; a holder that dies releases the lock at once
CHUNK_SIZE = 1 << 20
REINSTALL = "`apt-get install --reinstall dataset-fashion-mnist`"


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


@dataclass(frozen=True)
class FileStamp:
    """What a raw file was when its content was last hashed: its SHA-256, size and modification time."""

    sha256: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Stamp:
    """The stamp file's records, and when the stamp was written (0 when there is none)."""

    files: dict[str, FileStamp]
    written_ns: int


def read_chunks(path: Path) -> Iterator[bytes]:
    """A file's content in chunks."""
    with open(path, "rb") as file:
        yield from iter(lambda: file.read(CHUNK_SIZE), b"")


def gunzip_chunks(source: Path) -> Iterator[bytes]:
    """A `.gz` archive's decompressed content in chunks; a damaged archive is a DataError naming it."""
    try:
        with gzip.open(source, "rb") as file:
            yield from iter(lambda: file.read(CHUNK_SIZE), b"")
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{source} is unusable ({err}): reinstall it with {REINSTALL}") from err


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's content, in hex."""
    digest = hashlib.sha256()
    for chunk in read_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def write_atomically(path: Path, chunks: Iterable[bytes]) -> str:
    """Write `chunks` to `path` through a process-unique temporary name, fsync, rename; return their SHA-256.

    Concurrent writers never share a temporary file, and readers see either no file or a complete one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    digest = hashlib.sha256()
    try:
        with open(temporary, "wb") as file:
            for chunk in chunks:
                digest.update(chunk)
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return digest.hexdigest()


def read_stamp(folder: Path) -> Stamp:
    """The stamp of a raw folder; an absent or unreadable stamp records nothing (its files are hashed anew)."""
    path = folder / STAMP_NAME
    try:
        records = json.loads(path.read_text())
        files = {name: FileStamp(**records[name]) for name in RAW_FILES if name in records}
        return Stamp(files, path.stat().st_mtime_ns)
    except (OSError, ValueError, TypeError, KeyError):
        return Stamp({}, 0)


def write_stamp(folder: Path, files: dict[str, FileStamp]) -> None:
    """Replace the stamp atomically: readers see the old stamp or the new one, never half of one."""
    content = json.dumps({name: asdict(stamp) for name, stamp in files.items()}, indent=1).encode()
    write_atomically(folder / STAMP_NAME, [content])


def stamp_of(path: Path, sha256: str) -> FileStamp:
    """The record of a file whose content hashes to `sha256`."""
    status = path.stat()
    return FileStamp(sha256, status.st_size, status.st_mtime_ns)


def unhashed(folder: Path, stamp: Stamp) -> list[str]:
    """The raw files whose content must be hashed: unrecorded, changed since hashed, or changed in the same clock
    tick as the stamp was written (its mtime not older than the stamp's: a change then would leave the mtime)."""
    stale = []
    for name in RAW_FILES:
        status, known = (folder / name).stat(), stamp.files.get(name)
        if (
            known is None
            or (status.st_size, status.st_mtime_ns) != (known.size, known.mtime_ns)
            or status.st_mtime_ns >= stamp.written_ns
        ):
            stale.append(name)
    return stale


@contextmanager
def preparation_lock(folder: Path) -> Iterator[None]:
    """Hold the raw folder's lock: one process at a time writes its files or its stamp, the others wait.

    A read-only folder takes no lock: nothing will be written there."""
    if not os.access(folder, os.W_OK):
        yield
        return
    lock = FileLock(str(folder / LOCK_NAME), timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise DataError(
            f"another process has held {lock.lock_file} for {LOCK_TIMEOUT_S:.0f} s while preparing the data; "
            "wait for it to finish or stop it, then rerun"
        ) from None
    try:
        yield
    finally:
        lock.release()


def install_files(folder: Path, chunks_of: Callable[[str], Iterable[bytes]]) -> None:
    """Write each missing raw file from `chunks_of(name)`, hashing while writing, and record it in the stamp."""
    files = read_stamp(folder).files
    for name in RAW_FILES:
        if not (folder / name).is_file():
            files[name] = stamp_of(folder / name, write_atomically(folder / name, chunks_of(name)))
    write_stamp(folder, files)


def install_from_archives(data_dir: Path, source_dir: Path = DEBIAN_DATASET_DIR) -> bool:
    """Decompress the missing IDX files from the `.gz` archives of `source_dir`; False if any archive is missing.

    The caller holds `preparation_lock` on the raw folder."""
    if not all((source_dir / f"{name}.gz").is_file() for name in RAW_FILES):
        return False
    install_files(raw_dir(data_dir), lambda name: gunzip_chunks(source_dir / f"{name}.gz"))
    return True


def download_with_torchvision(data_dir: Path) -> bool:
    """Download with torchvision (which checks each archive's MD5) into a private folder, then install the files
    from there; False when the download fails. The caller holds `preparation_lock` on the raw folder."""
    from torchvision.datasets import FashionMNIST

    scratch = Path(data_dir) / f".download-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        FashionMNIST(str(scratch), train=True, download=True)
        install_files(raw_dir(data_dir), lambda name: read_chunks(raw_dir(scratch) / name))
        return True
    except Exception:  # no network, a mirror down, an MD5 mismatch: the caller names the remedies
        return False
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def ensure_raw_files(data_dir: Path, source_dir: Path = DEBIAN_DATASET_DIR, download: bool = True) -> None:
    """Make the raw files available: already there, else from Debian's package, else torchvision's download.

    Safe when several processes (or machines sharing the folder) start at once: under the raw folder's lock one
    prepares the files and the others, waiting, find them there."""
    if has_raw_files(data_dir):
        return
    target = raw_dir(data_dir)
    try:
        target.mkdir(parents=True, exist_ok=True)
        with preparation_lock(target):
            if has_raw_files(data_dir) or install_from_archives(data_dir, source_dir):
                return
            if download and download_with_torchvision(data_dir):
                return
    except OSError as err:
        raise DataError(f"cannot write FashionMNIST into {target} ({err}); choose a writable --data-dir") from err
    raise DataError(
        f"FashionMNIST not found in {target}: install it with "
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


def unusable(path: Path, problem: str) -> DataError:
    """The one-line error for a damaged raw file: its name, what is wrong, and the remedy."""
    return DataError(
        f"{path} is unusable ({problem}): delete it and rerun to restore it from {DEBIAN_DATASET_DIR} "
        f"({REINSTALL} if that copy is damaged too)"
    )


def verify_contents(folder: Path) -> None:
    """Hash the files the stamp cannot vouch for; a digest unlike the recorded one is a damaged file.

    A file with no record (copied in by hand, or left by an older version) has passed the IDX structure check and
    has nothing to be compared with: its digest is recorded, so that any later change to it is caught. Files this
    module writes are recorded as they are written (torchvision's download has checked its archives' MD5s)."""
    stamp = read_stamp(folder)  # read again under the lock: another process may have just hashed them
    files = dict(stamp.files)
    for name in unhashed(folder, stamp):
        digest, known = file_sha256(folder / name), stamp.files.get(name)
        if known is not None and digest != known.sha256:
            raise unusable(folder / name, "content differs from when it was prepared: SHA-256 mismatch")
        files[name] = stamp_of(folder / name, digest)
    if files != stamp.files and os.access(folder, os.W_OK):
        write_stamp(folder, files)


def check_raw_files(data_dir: Path) -> None:
    """Fail with the file's name and the remedy when a raw IDX file is corrupt, whatever the damage.

    The IDX structure (magic number, size) is checked on every load; the content by SHA-256 only for files changed
    since the stamp recorded them, so a load whose files match the stamp reads nothing but their headers."""
    folder = raw_dir(data_dir)
    for name in RAW_FILES:
        problem = idx_problem(folder / name)
        if problem is not None:
            raise unusable(folder / name, problem)
    if unhashed(folder, read_stamp(folder)):
        with preparation_lock(folder):
            verify_contents(folder)


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


def as_split(images: torch.Tensor, labels: torch.Tensor) -> Split:
    """uint8 images (N, 28, 28) and labels as a Split of scaled float32 images (N, 1, 28, 28)."""
    return Split(images.unsqueeze(1).to(torch.float32).div_(255.0), labels)


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
    tensors = read_splits(Path(data_dir))
    return as_split(tensors["test_images"], tensors["test_labels"])
