"""Where a trial's time goes: a clock that charges each call to the innermost of sampler, storage, tracking or
training (main thread only: the heartbeat thread is not the trial's), and cycles from one trial's start to the next."""

from __future__ import annotations

import functools
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest import mock

import mlflow
import optuna
from mlflow.tracking import MlflowClient
from optuna.storages._cached_storage import _CachedStorage  # private, benchmark only: the study's own storage

import fashion_hpo.search.objective as objective_module
from fashion_hpo.search.samplers import TrialSeededSampler
from fashion_hpo.storage.rdb import BudgetedStorage

CATEGORIES = ("sampler", "storage", "tracking")
SAMPLER_METHODS = (
    "before_trial",
    "infer_relative_search_space",
    "sample_relative",
    "sample_independent",
    "after_trial",
)
FLUENT = ("start_run", "end_run", "log_inputs", "log_params", "log_metrics", "set_tags")


class Clock:
    """Seconds per category; a nested call's time goes to its own category, not its caller's."""

    def __init__(self) -> None:
        self.totals: defaultdict[str, float] = defaultdict(float)
        self.stack: list[list[Any]] = []

    def wrap(self, category: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """`function`, its main-thread time charged to `category`."""

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is not threading.main_thread():
                return function(*args, **kwargs)
            self.enter(category)
            try:
                return function(*args, **kwargs)
            finally:
                self.leave()

        return timed

    def enter(self, category: str) -> None:
        """Pause the caller's category and start `category`."""
        now = time.perf_counter()
        if self.stack:
            self.totals[self.stack[-1][0]] += now - self.stack[-1][1]
        self.stack.append([category, now])

    def leave(self) -> None:
        """Stop the innermost category and resume its caller's."""
        now = time.perf_counter()
        category, since = self.stack.pop()
        self.totals[category] += now - since
        if self.stack:
            self.stack[-1][1] = now


class Cycles:
    """Per trial, from its objective's start to the next one's: wall seconds, each category's, and the gap between
    the objective's end and the next start."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.rows: list[dict[str, float]] = []
        self.start: tuple[float, dict[str, float]] | None = None
        self.ended = 0.0

    def mark_start(self) -> None:
        """A trial's objective starts: close the previous cycle."""
        now, totals = time.perf_counter(), dict(self.clock.totals)
        if self.start is not None:
            since, before = self.start
            row = {name: totals.get(name, 0.0) - before.get(name, 0.0) for name in (*CATEGORIES, "training")}
            row["cycle"], row["gap"] = now - since, now - self.ended
            row["overhead"] = row["cycle"] - row["training"]
            row["other"] = row["overhead"] - sum(row[name] for name in CATEGORIES)
            self.rows.append(row)
        self.start = (now, totals)

    def wrap_objective(self, objective: Callable[[optuna.Trial], Any]) -> Callable[[optuna.Trial], Any]:
        """The objective, marking each trial's start and end."""

        @functools.wraps(objective)
        def marked(trial: optuna.Trial) -> Any:
            self.mark_start()
            try:
                return objective(trial)
            finally:
                self.ended = time.perf_counter()

        return marked

    def medians(self) -> dict[str, float]:
        """The median of each measure over the cycles."""
        return {name: statistics.median(row[name] for row in self.rows) for name in self.rows[0]} if self.rows else {}


def storage_methods() -> list[str]:
    """The public storage operations, as the study calls them on its cached storage."""
    names = [n for n in dir(optuna.storages.BaseStorage) if not n.startswith("_")]
    return [n for n in names if callable(getattr(optuna.storages.BaseStorage, n))]


@contextmanager
def probed(cycles: Cycles) -> Iterator[None]:
    """While inside: sampler, storage, tracking and training calls timed, and the pipeline's objectives marked."""
    clock = cycles.clock
    with ExitStack() as stack:

        def patch(owner: object, name: str, category: str) -> None:
            stack.enter_context(mock.patch.object(owner, name, clock.wrap(category, getattr(owner, name))))

        for name in SAMPLER_METHODS:
            patch(TrialSeededSampler, name, "sampler")
        for name in storage_methods():
            patch(_CachedStorage, name, "storage")
        patch(BudgetedStorage, "_create_new_trial", "storage")
        for name in [n for n in vars(MlflowClient) if not n.startswith("_") and callable(getattr(MlflowClient, n))]:
            patch(MlflowClient, name, "tracking")
        for name in FLUENT:
            patch(mlflow, name, "tracking")
        for name in ("build_and_fit", "measure_costs"):
            patch(objective_module, name, "training")
        make = objective_module.make_objective
        stack.enter_context(
            mock.patch(
                "fashion_hpo.pipeline.study.make_objective",
                lambda *args, **kwargs: cycles.wrap_objective(make(*args, **kwargs)),
            )
        )
        yield
