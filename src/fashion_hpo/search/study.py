"""The Optuna study: sampler, pruner, storage, and the search loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import optuna
import sqlalchemy.exc
from optuna.trial import FrozenTrial

from fashion_hpo.core.constants import BASELINE, OBJECTIVE_DIRECTIONS
from fashion_hpo.core.errors import UsageError
from fashion_hpo.core.quiet import experimental_features
from fashion_hpo.core.settings import RunSettings, flag_of
from fashion_hpo.core.urls import redact_url
from fashion_hpo.search.samplers import TrialSeededSampler, make_pruner
from fashion_hpo.search.space import BASELINE_PARAMS
from fashion_hpo.storage.proxy import budgeted_storage, plain_storage
from fashion_hpo.storage.rdb import StaleTrialCallback
from fashion_hpo.storage.resilient import run_trials_here

Callback = Callable[[optuna.Study, FrozenTrial], None]

# What makes a study's trial scores comparable: the model kind, how long and on how many images each trial trains, and
# the seed that draws the train/validation split. A continued study keeps them; its budget, sampler and pruner may
# change. (`--max-train-samples auto` is stored as the number it stands for.)
TRIAL_SETUP = ("model", "epochs", "max_train_samples", "seed")
# What opening a study raises when its storage cannot be used (ConnectionError: no storage proxy answered).
STORAGE_ERRORS = (ImportError, ConnectionError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)


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
        storage = budgeted_storage(
            settings.storage, settings.n_trials, settings.heartbeat_interval, settings.grace_period, on_stale
        )
        run_trials_here(storage, settings.storage_outage_timeout)
        study = optuna.create_study(
            study_name=settings.study_name,
            storage=storage,
            sampler=TrialSeededSampler(settings.sampler, settings.seed, settings.startup_trials),
            # Optuna prunes single-objective studies only.
            pruner=make_pruner(settings.pruner if len(objectives) == 1 else "none", settings.epochs),
            directions=[OBJECTIVE_DIRECTIONS[name] for name in objectives],
            load_if_exists=True,
        )
    except STORAGE_ERRORS as err:
        raise storage_error(err, settings.storage) from None
    check_compatible(study, settings)
    with experimental_features():
        # optuna-dashboard and Optuna's plots then name the objective instead of "Objective 0".
        study.set_metric_names(list(objectives))
    if settings.baseline_trial and not settings.warm_start_from:  # a warm start brings its own known-good trials
        enqueue_baseline(study, settings.model)
    return study


def enqueue_baseline(study: optuna.Study, kind: str) -> None:
    """A new study's first trial trains the search space's baseline configuration (tagged `baseline`)."""
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(BASELINE_PARAMS[kind], user_attrs={BASELINE: True}, skip_if_exists=True)


def check_compatible(study: optuna.Study, settings: RunSettings) -> None:
    """A continued study must optimize the same objectives, in the same directions, over the same model kind."""
    names = list(settings.objective_names)
    stored = study.user_attrs.get("objectives", names)  # a study made elsewhere records none: its directions decide
    directions = [d.name.lower() for d in study.directions]
    if directions != [OBJECTIVE_DIRECTIONS[name] for name in names] or stored != names:
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
    for name in TRIAL_SETUP:
        if name not in recorded:  # a new study: this run's setup becomes the study's
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
        return optuna.load_study(study_name=settings.study_name, storage=plain_storage(settings.storage))
    except STORAGE_ERRORS as err:
        raise storage_error(err, settings.storage) from None
    except KeyError:
        raise UsageError(
            "--study-name", f"no study {settings.study_name!r} in {redact_url(settings.storage)}"
        ) from None
