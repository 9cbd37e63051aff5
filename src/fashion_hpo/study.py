"""The Optuna study: sampler, pruner, storage, and the search loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import optuna
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState

from fashion_hpo.constants import DIRECTION, OPTIMIZED_METRIC
from fashion_hpo.settings import RunSettings, UsageError, redact_url

Callback = Callable[[optuna.Study, FrozenTrial], None]


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The `--sampler` choice, seeded."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """The `--pruner` choice; resources are epochs."""
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    if name == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)


def storage_error(err: Exception, url: str) -> UsageError:
    """A storage failure as one line naming --storage."""
    if isinstance(err, ImportError):
        return UsageError(
            "--storage",
            f"no database driver installed for {redact_url(url)} (PostgreSQL: pip install 'fashion-hpo[postgres]'; "
            "MySQL: pip install pymysql)",
        )
    reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
    return UsageError("--storage", f"cannot use {redact_url(url)}: {reason}")


def open_study(settings: RunSettings) -> optuna.Study:
    """Create the study, or load it when it exists so that rerunning a command continues it."""
    try:
        study = optuna.create_study(
            study_name=settings.study_name,
            storage=settings.storage,
            sampler=make_sampler(settings.sampler, settings.seed),
            pruner=make_pruner(settings.pruner, settings.epochs),
            direction=DIRECTION,
            load_if_exists=True,
        )
    except (ImportError, sqlalchemy.exc.SQLAlchemyError) as err:
        raise storage_error(err, settings.storage) from None
    check_compatible(study, settings)
    return study


def check_compatible(study: optuna.Study, settings: RunSettings) -> None:
    """A continued study must optimize the same metric, in the same direction, over the same model kind."""
    if (
        study.direction.name.lower() != DIRECTION
        or study.user_attrs.get("metric", OPTIMIZED_METRIC) != OPTIMIZED_METRIC
    ):
        raise UsageError(
            "--study-name",
            f"study {settings.study_name!r} exists with another objective ({study.direction.name.lower()} "
            f"{study.user_attrs.get('metric', 'an unknown metric')}, not {DIRECTION} {OPTIMIZED_METRIC}); "
            "choose another name",
        )
    study.set_user_attr("metric", OPTIMIZED_METRIC)
    kind = study.user_attrs.get("model")
    if kind is None:
        study.set_user_attr("model", settings.model)
    elif kind != settings.model:
        raise UsageError(
            "--model",
            f"study {settings.study_name!r} searches {kind!r} models; use --model {kind} or another --study-name",
        )
    return study


def load_existing_study(settings: RunSettings) -> optuna.Study:
    """The study named in the settings, which must already exist in the storage."""
    try:
        return optuna.load_study(study_name=settings.study_name, storage=settings.storage)
    except KeyError:
        raise UsageError(
            "--study-name", f"no study {settings.study_name!r} in {redact_url(settings.storage)}"
        ) from None


def run_search(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    settings: RunSettings,
    callbacks: Sequence[Callback] = (),
    show_progress_bar: bool = True,
) -> None:
    """Run trials until `n_trials` or `timeout` is reached; a failing trial does not stop the study."""
    study.optimize(
        objective,
        n_trials=settings.n_trials,
        timeout=settings.timeout or None,
        callbacks=list(callbacks),
        catch=(Exception,),
        show_progress_bar=show_progress_bar,
    )


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """How many trials finished, and how many of them completed, were pruned, or failed."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    counts = {
        "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED),
        "failed": states.count(TrialState.FAIL),
    }
    return {"finished": sum(counts.values()), **counts}


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial, or None when no trial completed."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial if complete else None
