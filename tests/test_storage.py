"""The shared study: the study-wide trial budget, what counts toward it, and samplers that keep workers apart."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from fashion_hpo.core.constants import BASELINE, INTERRUPTED
from fashion_hpo.core.errors import UsageError
from fashion_hpo.core.settings import RunSettings
from fashion_hpo.core.validation import check_scale_out
from fashion_hpo.search.loop import budget_left, run_search
from fashion_hpo.search.samplers import make_pruner, make_sampler
from fashion_hpo.search.space import BASELINE_PARAMS, suggest_config
from fashion_hpo.search.study import open_study
from fashion_hpo.storage.budget import Budget, count_budget
from fashion_hpo.storage.rdb import BudgetedStorage, StudyFull, budget_used, engine_url, retried_trial_number
from fashion_hpo.tracking.trials import running_trial


def uniform(trial: optuna.Trial) -> float:
    """A cheap objective over one float."""
    return trial.suggest_float("x", 0.0, 1.0)


def settings(tmp_path: Path, **changes: object) -> RunSettings:
    """Settings of a study in a SQLite file under `tmp_path`."""
    return RunSettings(**{"study_name": "budget", "storage": f"sqlite:///{tmp_path}/o.db", "timeout": 0, **changes})


def test_the_study_stops_at_its_total_and_a_rerun_adds_nothing(tmp_path: Path) -> None:
    run = settings(tmp_path, n_trials=5)
    run_search(open_study(run), uniform, run)
    run_search(open_study(run), uniform, run)
    study = open_study(run)
    assert len(study.trials) == 5 and budget_left(study, 5) == 0
    with pytest.raises(StudyFull):
        study.ask()


def test_two_workers_never_overshoot_the_total(tmp_path: Path) -> None:
    """Two study handles with their own samplers, as two processes would have, alternate asking for trials."""
    run = settings(tmp_path, n_trials=7)
    workers = [open_study(run), open_study(run)]
    asked = []
    for turn in range(10):
        try:
            asked.append(workers[turn % 2].ask())
        except StudyFull as full:
            assert full.running == 7
            break
    assert len(asked) == 7


def test_tpe_models_the_results_after_startup_trials(tmp_path: Path) -> None:
    """With --startup-trials 2, TPE's later draws move toward the maximum; with all 20 trials at random they do not."""
    late_means = []
    for startup in (2, 20):
        run = settings(tmp_path, n_trials=20, startup_trials=startup, study_name=f"s{startup}", baseline_trial=False)
        run_search(open_study(run), uniform, run)
        late = [t.params["x"] for t in open_study(run).trials[4:]]
        late_means.append(sum(late) / len(late))
    modelled, random = late_means
    assert modelled > random + 0.1, late_means


def test_workers_with_the_same_seed_draw_different_params_and_one_worker_is_reproducible(tmp_path: Path) -> None:
    run = settings(tmp_path, n_trials=8, sampler="random")
    workers = [open_study(run), open_study(run)]
    for turn in range(8):
        trial = workers[turn % 2].ask()
        workers[turn % 2].tell(trial, uniform(trial))
    shared = [t.params["x"] for t in workers[0].trials]
    assert len(set(shared)) == 8
    alone = settings(tmp_path / "again", n_trials=8, sampler="random")
    (tmp_path / "again").mkdir()
    run_search(open_study(alone), uniform, alone)
    assert [t.params["x"] for t in open_study(alone).trials] == shared, "trial k draws the same, whoever runs it"


def frozen(number: int, state: TrialState, **attrs: object) -> optuna.trial.FrozenTrial:
    """A finished trial with a number and optional user/system attributes."""
    trial = create_trial(
        state=state,
        value=0.5 if state == TrialState.COMPLETE else None,
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0, 1)},
        user_attrs=attrs.get("user_attrs", {}),
        system_attrs=attrs.get("system_attrs", {}),
    )
    trial.number = number
    return trial


def test_interrupted_and_retried_failures_do_not_use_the_budget() -> None:
    trials = [
        frozen(0, TrialState.COMPLETE),
        frozen(1, TrialState.PRUNED),
        frozen(2, TrialState.FAIL, user_attrs={"exception_type": "RuntimeError"}),  # its own error: counts
        frozen(3, TrialState.FAIL, user_attrs={INTERRUPTED: True}),  # Ctrl-C: rerun later
        frozen(4, TrialState.FAIL),  # its worker died ...
        frozen(5, TrialState.WAITING, system_attrs={"failed_trial": 4, "retry_history": [4]}),  # ... retried here
        frozen(6, TrialState.RUNNING),
    ]
    assert budget_used(trials) == 5


def test_workers_receive_the_settings_exactly() -> None:
    original = RunSettings(
        n_trials=9,
        model="cnn",
        workers=1,
        threads=3,
        run_name="s-worker-2",
        parent_run_id="abc",
        register=False,
        progress_bar=False,
        baseline_trial=False,
    )
    assert RunSettings.from_json(original.to_json()) == original


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"heartbeat_interval": 10, "grace_period": 10}, "--grace-period"),
        ({"workers": 2, "storage": "sqlite://"}, "--storage"),
        ({"workers": 2, "storage": "sqlite:///:memory:"}, "--storage"),
    ],
)
def test_scale_out_settings_that_cannot_work_name_their_flag(changes: dict[str, object], flag: str) -> None:
    with pytest.raises(UsageError, match=flag):
        check_scale_out(RunSettings(**changes))


