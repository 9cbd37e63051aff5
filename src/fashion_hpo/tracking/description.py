"""The study run's description: counts, best trial, Pareto front, where its model went (the run page's text)."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from optuna.trial import FrozenTrial

from fashion_hpo.core.constants import OPTIMIZED_METRIC
from fashion_hpo.search.trials import trial_accuracy


@dataclass(frozen=True)
class Registered:
    """Where the study's refit best model went: its version's URI, its alias, and its test accuracy (None when
    that trial was registered before, so nothing was refit)."""

    uri: str
    alias: str
    test_accuracy: float | None


@dataclass(frozen=True)
class Front:
    """A multi-objective study's Pareto front: its objectives' names and its trials (none in a single-objective
    study)."""

    objectives: tuple[str, ...]
    trials: list[FrozenTrial]


PLOTS_NOTE = (
    "**Plots**: *Artifacts* → `plots/`: optimization history, parallel coordinates, learning curves "
    "(intermediate values) and, once two trials completed, parameter importances (a multi-objective study: its "
    "Pareto front instead); each as PNG and as interactive HTML (hover a point to see its trial). The trials "
    "table: `trials.csv`."
)


def description(
    study_name: str,
    counts: dict[str, int],
    best: FrozenTrial | None,
    registered: Registered | None,
    plots: bool,
    front: Front | None = None,
) -> str:
    """The study run's description in markdown, what a reviewer reads first: counts, the best trial and its params,
    the Pareto front, the test accuracy, the registered version and alias, where the plots are."""
    lines = [
        f"**Study `{study_name}`**: {counts['finished']} trials finished: {counts['complete']} complete, "
        f"{counts['pruned']} pruned (status KILLED), {counts['failed']} failed."
    ]
    if best is not None:
        headline = f"**Best trial #{best.number}**: {OPTIMIZED_METRIC} {trial_accuracy(best):.4f}"
        lines += ["", headline, "", "| param | value |"]
        lines += ["|---|---|", *(f"| {name} | {short(value)} |" for name, value in best.params.items())]
    if front is not None and front.trials:
        lines += ["", *front_table(front)]
    if registered is not None:
        tested = registered.test_accuracy is not None
        test = f"**Test accuracy** of the refit best model: {registered.test_accuracy:.4f}; " if tested else ""
        lines += ["", f"{test}registered as `{registered.uri}` (alias: {registered.alias})."]
    if plots:
        lines += ["", PLOTS_NOTE]
    return "\n".join(lines)


def front_table(front: Front) -> list[str]:
    """The Pareto front as markdown lines: a heading, then a row per trial, most accurate first."""
    names = front.objectives
    lines = [
        f"**Pareto front** ({', '.join(names)}), most accurate first; its trials' runs are tagged `pareto=true`:",
        "",
        f"| trial | {' | '.join(names)} |",
        "|---" * (len(names) + 1) + "|",
    ]
    for trial in sorted(front.trials, key=trial_accuracy, reverse=True):
        lines.append(f"| #{trial.number} | {' | '.join(front_value(value) for value in trial.values)} |")
    return lines


def front_value(value: float) -> str:
    """An objective's value for reading: counts (parameters, FLOPs) with thousands separators, others as `short`."""
    return f"{value:,.0f}" if float(value).is_integer() else short(value)


def short(value: object) -> str:
    """A parameter's value for reading: floats to 4 significant digits (the exact ones are the run's params)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def log_description(text: str) -> None:
    """Set the active run's description (shown on its page, and as the runs table's Description column)."""
    mlflow.set_tag(MLFLOW_RUN_NOTE, text)
