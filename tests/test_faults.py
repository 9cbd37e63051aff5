"""Faults around a study: unreachable tracking, unusable storage, all trials failing, failing plots, and bad
flags fed systematically. Each ends in one clear line, a non-zero exit, and nothing half-written."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import mlflow
import optuna
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from fashion_hpo.core.errors import UsageError
from fashion_hpo.core.settings import RunSettings
from fashion_hpo.data.splits import FashionData
from fashion_hpo.pipeline import study as pipeline
from fashion_hpo.search.loop import run_search
from fashion_hpo.search.objective import make_objective
from fashion_hpo.search.study import load_existing_study, open_study, with_study_setup
from fashion_hpo.tracking.artifacts import log_plots
from tests.conftest import MLP_PARAMS, free_port, run_cli


def error_line(err: str) -> str:
    """The one error line of the CLI's stderr (MLflow may log INFO lines before it); no traceback."""
    errors = [line for line in err.splitlines() if line.startswith("fashion-hpo")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_unreachable_tracking_server_fails_fast_before_any_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    code = run_cli(["study", "--data-dir", str(tmp_path / "d"), "--storage", f"sqlite:///{tmp_path}/o.db"])
    assert code == 2 and time.monotonic() - start < 15
    err = error_line(capsys.readouterr().err)
    assert "MLFLOW_TRACKING_URI" in err and "cannot reach" in err
    assert not (tmp_path / "o.db").exists(), "no Optuna study or trial was created"


def test_existing_study_with_another_direction_is_refused(
    tmp_path: Path, tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path}/o.db"
    optuna.create_study(study_name="taken", storage=storage, direction="minimize")
    assert run_cli(["study", "--study-name", "taken", "--storage", storage, "--data-dir", str(tmp_path)]) == 2
    err = error_line(capsys.readouterr().err)
    assert "--study-name" in err and "another objective" in err
    assert len(optuna.load_study(study_name="taken", storage=storage).trials) == 0


@pytest.mark.parametrize(
    ("changed", "flag", "before"),
    [
        ({"model": "cnn"}, "--model", "mlp"),
        ({"epochs": 3}, "--epochs", "10"),
        ({"seed": 1}, "--seed", "42"),
        ({"max_train_samples": 1000}, "--max-train-samples", "0"),
    ],
)
def test_a_study_continued_with_another_trial_setup_is_refused(
    tmp_path: Path, changed: dict[str, object], flag: str, before: str
) -> None:
    first = RunSettings(study_name="setup", storage=f"sqlite:///{tmp_path}/o.db")
    open_study(first)
    with pytest.raises(UsageError) as refused:
        open_study(replace(first, **changed))
    assert refused.value.flag == flag and f"continue it with {flag} {before}," in str(refused.value)
    assert optuna.load_study(study_name="setup", storage=first.storage).user_attrs[flag[2:].replace("-", "_")] == (
        int(before) if before.isdigit() else before
    ), "the study keeps its setup"


def test_a_continued_study_may_change_its_budget_sampler_and_pruner(tmp_path: Path) -> None:
    first = RunSettings(study_name="setup", storage=f"sqlite:///{tmp_path}/o.db")
    open_study(first)
    open_study(replace(first, n_trials=50, timeout=60, sampler="random", pruner="none", refit_epochs=2))


def test_an_empty_study_made_before_its_setup_was_recorded_keeps_the_one_it_is_continued_with(tmp_path: Path) -> None:
    first = RunSettings(study_name="setup", storage=f"sqlite:///{tmp_path}/o.db", epochs=4)
    optuna.create_study(study_name="setup", storage=first.storage, direction="maximize")
    open_study(first)
    with pytest.raises(UsageError, match="--epochs 4, not 10"):
        open_study(replace(first, epochs=10))


def test_register_takes_the_studys_recorded_setup(tmp_path: Path) -> None:
    made = RunSettings(study_name="setup", storage=f"sqlite:///{tmp_path}/o.db", model="cnn", epochs=3, seed=7)
    open_study(made)
    register = RunSettings(study_name="setup", storage=made.storage)  # `fashion-hpo register` without those flags
    adopted = with_study_setup(register, load_existing_study(register))
    assert (adopted.model, adopted.epochs, adopted.max_train_samples, adopted.seed) == ("cnn", 3, 10_000, 7)


def test_another_trial_setup_on_the_command_line_is_one_line(
    tmp_path: Path, tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path}/o.db"
    open_study(RunSettings(study_name="setup", storage=storage, model="cnn"))  # 10,000 images per trial
    command = ["study", "--study-name", "setup", "--storage", storage, "--model", "cnn", "--max-train-samples", "0"]
    assert run_cli([*command, "--data-dir", str(tmp_path)]) == 2
    assert error_line(capsys.readouterr().err) == (
        "fashion-hpo study: error: argument --max-train-samples: study 'setup' trains its trials with "
        "--max-train-samples 10000, not 0; continue it with --max-train-samples 10000, or choose another --study-name"
    )
    trials = optuna.load_study(study_name="setup", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.WAITING], "only the baseline the first open queued; none started"


def test_storage_without_its_driver_names_the_fix(
    tmp_path: Path, tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = "mysql://optuna:secret@127.0.0.1:1/optuna"
    assert run_cli(["study", "--storage", storage, "--data-dir", str(tmp_path)]) == 2
    err = error_line(capsys.readouterr().err)
    assert "--storage" in err and "secret" not in err
    assert "pip install pymysql" in err, "the fix for this URL's driver"


def test_locked_sqlite_storage_is_one_line(
    tmp_path: Path, tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another process holds an exclusive lock on the study database."""
    import sqlite3

    storage_file = tmp_path / "o.db"
    holder = sqlite3.connect(storage_file, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        code = run_cli(["study", "--storage", f"sqlite:///{storage_file}", "--data-dir", str(tmp_path)])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 2
    assert "database is locked" in error_line(capsys.readouterr().err)


def test_unopenable_sqlite_storage_is_one_line(
    tmp_path: Path, tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "study.db"
    folder.mkdir()  # a folder where the database file should be
    assert run_cli(["study", "--storage", f"sqlite:///{folder}", "--data-dir", str(tmp_path)]) == 2
    assert "--storage" in error_line(capsys.readouterr().err)


def failing_objective(*args: object, **kwargs: object):
    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        raise RuntimeError("out of memory (simulated)")

    return objective


def test_all_trials_failing_registers_nothing_and_shows_the_first_error(
    tiny_cli: Callable[[list[str]], int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(pipeline, "make_objective", failing_objective)
    assert tiny_cli(["study", "--n-trials", "3"]) == 1
    out, err = capsys.readouterr()
    assert "Number of failed trials: 3" in out
    assert "No trial completed" in err and "RuntimeError: out of memory (simulated)" in err
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert sorted(run.info.status for run in runs) == ["FAILED", "FAILED", "FAILED", "FINISHED"]
    assert MlflowClient().search_registered_models() == []


def test_failing_plot_is_a_warning_not_a_lost_study(
    tiny_data: FashionData,
    tmp_path: Path,
    tracking_uri: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(MLP_PARAMS)
    study.optimize(make_objective(tiny_data, RunSettings(epochs=1, seed=0)), n_trials=1)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mlflow, "log_figure", disk_full)
    with mlflow.start_run(), caplog.at_level(logging.WARNING):
        log_plots(study, n_complete=1)
    assert "No space left on device" in caplog.text and "optimization_history" in caplog.text


def test_same_seed_gives_the_same_trials(tiny_data: FashionData, tmp_path: Path) -> None:
    """One worker on CPU: the same --seed reproduces the sampled params and the validation accuracies."""
    histories = []
    for run in range(2):
        settings_ = RunSettings(
            n_trials=4, epochs=2, seed=11, study_name="repro", storage=f"sqlite:///{tmp_path}/{run}.db"
        )
        study = open_study(settings_)
        objective = make_objective(tiny_data, settings_)
        run_search(study, objective, settings_)
        histories.append([(t.params, t.value) for t in study.trials])
    for (params_a, value_a), (params_b, value_b) in zip(*histories, strict=True):
        assert params_a == params_b
        assert value_a == pytest.approx(value_b, abs=1e-6) or value_a == value_b


INT_FLAGS = {"--n-trials": 1, "--timeout": 0, "--epochs": 1, "--seed": 0, "--max-train-samples": 0}
CHOICE_FLAGS = {
    "--model": ("mlp", "cnn"),
    "--pruner": ("median", "hyperband", "successive-halving", "none"),
    "--sampler": ("tpe", "random", "qmc"),
    "--device": ("auto", "cpu", "cuda"),
    "--promote": ("if-better", "always"),
}


def is_an_int_at_least(text: str, minimum: int) -> bool:
    """Whether the CLI accepts `text` for a flag taking integers >= minimum (it parses with int())."""
    try:
        return int(text) >= minimum
    except ValueError:
        return False


def not_an_int_at_least(minimum: int) -> st.SearchStrategy[str]:
    """Invalid by construction, so that no draw starts a real study: any text around a character no integer
    literal has, floats, integers below the minimum (huge negatives included), empty."""
    refused_by_int = st.builds(
        lambda before, bad, after: before + bad + after,
        st.text(max_size=6),
        st.sampled_from("x.e/?é"),
        st.text(max_size=6),
    )
    return st.one_of(
        refused_by_int,
        st.floats(allow_nan=True).map(repr),
        st.integers(max_value=minimum - 1).map(str),
        st.just(""),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(sorted(INT_FLAGS)), data=st.data())
def test_any_bad_integer_flag_exits_2_naming_it(
    flag: str, data: st.DataObject, capsys: pytest.CaptureFixture[str]
) -> None:
    value = data.draw(not_an_int_at_least(INT_FLAGS[flag]))
    assert not is_an_int_at_least(value, INT_FLAGS[flag]), f"{value!r} is valid: it would start a real study"
    assert run_cli(["study", f"{flag}={value}"]) == 2
    assert flag in error_line(capsys.readouterr().err)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(sorted(CHOICE_FLAGS)), value=st.text(max_size=20))
def test_any_unknown_choice_exits_2_naming_it(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assume(value not in CHOICE_FLAGS[flag])
    assert run_cli(["study", f"{flag}={value}"]) == 2
    assert flag in error_line(capsys.readouterr().err)