def test_plain_postgresql_urls_use_the_psycopg_driver_of_the_extra() -> None:
    assert engine_url("postgresql://u:p@h:5/db") == "postgresql+psycopg://u:p@h:5/db"
    assert engine_url("sqlite:///o.db") == "sqlite:///o.db"


def test_a_new_study_first_trains_the_baseline_once_and_can_skip_it(tmp_path: Path) -> None:
    run = settings(tmp_path, n_trials=3, model="cnn")
    run_search(open_study(run), lambda trial: suggest_config(trial, "cnn").lr, run)
    trials = open_study(run).trials
    assert trials[0].params == BASELINE_PARAMS["cnn"] and trials[0].user_attrs == {BASELINE: True}
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert all(BASELINE not in t.user_attrs for t in trials[1:]), "reopening the study queues no second baseline"
    plain = settings(tmp_path, n_trials=1, study_name="plain", baseline_trial=False)
    assert open_study(plain).trials == []


@pytest.mark.parametrize(
    ("make", "name"),
    [(lambda name: make_sampler(name, 0, 10), "sampler"), (lambda name: make_pruner(name, 5), "pruner")],
)
def test_an_unknown_sampler_or_pruner_raises_instead_of_defaulting(make, name: str) -> None:
    with pytest.raises(ValueError, match=f"unknown {name} 'nope'"):
        make("nope")


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh storage: a SQLite file, or a new PostgreSQL database (skipped without one)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/o.db"
    new_database = request.getfixturevalue("new_database")
    return str(new_database())


def test_the_budget_counted_in_sql_is_the_one_counted_from_the_trials(storage_url: str) -> None:
    """The PRIVATE CONTRACT of storage/budget.py: its queries over Optuna's tables agree with budget_used on every
    kind of trial, including a retry's retry history and an INTERRUPTED attribute that is false."""
    study = open_study(RunSettings(study_name="sql", storage=storage_url, n_trials=100, baseline_trial=False))
    study.add_trials(
        [
            frozen(0, TrialState.COMPLETE),
            frozen(1, TrialState.PRUNED),
            frozen(2, TrialState.FAIL, user_attrs={"exception_type": "RuntimeError"}),  # counts
            frozen(3, TrialState.FAIL, user_attrs={INTERRUPTED: True}),  # does not
            frozen(4, TrialState.FAIL, user_attrs={INTERRUPTED: False}),  # counts
            frozen(5, TrialState.FAIL),  # retried by 6, which failed too, retried by 7: neither counts
            frozen(6, TrialState.FAIL, system_attrs={"failed_trial": 5, "retry_history": [5]}),
            frozen(7, TrialState.WAITING, system_attrs={"failed_trial": 5, "retry_history": [5, 6]}),
            frozen(8, TrialState.FAIL),  # counts
        ]
    )
    study.ask()  # runs the queued retry 7: RUNNING, still one place
    trials = study.get_trials(deepcopy=False)
    storage = BudgetedStorage(storage_url, 100, 60, 120, None)
    with storage.engine.connect() as conn:
        budget = count_budget(conn, study._study_id)
    assert budget == Budget(used=budget_used(trials), running=1) and budget.used == 6


def test_creating_a_trial_counts_the_budget_without_reading_the_trials(tmp_path: Path) -> None:
    storage = BudgetedStorage(f"sqlite:///{tmp_path}/o.db", 3, 60, 120, None)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "count")
    unread = AssertionError("the budget read the study's trials")
    with (
        mock.patch.object(BudgetedStorage, "get_all_trials", side_effect=unread),
        mock.patch.object(BudgetedStorage, "_get_trials", side_effect=unread),
    ):
        created = [storage._create_new_trial(study_id).number for _ in range(3)]
        with pytest.raises(StudyFull) as full:
            storage._create_new_trial(study_id)
    assert created == [0, 1, 2] and full.value.running == 3


def test_a_running_trial_is_read_alone_with_its_retry_attributes(tmp_path: Path) -> None:
    """running_trial reads the trial by its private `_trial_id` (see its docstring), never the study's trials."""
    study = open_study(settings(tmp_path, n_trials=5, baseline_trial=False))
    study.add_trials(
        [
            frozen(0, TrialState.FAIL),
            frozen(1, TrialState.WAITING, system_attrs={"failed_trial": 0, "retry_history": [0]}),
        ]
    )
    trial = study.ask()  # the queued retry
    with mock.patch.object(optuna.Study, "get_trials", side_effect=AssertionError("copied the study's trials")):
        view = running_trial(trial)
    assert (view.number, view.state, retried_trial_number(view)) == (1, TrialState.RUNNING, 0)
