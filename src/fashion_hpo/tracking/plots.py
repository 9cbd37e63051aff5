"""Optuna's plots of a study as artifacts of its run: PNG, and interactive HTML that carries its own plotly.js (no
network needed to view it); in a large study the plots whose cost grows with every trial drawn (a curve, a line, a
legend entry each) draw a capped sample, and say so in their title."""

from __future__ import annotations

import copy
import logging
import random
import warnings
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # plots are files for MLflow, never windows

import matplotlib.pyplot as plt
import mlflow
import optuna
from optuna.trial import FrozenTrial, TrialState

from fashion_hpo.core.constants import OPTIMIZED_METRIC
from fashion_hpo.search.trials import trial_accuracy
from fashion_hpo.tracking.disk import artifact_failure

log = logging.getLogger(__name__)

# How many trials a plot draws at most; the history and the Pareto front draw one point a trial and stay whole.
PLOT_CAPS = {"intermediate_values": 100, "parallel_coordinate": 1000, "param_importances": 1000}
SAMPLE_SEED = 0  # the same study draws the same sample on every summary
# MLflow's artifact viewer shows an HTML artifact from a blob: URL, where a relative script src cannot resolve (tried
# in Chromium against `mlflow ui`): each page embeds plotly.js (about 4.8 MB) instead of loading it from its CDN.
OFFLINE_HTML = {"include_plotlyjs": True, "full_html": True}


@dataclass(frozen=True)
class Plotted:
    """The study a plot draws (the study itself, or a sample of its trials) and the note its title gets."""

    study: optuna.Study
    note: str


class SampledStudy(optuna.Study):
    """Another study as its plots read it (every plot reads trials through `get_trials`), with only the chosen trials,
    their numbers unchanged."""

    def __init__(self, study: optuna.Study, chosen: list[FrozenTrial]) -> None:
        super().__init__(study_name=study.study_name, storage=study._storage, sampler=study.sampler)
        self.chosen = chosen

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        """The chosen trials in `states`."""
        trials = [t for t in self.chosen if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials


def plotted(study: optuna.Study, name: str) -> Plotted:
    """What plot `name` draws of `study`: every trial, or past its cap the most accurate half of the cap and a seeded
    sample of the other finished trials."""
    cap = PLOT_CAPS.get(name)
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    if cap is None or len(finished) <= cap:
        return Plotted(study, "")
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    best = sorted(complete, key=trial_accuracy, reverse=True)[: cap // 2]
    chosen = {t.number for t in best}
    rest = [t for t in finished if t.number not in chosen]
    sample = random.Random(SAMPLE_SEED).sample(rest, cap - len(best))
    view = SampledStudy(study, sorted(best + sample, key=lambda t: t.number))
    note = f"{cap} of {len(finished)} trials: the {len(best)} best and {cap - len(best)} sampled (seed {SAMPLE_SEED})"
    return Plotted(view, note)


def plot_names(study: optuna.Study, n_complete: int) -> list[str]:
    """Which of Optuna's plots say something about this study."""
    if n_complete == 0:
        return ["intermediate_values"]
    plots = ["optimization_history", "parallel_coordinate", "intermediate_values"]
    if len(study.directions) == 1:
        return plots + (["param_importances"] if n_complete >= 2 else [])
    return [*plots, "pareto_front"]  # the front is the story; importances of accuracy alone would hide the trade-off


def log_plots(study: optuna.Study, n_complete: int) -> None:
    """Optuna's plots as PNG artifacts and as interactive Plotly HTML; a plot that fails is a warning, never a failed
    study."""
    for name in plot_names(study, n_complete):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            # Importance estimates on few trials warn per parameter; the plot still says what it can.
            warnings.filterwarnings("ignore", "Some regimes for parameter", UserWarning)
            warnings.filterwarnings("ignore", "Attempting to set identical low and high ylims", UserWarning)
            try:
                log_plot(study, name)
            except Exception as err:
                log.warning("could not log plot %s: %s", name, artifact_failure(err, mlflow.get_artifact_uri()))


def log_plot(study: optuna.Study, name: str) -> None:
    """One of Optuna's plots as plots/<name>.png and its interactive twin plots/<name>.html."""
    import optuna.visualization
    from optuna.visualization import matplotlib as ovm

    view, kwargs = plotted(study, name), plot_kwargs(study, name)
    axes = getattr(ovm, f"plot_{name}")(view.study, **kwargs)
    axes.set_title(titled(axes.get_title(), view.note))
    # Optuna lays its figures out with tight_layout, which cannot fit the legend of many trials and warns "Tight
    # layout not applied" at every save; log_figure crops to the artists instead.
    axes.figure.set_layout_engine("none")
    log_figure(axes.figure, f"plots/{name}.png")
    # The interactive twin of the same name (hover a trial), which MLflow's artifact viewer renders.
    figure = getattr(optuna.visualization, f"plot_{name}")(view.study, **kwargs)
    figure.update_layout(title_text=titled(figure.layout.title.text or "", view.note))
    mlflow.log_figure(figure, f"plots/{name}.html", save_kwargs=dict(OFFLINE_HTML))  # MLflow adds its defaults to it


def titled(title: str, note: str) -> str:
    """A plot's title with the note on what it draws, if any."""
    return f"{title} ({note})" if note else title


def plot_kwargs(study: optuna.Study, name: str) -> dict[str, Any]:
    """How Optuna's plot `name` shows this study: a multi-objective study's plots follow validation accuracy, and
    its Pareto front names its objectives."""
    objectives = study.user_attrs.get("objectives", [OPTIMIZED_METRIC])
    if len(study.directions) == 1 or name == "intermediate_values":
        return {}
    if name == "pareto_front":
        return {"target_names": objectives}
    return {"target": trial_accuracy, "target_name": OPTIMIZED_METRIC}


def log_figure(figure: plt.Figure, path: str) -> None:
    """Save a matplotlib figure as an artifact of the active run and free it."""
    try:
        mlflow.log_figure(figure, path, save_kwargs={"bbox_inches": "tight"})
    finally:
        plt.close(figure)
