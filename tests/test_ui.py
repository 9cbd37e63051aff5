"""Comparing trials in MLflow's UI, in a real browser: Debian's Chromium, driven by Playwright, follows the link a
small finished study printed and checks what a user sees there (the walk itself is in tests/ui_browser.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.ui_browser import CHROMIUM, STUDY_NAME, browser_page, mlflow_ui, run_study, walk_study

LINK = r"http://127\.0\.0\.1:5000/#/experiments/(\d+)/runs\?workflowType=machine_learning"


@pytest.mark.slow  # a study on the real data, `mlflow ui`, Chromium: about a minute
def test_the_printed_link_opens_the_study_in_mlflow_ui(tmp_path: Path, real_data_dir: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no {CHROMIUM}: apt-get install chromium (Debian's; Playwright must not download a browser)")
    study = run_study(tmp_path, real_data_dir)
    link = re.fullmatch(LINK, study.link)
    assert link, f"step 'printed link': {study.link!r} is not the runs view of an experiment"
    assert study.ui_command == "mlflow ui", (
        f"step 'printed link': the default store needs no options, got {study.ui_command!r}"
    )
    with mlflow_ui(study) as server:
        experiment = MlflowClient(server.url).get_experiment_by_name(STUDY_NAME)
        assert experiment is not None and experiment.experiment_id == link.group(1), "step 'printed link': experiment"
        kind = experiment.tags.get("mlflow.experimentKind")
        assert kind == "custom_model_development", f"step 'experiment kind': tag mlflow.experimentKind is {kind!r}"
        with browser_page() as page:
            walk_study(page, study, server.url, tmp_path)
