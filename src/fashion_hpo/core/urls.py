"""Database and tracking URLs: redacting their passwords, finding a SQLite file."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import sqlalchemy.engine


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))


def sqlite_file(url: str) -> str | None:
    """The database file of a SQLite URL; None for other databases and for in-memory SQLite."""
    if not url.startswith("sqlite"):
        return None
    database = sqlalchemy.engine.make_url(url).database
    return database if database and database != ":memory:" else None


PROXY_SCHEME = "grpc"


def proxy_address(url: str) -> tuple[str, int] | None:
    """The host and port of a storage proxy's URL (`grpc://HOST:PORT`); None for a database URL.

    Raises ValueError for a `grpc://` URL without a host or a port."""
    parts = urlsplit(url)
    if parts.scheme != PROXY_SCHEME:
        return None
    try:
        port = parts.port
    except ValueError:  # a port that is no number
        port = None
    if not parts.hostname or port is None or parts.path.strip("/") or parts.query:
        raise ValueError(f"a storage proxy's URL is {PROXY_SCHEME}://HOST:PORT, not {url!r}")
    return parts.hostname, port
