"""The study's plots: HTML that needs no network, and a summary of thousands of trials that draws a capped sample (and
says so on the plot) while trials.csv keeps every trial."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from fashion_hpo.search.trials import best_trial, trial_accuracy, trial_counts
from fashion_hpo.tracking.artifacts import log_study_summary
from fashion_hpo.tracking.plots import PLOT_CAPS, log_plots, plotted

DISTRIBUTIONS = {
    "n_layers": IntDistribution(1, 3),
    "n_units_l0": IntDistribution(4, 1024, log=True),
    "dropout_l0": FloatDistribution(0.0, 0.5),
    "optimizer": CategoricalDistribution(["Adam", "AdamW", "RMSprop", "SGD"]),
    "lr": FloatDistribution(1e-5, 1e-1, log=True),
}
EPOCHS = 10
CDN_SCRIPT = 'src="https://cdn.plot.ly'  # the page plotly writes with include_plotlyjs="cdn"


def synthetic_trial(rng: random.Random) -> FrozenTrial:
    """A finished trial with MLP-like params and a learning curve; four in ten are pruned before the last epoch."""
    params = {
        "n_layers": rng.randint(1, 3),
        "n_units_l0": rng.randint(4, 1024),
        "dropout_l0": rng.uniform(0, 0.5),
        "optimizer": rng.choice(["Adam", "AdamW", "RMSprop", "SGD"]),
        "lr": 10 ** rng.uniform(-5, -1),
    }
    ceiling, pruned = rng.uniform(0.5, 0.9), rng.random() < 0.4
    last = rng.randint(1, EPOCHS - 1) if pruned else EPOCHS
    curve = {epoch: ceiling * (1 - 0.5**epoch) for epoch in range(1, last + 1)}
    return create_trial(
        state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
        value=None if pruned else curve[last],
        params=params,
        distributions=DISTRIBUTIONS,
        intermediate_values=curve,
    )


def synthetic_study(n: int, seed: int = 0) -> optuna.Study:
    """An in-memory single-objective study of `n` finished trials."""
    rng = random.Random(seed)
    study = optuna.create_study(direction="maximize")
    study.add_trials([synthetic_trial(rng) for _ in range(n)])
    return study


def artifact_text(run_id: str, path: str) -> str:
    """An artifact of a run, as text."""
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)).read_text()


def test_a_plot_past_its_cap_draws_the_best_trials_and_a_seeded_sample() -> None:
    study = synthetic_study(PLOT_CAPS["intermediate_values"] * 3)
    view = plotted(study, "intermediate_values")
    drawn = view.study.get_trials(deepcopy=False)
    assert len(drawn) == PLOT_CAPS["intermediate_values"]
    complete = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=trial_accuracy, reverse=True)
    best_half = {t.number for t in complete[: len(drawn) // 2]}
    assert best_half <= {t.number for t in drawn}
    assert [t.number for t in plotted(study, "intermediate_values").study.trials] == [t.number for t in drawn]
    assert view.note == f"{len(drawn)} of {len(study.trials)} trials: the 50 best and 50 sampled (seed 0)"


def test_a_plot_within_its_cap_and_the_history_draw_every_trial() -> None:
    study = synthetic_study(PLOT_CAPS["intermediate_values"])
    assert plotted(study, "intermediate_values") == plotted(study, "intermediate_values")
    assert plotted(study, "intermediate_values").study is study and not plotted(study, "intermediate_values").note
    assert plotted(synthetic_study(3000), "optimization_history").note == ""


def test_html_plots_carry_plotly_js_instead_of_loading_it_from_the_cdn(tracking_uri: str) -> None:
    study = synthetic_study(5)
    with mlflow.start_run() as run:
        log_plots(study, n_complete=trial_counts(study)["complete"])
    html = artifact_text(run.info.run_id, "plots/optimization_history.html")
    assert CDN_SCRIPT not in html
    assert "plotly.js v" in html and len(html) > 3_000_000, "plotly.js is not embedded in the page"


@pytest.mark.slow  # 5,000 trials: about 15 s of plots on two busy cores
def test_a_summary_of_5000_trials_caps_its_plots_and_tables_every_trial(tracking_uri: str) -> None:
    study = synthetic_study(5000)
    counts = trial_counts(study)
    with mlflow.start_run() as run:
        log_study_summary(study, counts, best_trial(study))
    rows = list(csv.DictReader(artifact_text(run.info.run_id, "trials.csv").splitlines()))
    assert len(rows) == 5000 and sorted(int(row["number"]) for row in rows) == list(range(5000))
    for name, cap in PLOT_CAPS.items():
        note = f"{cap} of 5000 trials: the {cap // 2} best and {cap - cap // 2} sampled"
        assert note in artifact_text(run.info.run_id, f"plots/{name}.html"), f"{name}.html does not say it is capped"
    history = artifact_text(run.info.run_id, "plots/optimization_history.html")
    assert "of 5000 trials" not in history
    pngs = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert {f"plots/{name}.png" for name in (*PLOT_CAPS, "optimization_history")} <= pngs
