"""The raw folder: where FashionMNIST's IDX files live, the stamp of their digests, and the lock under which one
process writes there."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from fashion_hpo.core.files import write_atomically

DEBIAN_DATASET_DIR = Path("/usr/share/datasets/fashion-mnist")

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# Beside the raw files: the SHA-256 of each as prepared, and the lock under which one process prepares them.
STAMP_NAME = ".fashion-hpo-sha256.json"

LOCK_NAME = ".fashion-hpo.lock"

LOCK_TIMEOUT_S = 900.0  # a slow first download; a holder that dies releases the lock at once

CHUNK_SIZE = 1 << 20

REINSTALL = "`apt-get install --reinstall dataset-fashion-mnist`"


class DataError(RuntimeError):
    """The dataset cannot be found or read; the message says how to fix it."""


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
