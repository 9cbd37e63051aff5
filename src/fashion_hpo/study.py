"""The Optuna study: sampler, pruner, storage, and the search loop."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, cast

import optuna
import sqlalchemy.exc
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from fashion_hpo.constants import BASELINE, LATENCY_MS, N_PARAMS, OBJECTIVE_DIRECTIONS
from fashion_hpo.search_space import BASELINE_PARAMS
from fashion_hpo.seeding import trial_seed
from fashion_hpo.settings import (
    NO_LIMITS,
    PRUNERS,
    SAMPLERS,
    CostLimits,
    RunSettings,
    UsageError,
    flag_of,
    redact_url,
)
from fashion_hpo.storage import BudgetedStorage, StaleTrialCallback, StudyFull, budget_used, engine_url

Callback = Callable[[optuna.Study, FrozenTrial], None]
# What makes a study's trial scores comparable: the model kind, how long and on how many images each trial trains, and
# the seed that draws the train/validation split. A continued study keeps them; its budget, sampler and pruner may
# change. (`--max-train-samples auto` is stored as the number it stands for.)
TRIAL_SETUP = ("model", "epochs", "max_train_samples", "seed")


def make_sampler(name: str, seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
    """The `--sampler` choice, seeded (TPE after `startup_trials` random ones); an unknown name raises ValueError."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    if name == "tpe":
        # constant_liar: a worker treats other workers' running trials as bad, so it does not sample next to them.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(n_startup_trials=startup_trials, seed=seed, constant_liar=True)
    raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """The `--sampler` choice, created anew for every trial with a seed made of `--seed` and the trial number.

    Workers of one study would all draw the same parameters from samplers seeded alike; trial numbers are unique
    across workers, so this keeps them apart while a one-worker study stays reproducible."""

    def __init__(self, name: str, seed: int, startup_trials: int) -> None:
        self.name, self.seed, self.startup_trials = name, seed, startup_trials
        self.inner = make_sampler(name, seed, startup_trials)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Seed this trial's sampler."""
        self.inner = make_sampler(self.name, trial_seed(self.seed, trial.number), self.startup_trials)
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """Delegated."""
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """Delegated."""
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """Delegated."""
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        """Delegated."""
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Delegated."""
        self.inner.reseed_rng()


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """The `--pruner` choice, with epochs as the resource; an unknown name raises ValueError."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    if name == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; expected one of {', '.join(PRUNERS)}")


def storage_error(err: Exception, url: str) -> UsageError:
    """A storage failure as one line naming --storage."""
    if isinstance(err, ImportError):
        return UsageError(
            "--storage",
            f"no database driver installed for {redact_url(url)} (PostgreSQL: pip install 'fashion-hpo[postgres]'; "
            "MySQL: pip install pymysql)",
        )
    # Optuna's wrapper of the database's error says only "during the commit": the database's own error says why.
    cause = err.__cause__ if isinstance(err, optuna.exceptions.StorageInternalError) and err.__cause__ else err
    reason = str(getattr(cause, "orig", None) or cause).strip().splitlines()[0]
    return UsageError("--storage", f"cannot use {redact_url(url)}: {reason}")


