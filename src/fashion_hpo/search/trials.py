"""Reading a study's trials: counts, accuracy, costs, the best one and the Pareto front."""

from __future__ import annotations

from typing import cast

import optuna
from optuna.trial import FrozenTrial, TrialState

from fashion_hpo.core.constants import LATENCY_MS, N_PARAMS
from fashion_hpo.core.limits import NO_LIMITS, CostLimits


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """How many trials finished, and how many of them completed, were pruned, or failed."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    counts = {
        "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED),
        "failed": states.count(TrialState.FAIL),
    }
    return {"finished": sum(counts.values()), **counts}


def trial_costs(trial: FrozenTrial) -> dict[str, float]:
    """The costs recorded on a trial (parameters before training, latency after), by metric name."""
    return {name: trial.user_attrs[name] for name in (N_PARAMS, LATENCY_MS) if name in trial.user_attrs}


def trial_accuracy(trial: FrozenTrial) -> float:
    """A complete trial's validation accuracy: its value, or its first value in a multi-objective study."""
    return cast(list[float], trial.values)[0]


def feasible_trials(study: optuna.Study, limits: CostLimits) -> list[FrozenTrial]:
    """The complete trials whose recorded costs are within `limits`."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [t for t in complete if limits.allows(trial_costs(t))]


def scores(study: optuna.Study, trial: FrozenTrial) -> list[float]:
    """A trial's objective values turned so that larger is better on each."""
    signs = [1.0 if d == optuna.study.StudyDirection.MAXIMIZE else -1.0 for d in study.directions]
    return [sign * value for sign, value in zip(signs, trial.values, strict=True)]


def best_trial(study: optuna.Study, limits: CostLimits = NO_LIMITS) -> FrozenTrial | None:
    """The most accurate complete trial within `limits` (in a multi-objective study, the Pareto front's most accurate
    one: no trial is more accurate, and among equally accurate ones the cheapest); None when there is none."""
    return max(feasible_trials(study, limits), key=lambda t: scores(study, t), default=None)


def pareto_front(study: optuna.Study, limits: CostLimits = NO_LIMITS) -> list[FrozenTrial]:
    """The complete trials within `limits` that no other such trial matches or beats on every objective and beats
    on one; empty for a single-objective study, which has no trade-off to show."""
    if len(study.directions) == 1:
        return []
    trials = feasible_trials(study, limits)
    score = {t.number: scores(study, t) for t in trials}

    def dominated(trial: FrozenTrial) -> bool:
        mine = score[trial.number]
        return any(
            all(o >= m for o, m in zip(score[other.number], mine, strict=True)) and score[other.number] != mine
            for other in trials
        )

    return [t for t in trials if not dominated(t)]
