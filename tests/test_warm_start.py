"""--warm-start-from: a new study starts from an earlier study's best configurations, or a registered version's."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from fashion_hpo.core.constants import BASELINE
from fashion_hpo.core.settings import RunSettings
from fashion_hpo.search.study import open_study
from fashion_hpo.search.warm_start import WARM_START, warm_start
from tests.conftest import MLP_PARAMS, run_cli


def mlp_trial(value: float, **changes: object) -> optuna.trial.FrozenTrial:
    """A finished MLP trial with MLP_PARAMS (and `changes`)."""
    params = {**MLP_PARAMS, **changes}
    distributions = {
        name: CategoricalDistribution([value]) if isinstance(value, (str, bool)) else FloatDistribution(0, 1e9)
        for name, value in params.items()
    }
    distributions["n_layers"] = IntDistribution(1, 10)
    return create_trial(value=value, params=params, distributions=distributions, user_attrs={"model": "mlp"})


@pytest.fixture
def source(tmp_path: Path) -> RunSettings:
    """A finished study `source` of four trials: two good, one too wide for the space, one 4-layer."""
    settings = RunSettings(study_name="source", storage=f"sqlite:///{tmp_path}/o.db")
    study = optuna.create_study(study_name="source", storage=settings.storage, direction="maximize")
    study.add_trials(
        [
            mlp_trial(0.80),
            mlp_trial(0.90, n_units_l0=256),
            mlp_trial(0.95, n_units_l0=4096),  # the MLP space's widths stop at 1,024
            mlp_trial(0.70, n_units_l1=128),
        ]
    )
    return settings


def test_a_new_study_starts_from_the_best_configurations_that_fit_it(source: RunSettings) -> None:
    settings = replace(source, study_name="target", warm_start_from="source", warm_start_trials=3)
    study = open_study(settings)
    lines = warm_start(study, settings)
    assert lines[0].startswith("Warm start: skipped trial 2 of source (0.9500): outside this study's space")
    assert lines[1:] == [
        "Warm start: queued trial 1 of source (0.9000)",
        "Warm start: queued trial 0 of source (0.8000)",
    ]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    widths = [t.system_attrs["fixed_params"]["n_units_l0"] for t in waiting]
    assert widths == [256, 512], "in the source's order of value"
    assert not any(t.user_attrs.get(BASELINE) for t in study.trials), "no baseline trial with a warm start"
    assert study.user_attrs[WARM_START] == "source"
    assert warm_start(open_study(settings), settings) == [], "a rerun enqueues nothing again"
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 2


def test_a_configuration_over_max_params_is_skipped_and_says_why(source: RunSettings) -> None:
    settings = replace(source, study_name="small", warm_start_from="source", warm_start_trials=2, max_params=1000)
    lines = warm_start(open_study(settings), settings)
    assert lines[1].startswith("Warm start: skipped trial 1 of source (0.9000): ")
    assert lines[1].endswith(" parameters > --max-params 1000")


def test_a_registered_version_is_a_starting_point(tracking_uri: str, tmp_path: Path) -> None:
    client = MlflowClient()
    client.create_registered_model("m")
    tags = {"params": json.dumps(MLP_PARAMS), "model_kind": "mlp"}
    client.create_model_version("m", str(tmp_path), tags=tags)
    client.set_registered_model_alias("m", "champion", "1")
    settings = RunSettings(study_name="t", storage=f"sqlite:///{tmp_path}/o.db", warm_start_from="models:/m@champion")
    study = open_study(settings)
    assert warm_start(study, settings) == ["Warm start: queued version 1 of m"]
    assert study.get_trials(states=(TrialState.WAITING,))[0].system_attrs["fixed_params"] == MLP_PARAMS


def test_a_missing_source_is_one_line(tmp_path: Path, tracking_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["study", "--warm-start-from", "nosuch", "--storage", f"sqlite:///{tmp_path}/o.db"]
    assert run_cli([*args, "--data-dir", str(tmp_path / "data")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "fashion-hpo study: error: argument --warm-start-from: no study 'nosuch' in this --storage to start from"
    )


def test_a_cnn_configuration_does_not_start_an_mlp_study(source: RunSettings) -> None:
    study = optuna.load_study(study_name="source", storage=source.storage)
    kernel = {"kernel_size": IntDistribution(3, 5)}
    study.add_trial(
        create_trial(value=0.99, params={"kernel_size": 3}, distributions=kernel, user_attrs={"model": "cnn"})
    )
    settings = replace(source, study_name="t2", warm_start_from="source", warm_start_trials=1)
    (line,) = warm_start(open_study(settings), settings)
    assert line == "Warm start: skipped trial 4 of source (0.9900): a cnn configuration, and this study searches mlp"
