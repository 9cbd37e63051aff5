"""Accuracy against cost: model costs per trial, constraints, multi-objective studies, a champion within budget.
Tiny synthetic data and a temporary tracking store: seconds each."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from fashion_hpo.core.constants import LATENCY_MS, N_PARAMS, STUDY_TAG
from fashion_hpo.core.errors import UsageError
from fashion_hpo.core.limits import CostLimits
from fashion_hpo.core.settings import RunSettings
from fashion_hpo.data.splits import FashionData
from fashion_hpo.model.architectures import CNNConfig, MLPConfig, build_model
from fashion_hpo.pipeline.register import register_best
from fashion_hpo.pipeline.study import search_here
from fashion_hpo.pipeline.summary import summarize
from fashion_hpo.registry.versions import ModelCard, log_model, promote, register
from fashion_hpo.search.objective import OVER_MAX_PARAMS, make_objective
from fashion_hpo.search.study import open_study
from fashion_hpo.search.trials import best_trial, pareto_front
from fashion_hpo.tracking.callback import RUN_ID_ATTRIBUTE_KEY
from fashion_hpo.tracking.runs import parent_run
from fashion_hpo.tracking.trials import PARETO_TAG, tag_pareto_front
from fashion_hpo.training.costs import count_params, cpu_latency_ms, flops_per_image
from tests.conftest import MLP_PARAMS, REPO, subprocess_env, temporary_tracking

NAME = "fashion-mnist-classifier"
SMALL_MLP = {**MLP_PARAMS, "n_layers": 1, "n_units_l0": 8}  # 784*8+8 + 8*10+10 = 6,370 parameters


def test_costs_of_a_known_mlp_and_cnn() -> None:
    mlp = build_model(MLPConfig(hidden_units=(8,), dropouts=(0.0,)))
    assert count_params(mlp) == 784 * 8 + 8 + 8 * 10 + 10
    assert flops_per_image(mlp) == 2 * (784 * 8 + 8 * 10)
    cnn = build_model(CNNConfig(channels=(4,), kernel_size=3, batch_norm=False, dropout=0.0, dense_units=16))
    conv = 2 * 9 * 1 * 4 * 28 * 28  # 3x3 over one input channel, 4 output maps of 28x28 ("same" padding)
    dense = 2 * (4 * 14 * 14 * 16 + 16 * 10)
    assert flops_per_image(cnn) == conv + dense
    assert cnn.training, "measuring leaves the model's mode as it was"
    assert cpu_latency_ms(mlp, batch=8, repeats=2) > 0 and mlp.training, "measured, and the mode left as it was"


def single_trial_study(params: dict[str, object]) -> optuna.Study:
    """An in-memory study whose first trial uses `params`."""
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(params)
    return study


def test_a_configuration_over_max_params_is_pruned_before_it_trains(tiny_data: FashionData) -> None:
    epochs: list[int] = []
    objective = make_objective(
        tiny_data, RunSettings(epochs=3, seed=0, max_params=10_000), report=lambda t, r: epochs.append(r.epoch)
    )
    study = single_trial_study(MLP_PARAMS)  # 512-64 units: about 440,000 parameters
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED and epochs == [] and trial.intermediate_values == {}
    assert trial.user_attrs["fail_reason"] == OVER_MAX_PARAMS and trial.user_attrs[N_PARAMS] > 10_000
    assert trial.constraints[N_PARAMS] > 0, "the sampler sees it as infeasible"


def test_a_trained_trial_records_its_costs_and_latency_constraint(tiny_data: FashionData) -> None:
    settings = RunSettings(epochs=1, seed=0, max_params=10_000, max_latency_ms=1e-9)  # no model is that fast
    study = single_trial_study(SMALL_MLP)
    study.optimize(make_objective(tiny_data, settings), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE and trial.user_attrs[N_PARAMS] == 6_370
    assert trial.user_attrs[LATENCY_MS] > 0 and trial.user_attrs["flops"] > 0
    assert trial.constraints[N_PARAMS] <= 0 < trial.constraints[LATENCY_MS]
    assert best_trial(study, settings.limits) is None, "an infeasible trial is never the one to refit"
    assert best_trial(study) is trial or best_trial(study).number == trial.number


def costed_trial(accuracy: float, n_params: int, latency_ms: float) -> optuna.trial.FrozenTrial:
    """A complete two-objective trial (accuracy, latency) with its recorded costs."""
    return create_trial(
        values=[accuracy, latency_ms],
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0, 1)},
        user_attrs={N_PARAMS: n_params, LATENCY_MS: latency_ms},
    )


def test_best_and_front_consider_only_trials_within_the_limits() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for trial in (costed_trial(0.95, 900_000, 0.5), costed_trial(0.90, 90_000, 0.1), costed_trial(0.85, 50_000, 0.2)):
        study.add_trial(trial)
    assert best_trial(study).values[0] == 0.95
    assert [t.values[0] for t in pareto_front(study)] == [0.95, 0.90], "0.85 is slower and less accurate than 0.90"
    limits = CostLimits(max_params=100_000)
    assert best_trial(study, limits).values[0] == 0.90
    assert [t.values[0] for t in pareto_front(study, limits)] == [0.90]
    assert best_trial(study, CostLimits(max_params=10)) is None


def test_reopening_a_study_with_other_objectives_is_one_line(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path}/o.db"
    open_study(RunSettings(study_name="front", storage=storage, objectives="val_accuracy,latency_ms"))
    with pytest.raises(UsageError, match=r"--study-name.*another objective.*not maximize val_accuracy\)"):
        open_study(RunSettings(study_name="front", storage=storage))
    with pytest.raises(UsageError, match="--study-name"):
        open_study(RunSettings(study_name="front", storage=storage, objectives="val_accuracy,n_params"))


def test_no_trial_within_the_constraints_is_one_line_and_registers_nothing(
    tiny_cli: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["study", "--n-trials", "2", "--epochs", "1", "--max-latency-ms", "1e-9", "--no-progress-bar"]
    assert tiny_cli(args) == 1
    out, err = capsys.readouterr()
    assert "Number of complete trials: 2" in out, "both trained: latency is known only after training"
    assert err.strip().splitlines()[-1] == (
        "No complete trial is within the constraints (latency_ms <= 1e-09), so no model was registered."
    )
    assert MlflowClient().search_registered_models() == []
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 3 and all(run.info.status != "RUNNING" for run in runs)


def register_costed(test_accuracy: float, n_params: int, limits: CostLimits, number: int) -> tuple[str, str]:
    """Log and register a tiny model recording `n_params`; returns its alias and the reason."""
    card = ModelCard("s", number, "mlp", 0.5, test_accuracy, {}, {N_PARAMS: n_params}, limits.describe())
    architecture = MLPConfig(hidden_units=(8,), dropouts=(0.0,))
    with mlflow.start_run() as run:
        info = log_model(build_model(architecture), architecture, np.random.rand(2, 1, 28, 28).astype(np.float32), card)
        version = register(info.model_uri, NAME, card, run.info.run_id)
        return promote(version, test_accuracy, "if-better", limits)


def test_a_champion_must_beat_the_incumbent_and_meet_the_constraints_given_now(tracking_uri: str) -> None:
    assert register_costed(0.90, 500_000, CostLimits(), 0)[0] == "champion"
    limits = CostLimits(max_params=100_000)
    alias, reason = register_costed(0.85, 60_000, limits, 1)
    assert alias == "champion" and "outside the constraints n_params <= 100000" in reason, "the incumbent is too big"
    alias, reason = register_costed(0.84, 70_000, limits, 2)
    assert alias == "challenger" and "does not beat" in reason and "both within n_params <= 100000" in reason
    alias, reason = register_costed(0.99, 200_000, limits, 3)
    assert alias == "challenger" and reason == "outside the constraints n_params <= 100000"
    version = MlflowClient().get_model_version_by_alias(NAME, "champion")
    assert version.tags[N_PARAMS] == "60000" and version.tags["constraints"] == "n_params <= 100000"


@pytest.mark.slow
def test_a_multi_objective_study_tags_its_front_and_registers_its_most_accurate_feasible_trial(
    tiny_data: FashionData, tracking_uri: str, tmp_path
) -> None:
    settings = RunSettings(
        study_name="front",
        storage=f"sqlite:///{tmp_path}/o.db",
        n_trials=4,
        epochs=1,
        objectives="val_accuracy,n_params",
        max_params=300_000,
        baseline_trial=False,
        progress_bar=False,
    )
    study = open_study(settings)
    for units in (8, 64, 256, 512):  # 512 units: 407,050 parameters, over the limit
        study.enqueue_trial({**SMALL_MLP, "n_units_l0": units})
    with parent_run(settings) as run_id:
        search_here(study, tiny_data, settings)
        best = summarize(study, settings)
        registration = register_best(lambda: tiny_data, best, settings, run_id)
    assert study.trials[3].state == TrialState.PRUNED, "over --max-params: pruned before training"
    front = pareto_front(study, settings.limits)
    assert best.number == max(front, key=lambda t: t.values[0]).number and best.user_attrs[N_PARAMS] <= 300_000
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    tagged = {r.info.run_name for r in runs if r.data.tags.get("pareto") == "true"}
    assert tagged == {f"trial-{t.number:04d}" for t in front} and tagged
    trial_run = next(r for r in runs if r.info.run_name == "trial-0000")
    assert {N_PARAMS, LATENCY_MS, "flops"} <= set(trial_run.data.metrics)
    version = registration.version
    assert version.tags["best_trial_number"] == str(best.number) and version.tags[N_PARAMS] == str(
        best.user_attrs[N_PARAMS]
    )
    assert LATENCY_MS in version.tags and version.tags["constraints"] == "n_params <= 300000"
    description = MlflowClient().get_run(run_id).data.tags["mlflow.note.content"]
    assert "**Pareto front** (val_accuracy, n_params)" in description
    assert all(f"| #{t.number} | {t.values[0]:.4g} | {int(t.values[1]):,} |" in description for t in front)


def test_a_trial_pushed_off_the_front_loses_its_pareto_tag(tracking_uri: str) -> None:
    client = MlflowClient()
    with mlflow.start_run() as parent:
        experiment = parent.info.experiment_id
        run_ids = [client.create_run(experiment, tags={STUDY_TAG: "front"}).info.run_id for _ in range(3)]
        other_study = client.create_run(experiment, tags={STUDY_TAG: "other", PARETO_TAG: "true"}).info.run_id
        trials = [create_trial(values=[0.9, 1.0], system_attrs={RUN_ID_ATTRIBUTE_KEY: run_id}) for run_id in run_ids]
        tag_pareto_front(trials[:2], "front")
        tag_pareto_front(trials[1:], "front")  # a continued study: trial 2 now dominates trial 0
    tags = [client.get_run(run_id).data.tags.get(PARETO_TAG) for run_id in [*run_ids, other_study]]
    assert tags == [None, "true", "true", "true"], "another study's front is left alone"


@pytest.mark.slow
def test_mlflow_run_with_max_params_registers_a_model_within_it(real_data_dir: Path, tmp_path: Path) -> None:
    command = ["mlflow", "run", str(REPO), "--env-manager", "local", "--experiment-name", "budget"]
    params = {
        "n_trials": 3,
        "epochs": 1,
        "max_train_samples": 1000,
        "refit_epochs": 1,  # which trial is registered is checked here, not its refit's schedule
        "max_params": 200_000,
        "data_dir": real_data_dir,
        "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
    }
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    result = subprocess.run(command, cwd=tmp_path, env=subprocess_env(tmp_path), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    with temporary_tracking(tmp_path):
        client = MlflowClient()
        version = client.get_model_version_by_alias(NAME, "champion")
        baseline = client.search_runs(
            [client.get_experiment_by_name("budget").experiment_id], "attributes.run_name = 'trial-0000'"
        )[0]
    assert int(version.tags[N_PARAMS]) <= 200_000 and version.tags["constraints"] == "n_params <= 200000"
    assert baseline.data.tags["fail_reason"] == OVER_MAX_PARAMS and baseline.info.status == "KILLED", (
        "the 1.3M-parameter baseline is pruned before it trains"
    )