def open_study(settings: RunSettings, on_stale: StaleTrialCallback | None = None) -> optuna.Study:
    """Create the study, or load it when it exists so that rerunning a command (or another worker) continues it.

    `on_stale` is called for each trial whose worker stopped sending heartbeats, after Optuna marked it FAIL."""
    objectives = settings.objective_names
    try:
        storage = BudgetedStorage(
            settings.storage, settings.n_trials, settings.heartbeat_interval, settings.grace_period, on_stale
        )
        study = optuna.create_study(
            study_name=settings.study_name,
            storage=storage,
            sampler=TrialSeededSampler(settings.sampler, settings.seed, settings.startup_trials),
            # Optuna prunes single-objective studies only.
            pruner=make_pruner(settings.pruner if len(objectives) == 1 else "none", settings.epochs),
            directions=[OBJECTIVE_DIRECTIONS[name] for name in objectives],
            load_if_exists=True,
        )
    except (ImportError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as err:
        raise storage_error(err, settings.storage) from None
    check_compatible(study, settings)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        # optuna-dashboard and Optuna's plots then name the objective instead of "Objective 0".
        study.set_metric_names(list(objectives))
    if settings.baseline_trial:
        enqueue_baseline(study, settings.model)
    return study


def enqueue_baseline(study: optuna.Study, kind: str) -> None:
    """A new study's first trial trains the search space's baseline configuration (tagged `baseline`)."""
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(BASELINE_PARAMS[kind], user_attrs={BASELINE: True}, skip_if_exists=True)


def check_compatible(study: optuna.Study, settings: RunSettings) -> None:
    """A continued study must optimize the same objectives, in the same directions, over the same model kind."""
    # Studies made before --objectives existed recorded their one objective as `metric`; a study made now has neither.
    stored = study.user_attrs.get("objectives") or [study.user_attrs.get("metric", "an unknown metric")]
    names = list(settings.objective_names)
    directions = [d.name.lower() for d in study.directions]
    if directions != [OBJECTIVE_DIRECTIONS[name] for name in names] or stored not in (names, ["an unknown metric"]):
        have = ", ".join(f"{d} {name}" for d, name in zip(directions, stored, strict=False))
        want = ", ".join(f"{OBJECTIVE_DIRECTIONS[name]} {name}" for name in names)
        raise UsageError(
            "--study-name",
            f"study {settings.study_name!r} exists with another objective ({have}, not {want}); choose another name",
        )
    study.set_user_attr("objectives", list(settings.objective_names))
    check_same_trial_setup(study, settings)


def check_same_trial_setup(study: optuna.Study, settings: RunSettings) -> None:
    """A continued study must train its trials as before, so that their scores compare (see TRIAL_SETUP)."""
    recorded = study.user_attrs
    unrecorded = [name for name in TRIAL_SETUP if name not in recorded]
    if unrecorded and any(t.state.is_finished() for t in study.get_trials(deepcopy=False)):
        # Made by an earlier version: how its trials trained is known nowhere, so nothing is recorded in its name.
        flags = ", ".join(flag_of(name) for name in unrecorded)
        logging.getLogger(__name__).warning(
            f"study {settings.study_name!r} does not record its trials' {flags} (made by an earlier fashion-hpo), so "
            "this run's are not checked against them; earlier versions trained trials on all images by default"
        )
    else:
        for name in unrecorded:
            study.set_user_attr(name, getattr(settings, name))
    for name in TRIAL_SETUP:
        value, stored = getattr(settings, name), recorded.get(name)
        if name in recorded and stored != value:
            flag = flag_of(name)
            raise UsageError(
                flag,
                f"study {settings.study_name!r} trains its trials with {flag} {stored}, not {value}; "
                f"continue it with {flag} {stored}, or choose another --study-name",
            )


def with_study_setup(settings: RunSettings, study: optuna.Study) -> RunSettings:
    """`settings` with the trial setup `study` recorded: `register` refits with the study's seed, whatever its flags."""
    recorded = study.user_attrs  # one read of the storage
    return replace(settings, **{name: recorded[name] for name in TRIAL_SETUP if name in recorded})


def load_existing_study(settings: RunSettings) -> optuna.Study:
    """The study named in the settings, which must already exist in the storage."""
    try:
        return optuna.load_study(study_name=settings.study_name, storage=engine_url(settings.storage))
    except (ImportError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as err:
        raise storage_error(err, settings.storage) from None
    except KeyError:
        raise UsageError(
            "--study-name", f"no study {settings.study_name!r} in {redact_url(settings.storage)}"
        ) from None


def run_search(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float | Sequence[float]],
    settings: RunSettings,
    callbacks: Sequence[Callback] = (),
    show_progress_bar: bool = True,
) -> None:
    """Run trials until the study has `n_trials` or this worker's `timeout` is up; a failing trial does not stop it.

    When the study is full but other workers' trials still run, wait for them (`wait_for_stale_trials`): a worker
    that was killed leaves a trial that turns stale after the grace period, is retried, and needs a worker to run it."""
    deadline = time.monotonic() + settings.timeout if settings.timeout else float("inf")
    waiting = StaleTrialWait(patience=settings.grace_period + 2 * settings.heartbeat_interval)
    while time.monotonic() < deadline:
        try:
            study.optimize(
                objective,
                n_trials=max(budget_left(study, settings.n_trials), 1),  # sizes the progress bar
                timeout=deadline - time.monotonic() if settings.timeout else None,
                callbacks=list(callbacks),
                catch=(Exception,),
                # Drawn once: a later round (after a queued retry, which took no new place in the budget) is short.
                show_progress_bar=show_progress_bar and not waiting.rounds,
            )
        except StudyFull as full:
            if not waiting.keep_waiting(full.running):
                return
            time.sleep(min(settings.heartbeat_interval, max(deadline - time.monotonic(), 0)))
        waiting.rounds += 1


class StaleTrialWait:
    """Whether a worker whose study is full should wait for other workers' running trials: while they progress,
    and for at most `patience` seconds since the count of running trials last changed."""

    def __init__(self, patience: float) -> None:
        self.patience = patience
        self.rounds = 0
        self.since, self.running = time.monotonic(), -1

    def keep_waiting(self, running: int) -> bool:
        """True to wait for the `running` trials of other workers; False when there are none, or no progress."""
        now = time.monotonic()
        if running != self.running:  # progress elsewhere: be patient again
            self.since, self.running = now, running
        return running > 0 and now - self.since <= self.patience


def budget_left(study: optuna.Study, n_trials: int) -> int:
    """How many more trials the study-wide `--n-trials` allows."""
    return n_trials - budget_used(study.get_trials(deepcopy=False))


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
