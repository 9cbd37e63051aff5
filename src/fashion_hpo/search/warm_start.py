"""Warm start: a new study's first trials are the best configurations of an earlier study in the same storage, or
the configuration of a registered model version; each checked against this study's space and setup first."""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass

import optuna
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from fashion_hpo.core.errors import UsageError
from fashion_hpo.core.settings import RunSettings
from fashion_hpo.model.architectures import build_model
from fashion_hpo.search.space import config_from_params
from fashion_hpo.storage.proxy import plain_storage
from fashion_hpo.training.costs import count_params

# The study user attribute (and the study run's tag) naming where a study started from; set once, so a rerun of
# the same command does not enqueue the configurations again.
WARM_START = "warm_start_from"
VERSION_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))")


@dataclass(frozen=True)
class Candidate:
    """A configuration to start from: its params, model kind, and where it came from (for the console)."""

    params: dict[str, object]
    kind: str
    origin: str


def from_study(name: str, settings: RunSettings) -> list[Candidate]:
    """The source study's best complete trials, best first, at most --warm-start-trials of them."""
    try:
        source = optuna.load_study(study_name=name, storage=plain_storage(settings.storage))
    except KeyError:
        raise UsageError("--warm-start-from", f"no study {name!r} in this --storage to start from") from None
    reverse = source.direction == optuna.study.StudyDirection.MAXIMIZE if len(source.directions) == 1 else True
    complete = source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ranked = sorted(complete, key=lambda t: t.values[0], reverse=reverse)[: settings.warm_start_trials]
    model = source.user_attrs.get("model", settings.model)
    return [
        Candidate(t.params, str(t.user_attrs.get("model", model)), f"trial {t.number} of {name} ({t.values[0]:.4f})")
        for t in ranked
    ]


def from_version(uri: str) -> list[Candidate]:
    """The configuration a registered version records (its `params` tag)."""
    match = VERSION_URI.fullmatch(uri)
    if match is None:
        raise UsageError("--warm-start-from", f"{uri!r} is neither a study name nor models:/NAME@ALIAS or /VERSION")
    client = MlflowClient()
    try:
        version = (
            client.get_model_version_by_alias(match["name"], match["alias"])
            if match["alias"]
            else client.get_model_version(match["name"], match["version"])
        )
    except MlflowException as err:
        raise UsageError("--warm-start-from", f"cannot resolve {uri}: {str(err).splitlines()[0]}") from None
    if "params" not in version.tags:
        raise UsageError("--warm-start-from", f"version {version.version} of {uri} records no params to start from")
    params = json.loads(version.tags["params"])
    return [Candidate(params, version.tags.get("model_kind", ""), f"version {version.version} of {match['name']}")]


def skip_reason(candidate: Candidate, settings: RunSettings) -> str | None:
    """Why a configuration cannot start this study (another model kind, outside its space, over --max-params)."""
    if candidate.kind and candidate.kind != settings.model:
        return f"a {candidate.kind} configuration, and this study searches {settings.model}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna's FixedTrial warns of a value outside the space's range
        try:
            config = config_from_params(candidate.params, settings.model)
        except (ValueError, KeyError, UserWarning) as err:
            return f"outside this study's space ({err})"
    n_params = count_params(build_model(config.model))
    if settings.max_params and n_params > settings.max_params:
        return f"{n_params} parameters > --max-params {settings.max_params}"
    return None


def warm_start(study: optuna.Study, settings: RunSettings) -> list[str]:
    """Enqueue the source's configurations that fit this study, once per study; returns what it did, a line each."""
    source = settings.warm_start_from
    if study.user_attrs.get(WARM_START):
        return []
    candidates = from_version(source) if source.startswith("models:/") else from_study(source, settings)
    lines = []
    for candidate in candidates:
        reason = skip_reason(candidate, settings)
        if reason is None:
            study.enqueue_trial(candidate.params, user_attrs={WARM_START: candidate.origin}, skip_if_exists=True)
            lines.append(f"Warm start: queued {candidate.origin}")
        else:
            lines.append(f"Warm start: skipped {candidate.origin}: {reason}")
    study.set_user_attr(WARM_START, source)
    return lines
