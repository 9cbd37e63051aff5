"""The search space, exercised with fixed trials."""

from __future__ import annotations

import dataclasses
import warnings

import optuna
import pytest

from fashion_hpo.model.architectures import CNNConfig, MLPConfig, TrialConfig
from fashion_hpo.search.space import BASELINE_PARAMS, config_from_params, suggest_config
from tests.conftest import MLP_PARAMS

CNN_PARAMS = {
    "n_conv_blocks": 2,
    "channels_b0": 32,
    "channels_b1": 64,
    "kernel_size": 5,
    "batch_norm": True,
    "dropout": 0.25,
    "dense_units": 128,
    "optimizer": "SGD",
    "lr": 0.05,
    "momentum": 0.9,
    "batch_size": 256,
    "use_weight_decay": True,
    "weight_decay": 1e-4,
}


def test_mlp_params_map_to_a_frozen_config() -> None:
    config = suggest_config(optuna.trial.FixedTrial(MLP_PARAMS), "mlp")
    assert config == TrialConfig(
        model=MLPConfig(hidden_units=(512, 64), dropouts=(0.2, 0.1)),
        optimizer="Adam",
        lr=1e-3,
        batch_size=128,
        weight_decay=0.0,
        momentum=0.0,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0  # type: ignore[misc]


def test_cnn_params_map_to_a_cnn_config_with_sgd_momentum_and_weight_decay() -> None:
    config = suggest_config(optuna.trial.FixedTrial(CNN_PARAMS), "cnn")
    assert config.model == CNNConfig(channels=(32, 64), kernel_size=5, batch_norm=True, dropout=0.25, dense_units=128)
    assert (config.optimizer, config.momentum, config.weight_decay, config.batch_size) == ("SGD", 0.9, 1e-4, 256)


def test_config_from_params_rebuilds_a_sampled_trial() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for kind in ("mlp", "cnn"):
        for _ in range(5):
            trial = study.ask()
            sampled = suggest_config(trial, kind)
            assert config_from_params(trial.params, kind) == sampled
            study.tell(trial, 0.5)


def test_space_matches_the_documented_ranges() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(30):
        trial = study.ask()
        suggest_config(trial, "mlp")
        study.tell(trial, 0.5)
    distributions = study.trials[0].distributions | {k: v for t in study.trials for k, v in t.distributions.items()}
    assert distributions["n_layers"] == optuna.distributions.IntDistribution(1, 3)
    assert distributions["n_units_l0"] == optuna.distributions.IntDistribution(4, 1024, log=True)
    assert distributions["dropout_l0"] == optuna.distributions.FloatDistribution(0.0, 0.5)
    assert distributions["lr"] == optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)
    assert set(distributions["optimizer"].choices) == {"Adam", "AdamW", "RMSprop", "SGD"}
    assert set(distributions["batch_size"].choices) == {64, 128, 256, 512}
    assert any(t.params["use_weight_decay"] is False for t in study.trials), "weight decay 0 must be reachable"


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_the_baseline_configuration_lies_inside_the_space_and_names_only_its_params(kind: str) -> None:
    trial = optuna.trial.FixedTrial(BASELINE_PARAMS[kind])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FixedTrial warns about a value outside a parameter's range
        suggest_config(trial, kind)
    assert trial.params == BASELINE_PARAMS[kind]


def test_an_unknown_model_kind_raises_instead_of_building_a_default() -> None:
    with pytest.raises(ValueError, match="unknown model kind 'rnn'"):
        suggest_config(optuna.trial.FixedTrial(MLP_PARAMS), "rnn")
