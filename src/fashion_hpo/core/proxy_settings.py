"""Settings of `fashion-hpo storage-proxy`, declared once like RunSettings."""

from __future__ import annotations

from dataclasses import dataclass

from fashion_hpo.core.settings import DEFAULT_STORAGE, OUTAGE_TIMEOUT_S, STORAGE_ENV, count, setting

PROXY = "storage-proxy"
# Optuna's own default port for its storage proxy.
DEFAULT_PROXY_PORT = 13000


@dataclass(frozen=True)
class ProxySettings:
    """Which database `fashion-hpo storage-proxy` serves, where it listens, and how many requests it serves at once."""

    storage: str = setting(
        DEFAULT_STORAGE,
        f"the Optuna database the proxy serves to its workers (who give --storage grpc://HOST:PORT); empty = "
        f"${STORAGE_ENV}, else {DEFAULT_STORAGE}",
        commands=(PROXY,),
        shown="",
        mlproject=False,
    )
    host: str = setting(
        "127.0.0.1",
        "address to listen on; 0.0.0.0 = every interface (the proxy has no TLS and no login: a private network only)",
        commands=(PROXY,),
        mlproject=False,
    )
    port: int = setting(DEFAULT_PROXY_PORT, "port to listen on", parse=count(1), commands=(PROXY,), mlproject=False)
    threads: int = setting(
        10,
        "workers' requests served at once (Optuna's default); the database sees at most 15 connections from the "
        "proxy (SQLAlchemy's pool), plus one per named lock a worker holds",
        parse=count(1),
        commands=(PROXY,),
        mlproject=False,
    )
    storage_outage_timeout: int = setting(
        OUTAGE_TIMEOUT_S,
        "seconds the proxy waits for its database through an outage before it stops (its workers then stop too); "
        "rerun them all once it is back",
        parse=count(0),
        commands=(PROXY,),
        mlproject=False,
    )
