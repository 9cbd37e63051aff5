"""Files written whole or not at all, and their SHA-256."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's content, in hex (as `sha256sum` prints it)."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


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
