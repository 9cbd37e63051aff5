"""What a run shows while it works: each epoch of each trial and of the refit, why the search ended, a bar sized
--n-trials in a terminal; and the refit's curve on the study's run."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient

from fashion_hpo.core.constants import REFIT_EPOCH_SECONDS, REFIT_TRAIN_LOSS
from fashion_hpo.core.settings import RunSettings
from fashion_hpo.pipeline import study as pipeline
from fashion_hpo.pipeline.progress import RefitProgress, SearchProgress, duration
from fashion_hpo.training.loop import EpochResult, Evaluation

EPOCH_LINE = re.compile(r"^trial (\d+) · epoch (\d+)/(\d+) · val [01]\.\d{4} · \d+\.\d s/epoch$")
TRIAL_LINE = re.compile(
    r"^trial (\d+) (complete|pruned|failed)( · val [01]\.\d{4})?( · best [01]\.\d{4} \(trial \d+\))?"
    r" · (\d+)/(\d+) trials$"
)
REFIT_LINE = re.compile(r"^refit · epoch (\d+)/(\d+) · train_loss \d+\.\d{4} · \d+\.\d s/epoch · ~\d+ (s|min) left$")


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def epoch(number: int, seconds: float = 1.5) -> EpochResult:
    """An epoch's result."""
    return EpochResult(number, 0.5, Evaluation(0.4, 0.8), seconds)


def test_a_run_shows_every_epoch_of_its_trials_and_refit_and_logs_the_refit_curve(
    tiny_cli: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    # Captured output is not a terminal: plain lines.
    assert tiny_cli(["study", "--n-trials", "2", "--epochs", "2", "--pruner", "none"]) == 0
    lines = capsys.readouterr().out.splitlines()
    epochs = [EPOCH_LINE.match(line).groups() for line in lines if EPOCH_LINE.match(line)]  # type: ignore[union-attr]
    assert epochs == [("0", "1", "2"), ("0", "2", "2"), ("1", "1", "2"), ("1", "2", "2")]
    trials = [TRIAL_LINE.match(line) for line in lines if TRIAL_LINE.match(line)]
    assert [(m.group(1), m.group(5), m.group(6)) for m in trials if m] == [("0", "1", "2"), ("1", "2", "2")]
    assert "Search ended: the study has its --n-trials 2 trials." in lines
    refit_start = next(i for i, line in enumerate(lines) if line.startswith("Refit trial #"))
    assert re.fullmatch(r"Refit trial #\d on 400 images for 4 epochs \(it trained 2\)", lines[refit_start])
    refit = [REFIT_LINE.match(line).groups()[:2] for line in lines if REFIT_LINE.match(line)]  # type: ignore[union-attr]
    assert refit == [(str(k), "4") for k in range(1, 5)]
    assert not any("\r" in line for line in lines)
    study_run = mlflow.search_runs(search_all_experiments=True, filter_string="tags.registered_version = '1'")
    run_id = study_run["run_id"][0]
    for name in (REFIT_TRAIN_LOSS, REFIT_EPOCH_SECONDS):
        assert [m.step for m in MlflowClient().get_metric_history(run_id, name)] == [1, 2, 3, 4]


def test_a_timeout_that_ends_the_search_after_its_first_trial_says_so(
    tiny_cli: Callable[[list[str]], int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    slow = pipeline.log_epoch
    monkeypatch.setattr(pipeline, "log_epoch", lambda trial, result: time.sleep(0.7) or slow(trial, result))
    assert tiny_cli(["study", "--n-trials", "5", "--timeout", "1", "--epochs", "2", "--no-register"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^trial 0 alone took \d+ s, longer than --timeout 1: the search stops after it", out, re.M)
    assert re.search(
        r"^Search ended: the --timeout of 1 s ran out after 1 trial in \d+ s; rerun the same command to continue "
        r"the study toward --n-trials 5\.$",
        out,
        re.M,
    )
    trials = optuna.load_study(study_name="fashion-mnist-mlp", storage=f"sqlite:///{tmp_path}/o.db").trials
    assert len(trials) == 1, "the timeout stopped the search after the first trial"


def test_the_bar_counts_trials_of_n_trials_with_the_epoch_as_its_status() -> None:
    stream = Terminal()
    study = optuna.create_study(direction="maximize")
    progress = SearchProgress(study, RunSettings(n_trials=7, epochs=3), done=2, stream=stream)
    trial = study.ask()
    progress.epoch(trial, epoch(1))
    study.tell(trial, 0.8)
    progress(study, study.trials[0])
    progress.close()
    screen = stream.getvalue()
    assert "2/7 trials" in screen and "3/7 trials" in screen, "starts at the trials already done, total --n-trials"
    assert "trial 0 · epoch 1/3 · val 0.8000 · 1.5 s/epoch" in screen
    assert "trial 0 complete · val 0.8000 · best 0.8000 (trial 0) · 3/7 trials" in screen
    assert not re.search(r"\d+\.\d{5,}", screen), "no float noise"
    assert "?" not in screen and "it/s" not in screen, "no rate or ETA"


def test_refit_lines_count_epochs_down_to_the_end() -> None:
    stream = io.StringIO()
    progress = RefitProgress(RunSettings(), epochs=3, stream=stream)
    for number in (1, 2, 3):
        progress(epoch(number, seconds=40.0))
    assert stream.getvalue().splitlines() == [
        "refit · epoch 1/3 · train_loss 0.5000 · 40.0 s/epoch · ~80 s left",
        "refit · epoch 2/3 · train_loss 0.5000 · 40.0 s/epoch · ~40 s left",
        "refit · epoch 3/3 · train_loss 0.5000 · 40.0 s/epoch · ~0 s left",
    ]


@pytest.mark.parametrize(("seconds", "text"), [(41, "41 s"), (540, "9 min"), (3900, "1 h 5 min")])
def test_durations_read_as_a_person_says_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text
