"""--patience: the search ends once it stopped improving, and says so."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fashion_hpo.core.settings import RunSettings
from fashion_hpo.search.loop import run_search
from fashion_hpo.search.stopping import Plateau
from fashion_hpo.search.study import open_study

VALUES = [0.50, 0.70, 0.71, 0.69, 0.705, 0.90, 0.60, 0.60, 0.60, 0.99]


def replay(values: list[float], patience: int, min_delta: float, folder: Path) -> int:
    """How many of `values` a study runs before the plateau stops it."""
    settings = RunSettings(n_trials=len(values), timeout=0, storage=f"sqlite:///{folder}/o.db", baseline_trial=False)
    study = open_study(settings)
    plateau = Plateau(study, patience, min_delta)
    run_search(study, lambda trial: values[trial.number], settings, [plateau], lambda: plateau.stopped)
    return len(study.trials)


@pytest.mark.parametrize(
    ("patience", "min_delta", "trials"),
    [(0, 0.0, 10), (3, 0.0, 9), (2, 0.0, 5), (3, 0.02, 5), (5, 0.0, 10)],
)
def test_the_search_stops_after_patience_trials_without_a_gain_above_min_delta(
    patience: int, min_delta: float, trials: int, tmp_path: Path
) -> None:
    assert replay(VALUES, patience, min_delta, tmp_path) == trials


def test_a_continued_study_counts_the_trials_it_already_has(tmp_path: Path) -> None:
    settings = RunSettings(n_trials=20, timeout=0, storage=f"sqlite:///{tmp_path}/o.db", baseline_trial=False)
    study = open_study(settings)
    study.optimize(lambda trial: [0.9, 0.5, 0.5][trial.number], n_trials=3)
    plateau = Plateau(study, patience=3, min_delta=0.0)
    assert (plateau.best, plateau.without_gain) == (0.9, 2)
    run_search(study, lambda trial: 0.1, settings, [plateau], lambda: plateau.stopped)
    assert len(study.trials) == 4, "one more trial without a gain was enough"


def test_the_summary_says_the_plateau_ended_the_search(
    tiny_cli: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["study", "--n-trials", "30", "--epochs", "1", "--patience", "2", "--min-delta", "0.5", "--no-register"]
    assert tiny_cli(args) == 0
    out = capsys.readouterr().out
    assert "Search ended: 2 trials in a row did not raise the best value" in out
    assert "by more than --min-delta 0.5 (--patience 2)" in out
    assert "Number of finished trials: 3" in out
