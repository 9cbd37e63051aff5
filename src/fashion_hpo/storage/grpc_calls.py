"""The project's own gRPC methods, served beside Optuna's storage service by `fashion-hpo storage-proxy`.

Optuna's service has no method for the study-wide budget, heartbeats or a named lock; these few are served as a
generic service whose messages are JSON. This module names them and holds a named lock through one of them (a
worker behind the proxy reaches no database for the locks that rdb.named_lock takes)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

SERVICE = "fashion_hpo.StorageProxy"
CREATE_TRIAL, RECORD_HEARTBEAT, STALE_TRIALS, HOLD_LOCK = "CreateTrial", "RecordHeartbeat", "StaleTrials", "HoldLock"
# The status a full study's CreateTrial ends with; its details are {"running": N}.
STUDY_FULL = grpc.StatusCode.RESOURCE_EXHAUSTED
# How long a worker waits before asking again for a named lock another worker holds.
LOCK_POLL_S = 0.2

Message = dict[str, Any]


def encode(message: Message) -> bytes:
    """A message as sent."""
    return json.dumps(message).encode()


def decode(data: bytes) -> Message:
    """A message as received."""
    return dict(json.loads(data))


def method(name: str) -> str:
    """The full name of one of the service's methods."""
    return f"/{SERVICE}/{name}"


def unary_call(channel: grpc.Channel, name: str) -> Callable[[Message], Message]:
    """A one-request, one-reply method of the service on `channel`."""
    return channel.unary_unary(method(name), request_serializer=encode, response_deserializer=decode)


@contextmanager
def proxy_lock(address: tuple[str, int], name: str) -> Iterator[None]:
    """Hold the proxy's named lock `name` (rdb.named_lock on its database) while the block runs.

    The lock is held for as long as one HOLD_LOCK call stays open: closing the call releases it, and so does the
    worker's death, which ends the call. A lock another worker holds is asked for again every LOCK_POLL_S, so that
    waiting workers hold none of the proxy's threads."""
    with grpc.insecure_channel(f"{address[0]}:{address[1]}") as channel:
        hold = channel.unary_stream(method(HOLD_LOCK), request_serializer=encode, response_deserializer=decode)
        while True:
            call = hold({"name": name})
            if next(call)["held"]:
                break
            call.cancel()
            time.sleep(LOCK_POLL_S)
        try:
            yield
        finally:
            call.cancel()
