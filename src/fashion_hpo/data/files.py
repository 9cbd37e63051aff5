"""FashionMNIST's raw files put in place (from Debian's package, else torchvision's download) and checked; safe when
many processes start at once."""

from __future__ import annotations

import gzip
import os
import secrets
import shutil
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from fashion_hpo.core.files import file_sha256, write_atomically
from fashion_hpo.data.raw import (
    CHUNK_SIZE,
    DEBIAN_DATASET_DIR,
    RAW_FILES,
    REINSTALL,
    DataError,
    has_raw_files,
    preparation_lock,
    raw_dir,
    read_chunks,
    read_stamp,
    stamp_of,
    unhashed,
    write_stamp,
)


def gunzip_chunks(source: Path) -> Iterator[bytes]:
    """A `.gz` archive's decompressed content in chunks; a damaged archive is a DataError naming it."""
    try:
        with gzip.open(source, "rb") as file:
            yield from iter(lambda: file.read(CHUNK_SIZE), b"")
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{source} is unusable ({err}): reinstall it with {REINSTALL}") from err


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
