"""What the console shows while the long phases run: a line per epoch and per trial, or, in a terminal, a bar whose
status line follows the epochs; and the refit's epochs the same way. Plain lines when output goes to a file or a
pipe (`mlflow run` in CI), so a log holds one line per epoch, never carriage-return spam."""

from __future__ import annotations

import sys
import time
from typing import TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from fashion_hpo.core.settings import RunSettings
from fashion_hpo.search.trials import best_trial, trial_accuracy, trial_costs
from fashion_hpo.training.loop import EpochResult

# The bar shows trials done of --n-trials and the time so far: no rate or ETA, which one slow trial makes absurd.
BAR_FORMAT = "{desc} {bar} {n_fmt}/{total_fmt} trials [{elapsed}]{postfix}"
STATE_WORDS = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


def duration(seconds: float) -> str:
    """Seconds for reading: `41 s`, `9 min`, `1 h 5 min`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds // 3600:.0f} h {seconds % 3600 / 60:.0f} min"


def live(settings: RunSettings, stream: TextIO) -> bool:
    """Whether to draw a bar: in a terminal, unless --no-progress-bar asked for plain lines."""
    return settings.progress_bar and stream.isatty()


class SearchProgress:
    """Epoch and trial lines of this process's search (an Optuna callback for the trials)."""

    def __init__(self, study: optuna.Study, settings: RunSettings, done: int, stream: TextIO | None = None) -> None:
        self.settings, self.done, self.stream = settings, done, stream or sys.stdout
        self.started = time.monotonic()
        self.trials_here = 0
        self.best = best_trial(study, settings.limits)  # read once; then kept from the trials this process runs
        self.bar: tqdm | None = None
        if live(settings, self.stream):
            self.bar = tqdm(total=settings.n_trials, initial=done, desc="search", bar_format=BAR_FORMAT, file=stream)

    def say(self, line: str) -> None:
        """One line, above the bar when there is one."""
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def epoch(self, trial: optuna.Trial, result: EpochResult) -> None:
        """`trial 3 · epoch 4/10 · val 0.8712 · 2.6 s/epoch`: the bar's status line, or a line of its own."""
        status = (
            f"trial {trial.number} · epoch {result.epoch}/{self.settings.epochs} · val {result.val.accuracy:.4f} · "
            f"{result.seconds:.1f} s/epoch"
        )
        if self.bar is not None:
            self.bar.set_postfix_str(status)
        else:
            self.say(status)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """`trial 3 complete · val 0.8843 · best 0.8901 (trial 1) · 4/100 trials`, once a trial has finished."""
        self.trials_here += 1
        self.done += 1
        state = STATE_WORDS.get(trial.state, trial.state.name.lower())
        value = f" · val {trial_accuracy(trial):.4f}" if trial.state == TrialState.COMPLETE else ""
        self.keep_best(trial)
        best = self.best
        leader = f" · best {trial_accuracy(best):.4f} (trial {best.number})" if best is not None else ""
        self.say(f"trial {trial.number} {state}{value}{leader} · {self.done}/{self.settings.n_trials} trials")
        if self.bar is not None:
            self.bar.update(1)
        self.note_slow_first_trial(trial)

    def keep_best(self, trial: FrozenTrial) -> None:
        """The most accurate complete trial within the constraints so far."""
        feasible = trial.state == TrialState.COMPLETE and self.settings.limits.allows(trial_costs(trial))
        if feasible and (self.best is None or trial_accuracy(trial) > trial_accuracy(self.best)):
            self.best = trial

    def note_slow_first_trial(self, trial: FrozenTrial) -> None:
        """Say at once when this run's first trial alone outlasted --timeout: the search stops after it."""
        timeout = self.settings.timeout
        if self.trials_here == 1 and timeout and time.monotonic() - self.started >= timeout:
            took = duration(time.monotonic() - self.started)
            self.say(
                f"trial {trial.number} alone took {took}, longer than --timeout {timeout}: the search stops after it "
                "(raise --timeout, or lower --epochs or --max-train-samples, for more trials per run)"
            )

    def close(self) -> None:
        """Put the bar away (its last state stays on screen)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class RefitProgress:
    """The refit's epochs: `refit · epoch 7/20 · train_loss 0.2412 · 3.1 s/epoch · ~41 s left`."""

    def __init__(self, settings: RunSettings, epochs: int, stream: TextIO | None = None) -> None:
        self.epochs, self.stream = epochs, stream or sys.stdout
        self.seconds = 0.0
        self.bar: tqdm | None = None
        if live(settings, self.stream):
            bar_format = BAR_FORMAT.replace("trials", "epochs")
            self.bar = tqdm(total=epochs, desc="refit", bar_format=bar_format, file=stream)

    def __call__(self, result: EpochResult) -> None:
        """One refit epoch done."""
        self.seconds += result.seconds
        left = (self.epochs - result.epoch) * self.seconds / result.epoch
        status = f"train_loss {result.train_loss:.4f} · {result.seconds:.1f} s/epoch · ~{duration(left)} left"
        if self.bar is not None:
            self.bar.set_postfix_str(status)
            self.bar.update(1)
        else:
            print(f"refit · epoch {result.epoch}/{self.epochs} · {status}", file=self.stream, flush=True)

    def close(self) -> None:
        """Put the bar away."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
