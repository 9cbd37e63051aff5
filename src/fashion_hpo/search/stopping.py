"""Stop when the study stopped improving: `--patience N` trials in a row, complete or pruned, that did not raise the
best value by more than `--min-delta` end the search (Ray Tune's plateau stopper, SageMaker's completion criteria)."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


class Plateau:
    """An Optuna callback that stops the study after `patience` trials without an improvement over `min_delta`.

    It starts from the study's finished trials (read once) and then follows the trials this process finishes."""

    def __init__(self, study: optuna.Study, patience: int, min_delta: float) -> None:
        self.patience, self.min_delta = patience, min_delta
        self.sign = 1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1.0
        self.best: float | None = None
        self.without_gain = 0
        self.stopped = False
        for trial in sorted(study.get_trials(deepcopy=False, states=COUNTED), key=lambda t: t.number):
            self.count(trial)

    def count(self, trial: FrozenTrial) -> None:
        """One more finished trial: an improvement resets the count, anything else adds to it."""
        value = self.sign * trial.values[0] if trial.state == TrialState.COMPLETE and trial.values else None
        if value is not None and (self.best is None or value > self.best + self.min_delta):
            self.best, self.without_gain = value, 0
        elif trial.state in COUNTED:
            self.without_gain += 1

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Count the trial; stop the study once `patience` trials in a row brought nothing."""
        self.count(trial)
        if self.patience and self.without_gain >= self.patience:
            self.stopped = True
            study.stop()

    def describe(self) -> str:
        """Why it stopped, for the summary."""
        best = f"{self.sign * self.best:.4f}" if self.best is not None else "none"
        return (
            f"Search ended: {self.without_gain} trials in a row did not raise the best value ({best}) by more than "
            f"--min-delta {self.min_delta:g} (--patience {self.patience}); rerun with a larger --patience to go on."
        )
