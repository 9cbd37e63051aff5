"""`fashion-hpo storage-proxy`: Optuna's gRPC storage proxy in front of the database, with the project's methods.

One process holds the database connections for any number of workers (`--storage grpc://HOST:PORT`, see proxy.py):
Optuna's storage service, in front of Optuna's cache, plus grpc_calls' methods. PRIVATE CONTRACT: Optuna's
`optuna.storages._grpc.server.make_server(storage, host, port, thread_pool)` returns the unstarted grpc.Server that
its public run_grpc_proxy_server starts and waits on; the project adds its own methods to it before it starts.
tests/test_grpc_proxy.py fails if it changes."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import optuna
from optuna.storages import BaseStorage
from optuna.storages._grpc.server import make_server  # private: see PRIVATE CONTRACT above

from fashion_hpo.storage.grpc_calls import (
    CREATE_TRIAL,
    HOLD_LOCK,
    RECORD_HEARTBEAT,
    SERVICE,
    STALE_TRIALS,
    STUDY_FULL,
    Message,
    decode,
    encode,
)
from fashion_hpo.storage.outage import StorageLost
from fashion_hpo.storage.rdb import BudgetedStorage, StudyFull, lock_engine, named_lock

T = TypeVar("T")


class ProxiedStorage(BudgetedStorage):
    """The database behind the proxy. Its workers differ in --n-trials and --grace-period, so each request that needs
    one brings its own, which the storage holds to while it serves that request (such requests, one at a time)."""

    def __init__(self, url: str) -> None:
        # Placeholders: every budget or stale-trial request sets the value it is served with.
        super().__init__(url, max_trials=0, heartbeat_interval=1, grace_period=2, on_stale=None)
        self.url = url
        self.per_request = threading.Lock()

    def create_trial(self, cache: BaseStorage, study_id: int, max_trials: int) -> int:
        """A new trial through Optuna's cache `cache` (which must know it), if the study has fewer than max_trials."""
        with self.per_request:
            self.max_trials = max_trials
            return cache.create_new_trial(study_id)

    def stale_trial_ids(self, study_id: int, grace_period: int) -> list[int]:
        """The study's running trials whose heartbeats stopped `grace_period` seconds ago or longer."""
        with self.per_request:
            self.grace_period = grace_period
            return self._get_stale_trial_ids(study_id)


class Methods:
    """The project's methods, served from the storage behind the proxy (see grpc_calls)."""

    def __init__(self, storage: ProxiedStorage, cache: BaseStorage) -> None:
        self.storage, self.cache = storage, cache
        # Names of the locks this proxy's workers hold: a second worker asking for one is told to ask again.
        self.held: set[str] = set()
        self.held_guard = threading.Lock()

    def create_trial(self, request: Message, context: grpc.ServicerContext) -> Message:
        """CREATE_TRIAL: a trial within the worker's budget, or STUDY_FULL with how many trials still run."""
        try:
            return {"trial_id": self.storage.create_trial(self.cache, request["study_id"], request["max_trials"])}
        except StudyFull as full:
            context.abort(STUDY_FULL, json.dumps({"running": full.running}))
            raise  # abort raises; this line is never reached

    def record_heartbeat(self, request: Message, context: grpc.ServicerContext) -> Message:
        """RECORD_HEARTBEAT: a running trial's heartbeat, in the database."""
        self.storage.record_heartbeat(request["trial_id"])
        return {}

    def stale_trials(self, request: Message, context: grpc.ServicerContext) -> Message:
        """STALE_TRIALS: the ids of the study's trials whose heartbeats stopped for the worker's grace period."""
        return {"trial_ids": self.storage.stale_trial_ids(request["study_id"], request["grace_period"])}

    def hold_lock(self, request: Message, context: grpc.ServicerContext) -> Iterator[Message]:
        """HOLD_LOCK: {"held": true} and the named lock held until the call ends, or {"held": false} at once when
        another worker of this proxy holds it (only the first waits, on the database, for workers elsewhere)."""
        name = request["name"]
        with self.held_guard:
            busy = name in self.held
            self.held.add(name)
        if busy:
            yield {"held": False}
            return
        try:
            ended = threading.Event()
            if not context.add_callback(ended.set):
                return  # the call ended already: grpc runs no callback then, and nothing would release the lock
            with named_lock(lock_engine(self.storage.url), name):
                yield {"held": True}
                ended.wait()
        finally:
            with self.held_guard:
                self.held.discard(name)

    def handler(self) -> grpc.GenericRpcHandler:
        """The methods as one generic gRPC service."""
        codec = {"request_deserializer": decode, "response_serializer": encode}
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                CREATE_TRIAL: grpc.unary_unary_rpc_method_handler(self.create_trial, **codec),
                RECORD_HEARTBEAT: grpc.unary_unary_rpc_method_handler(self.record_heartbeat, **codec),
                STALE_TRIALS: grpc.unary_unary_rpc_method_handler(self.stale_trials, **codec),
                HOLD_LOCK: grpc.unary_stream_rpc_method_handler(self.hold_lock, **codec),
            },
        )


class RequestThreads(ThreadPoolExecutor):
    """The proxy's request threads. A request that outlasts --storage-outage-timeout ends in StorageLost, which gRPC
    never answers (it catches Exceptions only), so its worker would wait for ever: it is kept here instead, and stops
    the proxy (`serve`), whose workers then stop in one line each, as when the proxy is gone."""

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers=max_workers)
        self.lost: StorageLost | None = None
        self.stopping = threading.Event()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Run `fn` on a request thread; StorageLost stops the proxy."""

        def guarded() -> T:
            try:
                return fn(*args, **kwargs)
            except StorageLost as lost:
                self.lost = lost
                self.stopping.set()
                raise

        return super().submit(guarded)


@dataclass(frozen=True)
class Proxy:
    """A running proxy: its gRPC server and its request threads."""

    server: grpc.Server
    threads: RequestThreads

    def serve(self) -> None:
        """Serve until Ctrl-C (KeyboardInterrupt) or the database stays away past the window (StorageLost)."""
        try:
            while not self.threads.stopping.wait(1.0):
                pass
        finally:
            self.server.stop(grace=None)
        if self.threads.lost is not None:
            raise self.threads.lost


def start_proxy(url: str, host: str, port: int, threads: int, outage_timeout: float) -> Proxy:
    """Start the proxy for the database at `url` on host:port, serving `threads` requests at once and riding out a
    database outage of up to `outage_timeout` seconds."""
    storage = ProxiedStorage(url)
    storage.outage.window_s = outage_timeout
    cache = optuna.storages.get_storage(storage)  # Optuna's cache: a worker's reads fetch only what changed
    pool = RequestThreads(threads)
    server = make_server(cache, host, port, pool)
    server.add_generic_rpc_handlers((Methods(storage, cache).handler(),))
    server.start()
    return Proxy(server, pool)
