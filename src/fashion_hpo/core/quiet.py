"""Warnings about choices already made: Optuna marks the features this project relies on (heartbeats, retries of
stale trials, constant liar, metric names) experimental, and would warn at every use."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import optuna


@contextmanager
def experimental_features() -> Iterator[None]:
    """Within: Optuna's ExperimentalWarning is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        yield
