"""The objective on tiny synthetic data: learning, pruning, and divergence."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from optuna.trial import TrialState

from fashion_hpo.core.settings import RunSettings
from fashion_hpo.data.splits import FashionData, Split
from fashion_hpo.search import objective as objective_module
from fashion_hpo.search.objective import NON_FINITE_LOSS, make_objective
from fashion_hpo.training.loop import EpochResult
from tests.conftest import MLP_PARAMS

CPU = torch.device("cpu")


class PruneAtEpoch(optuna.pruners.BasePruner):
    """Prunes every trial once it has reported `epoch`."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.last_step is not None and trial.last_step >= self.epoch


def fixed_study(pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """A study whose trials all use the known-good MLP params."""
    study = optuna.create_study(direction="maximize", pruner=pruner or optuna.pruners.NopPruner())
    study.enqueue_trial(MLP_PARAMS)
    return study


def test_objective_learns_and_reports_every_epoch(tiny_data: FashionData) -> None:
    epochs: list[EpochResult] = []
    objective = make_objective(tiny_data, RunSettings(epochs=3, seed=0), report=lambda t, r: epochs.append(r))
    study = fixed_study()
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [1, 2, 3]
    assert [r.epoch for r in epochs] == [1, 2, 3]
    assert trial.value == epochs[-1].val.accuracy
    assert trial.value > 0.5, "ten well-separated synthetic classes must be learnable far above chance (0.1)"


def test_pruner_stops_the_trial_after_the_reported_epoch(tiny_data: FashionData) -> None:
    objective = make_objective(tiny_data, RunSettings(epochs=4, seed=0))
    study = fixed_study(PruneAtEpoch(2))
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED
    assert sorted(trial.intermediate_values) == [1, 2]


def test_non_finite_loss_prunes_the_trial_with_its_reason(tiny_data: FashionData) -> None:
    poisoned = Split(torch.full_like(tiny_data.train.images, math.nan), tiny_data.train.labels)
    data = FashionData(poisoned, tiny_data.val, tiny_data.test)
    objective = make_objective(data, RunSettings(epochs=3, seed=0))
    study = fixed_study()
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["fail_reason"] == NON_FINITE_LOSS
    assert trial.intermediate_values == {}, "the trial ends inside its first epoch"


def test_max_train_samples_limits_training_data(tiny_data: FashionData, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[tuple[int, int]] = []
    real_fit = objective_module.build_and_fit

    def recording_fit(config, train, val, *args, **kwargs):
        sizes.append((len(train), len(val)))
        return real_fit(config, train, val, *args, **kwargs)

    monkeypatch.setattr(objective_module, "build_and_fit", recording_fit)
    objective = make_objective(tiny_data, RunSettings(epochs=1, seed=0, max_train_samples=50))
    fixed_study().optimize(objective, n_trials=1)
    assert sizes == [(50, 100)], "trials train on the subset; validation stays whole"


def test_same_seed_gives_the_same_validation_accuracy(tiny_data: FashionData) -> None:
    values = []
    for _ in range(2):
        study = fixed_study()
        study.optimize(make_objective(tiny_data, RunSettings(epochs=2, seed=7)), n_trials=1)
        values.append(study.trials[0].value)
    assert values[0] == pytest.approx(values[1], abs=1e-6)
