"""MLproject and the docs' parameter table are generated from the settings declarations and cannot drift."""

from __future__ import annotations

import shlex

import pytest
import yaml

from fashion_hpo.cli.parser import build_parser, settings_from_args
from fashion_hpo.cli.reference import main, mlproject_text, parameters_markdown
from fashion_hpo.core.settings import RunSettings
from fashion_hpo.core.use_settings import PredictSettings
from tests.conftest import REPO


def test_mlproject_and_the_parameter_table_are_current() -> None:
    assert main(["--check", "--root", str(REPO)]) == 0, "run: python -m fashion_hpo.cli.reference"


def test_a_changed_declaration_is_caught(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "docs").mkdir()  # type: ignore[operator]
    (tmp_path / "MLproject").write_text(mlproject_text().replace('"100"', '"99"'))  # type: ignore[operator]
    (tmp_path / "docs" / "parameters.md").write_text(parameters_markdown())  # type: ignore[operator]
    assert main(["--check", "--root", str(tmp_path)]) == 1


@pytest.mark.parametrize(("entry_point", "expected"), [("main", RunSettings()), ("predict", PredictSettings())])
def test_each_entry_point_with_its_defaults_parses_to_the_default_settings(
    entry_point: str, expected: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FASHION_HPO_STORAGE", raising=False)
    spec = yaml.safe_load(mlproject_text())["entry_points"][entry_point]
    values = {name: shlex.quote(str(param["default"])) for name, param in spec["parameters"].items()}
    argv = shlex.split(spec["command"].format(**values))[3:]  # after `python -m fashion_hpo`
    assert settings_from_args(build_parser().parse_args(argv)) == expected
