"""Bad flags end in one line naming the flag, exit code 2, and nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fashion_hpo.cli.parser import build_parser, settings_from_args
from fashion_hpo.core.settings import RunSettings
from fashion_hpo.core.urls import redact_url
from tests.conftest import run_cli

BAD_FLAGS = [
    (["--n-trials", "0"], "--n-trials"),
    (["--n-trials", "-3"], "--n-trials"),
    (["--n-trials", "ten"], "--n-trials"),
    (["--timeout", "-1"], "--timeout"),
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "1.5"], "--epochs"),
    (["--seed", "-1"], "--seed"),
    (["--max-train-samples", "-100"], "--max-train-samples"),
    (["--max-train-samples", "Auto"], "--max-train-samples"),
    (["--model", "resnet"], "--model"),
    (["--pruner", "asha"], "--pruner"),
    (["--sampler", "grid"], "--sampler"),
    (["--device", "tpu"], "--device"),
    (["--storage", "not a url"], "--storage"),
    (["--storage", "redis://localhost:6379"], "--storage"),
    (["--storage", "sqlite:////no/such/folder/optuna.db"], "--storage"),
]


@pytest.mark.parametrize(("flags", "flag"), BAD_FLAGS)
def test_bad_flag_names_itself_and_writes_nothing(
    flags: list[str], flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run_cli(["study", "--data-dir", str(tmp_path / "data"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["data"]), "no tracking or study database written"


def test_data_dir_that_is_a_file_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("")
    assert run_cli(["study", "--data-dir", str(not_a_folder), "--storage", f"sqlite:///{tmp_path}/o.db"]) == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and "not a folder" in err
    assert not (tmp_path / "o.db").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="asking for CUDA is only an error where there is none")
def test_cuda_without_a_gpu_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["study", "--device", "cuda", "--data-dir", str(tmp_path)]) == 2
    assert "--device" in capsys.readouterr().err


def test_defaults_match_the_documented_ones() -> None:
    args = build_parser().parse_args(["study"])
    settings = settings_from_args(args)
    assert settings == RunSettings()
    assert (settings.n_trials, settings.timeout, settings.epochs) == (100, 600, 10)
    assert (settings.model, settings.pruner, settings.sampler, settings.device) == ("mlp", "median", "tpe", "auto")
    assert settings.study_name == "fashion-mnist-mlp"
    assert settings.storage == "sqlite:///optuna.db"
    assert settings.registered_model_name == "fashion-mnist-classifier"
    assert build_parser().parse_args(["study", "--model", "cnn"]).model == "cnn"
    assert settings_from_args(build_parser().parse_args(["study", "--model", "cnn"])).study_name == "fashion-mnist-cnn"


@pytest.mark.parametrize(
    ("flags", "samples"),
    [
        ([], 0),
        (["--model", "cnn"], 10_000),
        (["--model", "cnn", "--max-train-samples", "auto"], 10_000),
        (["--model", "cnn", "--max-train-samples", "0"], 0),
        (["--model", "mlp", "--max-train-samples", "2000"], 2000),
    ],
)
def test_trials_train_on_the_models_default_subset_unless_told(flags: list[str], samples: int) -> None:
    settings = settings_from_args(build_parser().parse_args(["study", *flags]))
    assert settings.max_train_samples == samples
    assert settings.loggable()["max_train_samples"] == str(samples), "logged as the number trained on"


def test_every_flag_has_help_with_its_default() -> None:
    study_parser = build_parser()._subparsers._group_actions[0].choices["study"]
    for action in study_parser._actions:
        if action.dest != "help":
            assert action.help and "default" in action.help, action.dest


def test_passwords_are_redacted_from_logged_settings() -> None:
    url = "postgresql+psycopg://optuna:s3cret@db.example:5432/optuna"
    assert redact_url(url) == "postgresql+psycopg://optuna:***@db.example:5432/optuna"
    assert "s3cret" not in str(RunSettings(storage=url).loggable())
    assert redact_url("sqlite:///optuna.db") == "sqlite:///optuna.db"


def test_console_exit_code_and_single_line_from_a_real_process(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fashion_hpo", "study", "--epochs", "-2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fashion-hpo study: error: argument --epochs: must be at least 1, got -2"
    ]
    assert list(tmp_path.iterdir()) == []


def test_openmp_threads_wait_passively_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    run_cli(["study", "--storage", "not a url", "--data-dir", str(tmp_path)])  # refused once the process is set up
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    run_cli(["study", "--storage", "not a url", "--data-dir", str(tmp_path)])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_a_mistyped_flag_suggests_the_nearest_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["study", "--n-trails", "5"]) == 2
    assert capsys.readouterr().err == (
        "fashion-hpo study: error: unrecognized arguments: --n-trails 5; did you mean --n-trials?\n"
    )


def test_an_undeclared_mlflow_run_parameter_is_named_in_mlprojects_words(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.tracking import MlflowClient

    run = MlflowClient().create_run("0")  # the run `mlflow run` makes, which passes `-P n_trial=5` as `--n_trial 5`
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    capsys.readouterr()
    assert run_cli(["study", "--n-trials", "100", "--n_trial", "5"]) == 2
    line = "-P n_trial is not a parameter of entry point main; did you mean -P n_trials?"
    assert capsys.readouterr().err.splitlines()[-1] == f"fashion-hpo study: error: {line}"
    assert MlflowClient().get_run(run.info.run_id).data.tags["mlflow.note.content"] == f"Not started: {line}"
