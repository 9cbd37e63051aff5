"""The search loop: trials until the study-wide budget or this worker's timeout is used up."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import optuna

from fashion_hpo.core.settings import (
    RunSettings,
)
from fashion_hpo.search.study import Callback
from fashion_hpo.storage.outage import TrialReclaimed
from fashion_hpo.storage.rdb import StudyFull, budget_used


def run_search(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float | Sequence[float]],
    settings: RunSettings,
    callbacks: Sequence[Callback] = (),
    stopped: Callable[[], bool] = lambda: False,
) -> None:
    """Run trials until the study has `n_trials` or this worker's `timeout` is up; a failing trial does not stop it.

    When the study is full but other workers' trials still run, wait for them (`wait_for_stale_trials`): a worker
    that was killed leaves a trial that turns stale after the grace period, is retried, and needs a worker to run it."""
    deadline = time.monotonic() + settings.timeout if settings.timeout else float("inf")
    waiting = StaleTrialWait(patience=settings.grace_period + 2 * settings.heartbeat_interval)
    while time.monotonic() < deadline and not stopped():  # `stopped`: a callback ended the study (see Plateau)
        try:
            study.optimize(
                objective,
                n_trials=max(budget_left(study, settings.n_trials), 1),  # this round: what the budget has left
                timeout=deadline - time.monotonic() if settings.timeout else None,
                callbacks=list(callbacks),
                catch=(Exception,),
                show_progress_bar=False,  # the pipeline's own progress lines replace Optuna's bar
            )
        except StudyFull as full:
            if not waiting.keep_waiting(full.running):
                return
            time.sleep(min(settings.heartbeat_interval, max(deadline - time.monotonic(), 0)))
        except TrialReclaimed as reclaimed:  # the retry another worker queued counts instead: on to the next trial
            logging.getLogger(__name__).warning("%s", reclaimed)
        waiting.rounds += 1


class StaleTrialWait:
    """Whether a worker whose study is full should wait for other workers' running trials: while they progress,
    and for at most `patience` seconds since the count of running trials last changed."""

    def __init__(self, patience: float) -> None:
        self.patience = patience
        self.rounds = 0
        self.since, self.running = time.monotonic(), -1

    def keep_waiting(self, running: int) -> bool:
        """True to wait for the `running` trials of other workers; False when there are none, or no progress."""
        now = time.monotonic()
        if running != self.running:  # progress elsewhere: be patient again
            self.since, self.running = now, running
        return running > 0 and now - self.since <= self.patience


def budget_left(study: optuna.Study, n_trials: int) -> int:
    """How many more trials the study-wide `--n-trials` allows."""
    return n_trials - budget_used(study.get_trials(deepcopy=False))
