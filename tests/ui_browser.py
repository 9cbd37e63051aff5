"""A user's first look at a finished study in MLflow's UI, driven in a real browser (Debian's Chromium through
Playwright): shared by tests/test_ui.py and scripts/ui_screenshots.py, which regenerates the README's screenshots.

The walk starts from the link the study printed and checks what a user would: the runs view (not the GenAI
overview) lists the study's run with its datasets; expanding it shows one child run per trial; a pruned trial's page
says Killed; a complete trial's learning curve has one point per epoch; the Model registry lists the champion.
Each step saves a screenshot, and a step that breaks says which one it was."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import optuna
from playwright.sync_api import Page, sync_playwright

from tests.conftest import RUN_SCOPE_VARIABLES, TrackingServer

CHROMIUM = "/usr/bin/chromium"  # Debian's package: Playwright must not download its own browser
STUDY_NAME = "fashion-mnist-mlp"
REGISTERED_MODEL = "fashion-mnist-classifier"
EPOCHS = 2
# A small study that finishes in seconds and prunes deterministically: successive halving keeps at epoch 1 only a
# trial that beats every earlier one there, and with this seed trial 3 does not.
STUDY_FLAGS = [
    "--n-trials", "4", "--epochs", str(EPOCHS), "--max-train-samples", "1000", "--refit-epochs", "1",
    "--pruner", "successive-halving", "--seed", "42", "--no-baseline-trial", "--no-progress-bar",
]  # fmt: skip
VIEWPORT = {"width": 1400, "height": 800}
STEP_TIMEOUT_MS = 90_000  # a page of MLflow's UI can take tens of seconds to render on two busy cores


class StepFailed(AssertionError):
    """A step of the walk did not show what a user should see."""


@dataclass(frozen=True)
class FinishedStudy:
    """A study run by `fashion-hpo study` in `folder`, with what it printed at the end."""

    folder: Path
    output: str

    def printed(self, label: str) -> str:
        """The rest of the line that starts with `label` in the study's output."""
        found = re.search(rf"^{re.escape(label)} (.+)$", self.output, re.MULTILINE)
        if found is None:
            raise StepFailed(f"step 'printed link': no line {label!r} at the end of the study:\n{self.output[-2000:]}")
        return found.group(1).strip()

    @property
    def link(self) -> str:
        """The link to the runs view that the study printed."""
        return self.printed("Compare the trials:")

    @property
    def ui_command(self) -> str:
        """The `mlflow ui` command the study said to start first."""
        return self.printed("Start MLflow's UI:")


def run_study(folder: Path, data_dir: Path) -> FinishedStudy:
    """Run the small study in `folder` as a user would: MLflow's default store (./mlflow.db), no tracking variable."""
    env = {k: v for k, v in os.environ.items() if k not in (*RUN_SCOPE_VARIABLES, "MLFLOW_TRACKING_URI")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [sys.executable, "-m", "fashion_hpo", "study", "--data-dir", str(data_dir), *STUDY_FLAGS]
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise StepFailed(f"step 'study': fashion-hpo study exited {result.returncode}:\n{output[-3000:]}")
    return FinishedStudy(folder, output)


class MlflowUi(TrackingServer):
    """The `mlflow ui` command a study printed, started in the study's folder on a free loopback port."""

    def __init__(self, folder: Path, printed_command: str) -> None:
        super().__init__(folder, backend_store_uri="")
        self.printed_command = printed_command

    def command(self) -> list[str]:
        """The printed command, with this interpreter's `mlflow` and the loopback port."""
        program, *args = shlex.split(self.printed_command)
        return [str(Path(sys.executable).parent / program), *args, "--host", "127.0.0.1", "--port", str(self.port)]


@contextmanager
def mlflow_ui(study: FinishedStudy) -> Iterator[MlflowUi]:
    """The study's `mlflow ui`, answering, stopped (by process group) when the block ends."""
    server = MlflowUi(study.folder, study.ui_command)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def on_server(link: str, server_url: str) -> str:
    """The printed link, pointed at the server's actual address (the test's port instead of 5000)."""
    parts = urlsplit(link)
    return server_url + link[len(f"{parts.scheme}://{parts.netloc}") :]


@contextmanager
def browser_page() -> Iterator[Page]:
    """A Chromium page as a new user's: empty local storage, so MLflow's UI starts in its default (GenAI) mode."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
            page.set_default_timeout(STEP_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


class Walk:
    """The steps of a user's walk through the study in MLflow's UI, one screenshot each in `shots`."""

    def __init__(self, page: Page, study: FinishedStudy, server_url: str, shots: Path) -> None:
        self.page, self.study, self.server_url, self.shots = page, study, server_url, shots
        self.taken: dict[str, Path] = {}  # step name -> its screenshot

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Run one step; save its screenshot; if it breaks, say which step (with the screenshot of the failure)."""
        shot = self.shots / f"{len(self.taken) + 1:02d}-{name.replace(' ', '-')}.png"
        try:
            yield
            self.close_popups()
        except Exception as err:
            failed = shot.with_stem(shot.stem + "-FAILED")
            self.page.screenshot(path=failed)
            raise StepFailed(f"step {name!r} broke (screenshot {failed}): {err}") from err
        self.page.screenshot(path=shot)
        self.taken[name] = shot

    def open_printed_link(self) -> str:
        """Open the printed link; the runs view lists the study's run. Returns the run's id."""
        with self.step("runs view"):
            self.page.goto(on_server(self.study.link, self.server_url))
            run_link = self.page.get_by_role("gridcell").get_by_role("link", name=STUDY_NAME, exact=True)
            run_link.wait_for()
            heading = self.page.get_by_role("heading", level=2).first.inner_text()
            assert heading.strip() == "Runs", f"the link opened {heading!r}, not the runs view"
            self.page.get_by_role("link", name="Model registry").wait_for()
            href = run_link.get_attribute("href") or ""
            return href.rstrip("/").rsplit("/", 1)[-1]

    def close_popups(self) -> None:
        """Close what MLflow's UI opens by itself over a page on a first visit (its Assistant panel, the Model
        registry's announcement), as a user would before reading the page."""
        closers = (
            self.page.get_by_role("dialog").get_by_role("button", name="Close"),
            self.page.locator('button[data-component-id="mlflow.assistant.chat_panel.close"]'),
        )
        for close in closers:
            if close.count() and close.first.is_visible():
                close.first.click()
                close.first.wait_for(state="hidden")

    def dataset_column(self, run_id: str) -> None:
        """The study run's Dataset cell names the training split it logged."""
        with self.step("dataset column"):
            cell = self.page.locator(f'[role="row"][row-id="{run_id}"] [col-id="attributes.`Dataset`"]')
            cell.get_by_text("fashion-mnist-train").first.wait_for()

    def expand_trials(self, trial_numbers: list[int]) -> None:
        """Expanding the study's run shows one child run per trial, named by its number."""
        with self.step("trials nested"):
            self.page.locator("button[data-component-id*='runnamecellrenderer']").first.click()
            for number in trial_numbers:
                self.page.get_by_role("link", name=f"trial-{number:04d}", exact=True).wait_for()
            children = self.page.get_by_role("link", name=re.compile(r"^trial-\d{4}$")).count()
            assert children == len(trial_numbers), f"{children} trial runs shown, {len(trial_numbers)} expected"

    def trial_status(self, number: int, status: str) -> None:
        """A trial's page shows its run's status (a pruned trial: Killed)."""
        with self.step(f"trial {number} {status.lower()}"):
            self.page.get_by_role("link", name=f"trial-{number:04d}", exact=True).click()
            self.page.get_by_text("Status", exact=True).wait_for()
            self.page.get_by_text(status, exact=True).wait_for()

    def switch_to_model_training(self) -> None:
        """A page reached without the link's workflowType shows the GenAI sidebar: README says to click Model
        training once, which the browser remembers; it opens the experiment's runs."""
        with self.step("switch to model training"):
            self.page.get_by_text("Model training", exact=True).click()
            self.page.get_by_role("link", name="Model registry").wait_for()
            self.page.get_by_role("gridcell").get_by_role("link", name=STUDY_NAME, exact=True).wait_for()

    def learning_curve(self, number: int) -> None:
        """A complete trial's Model metrics tab, searched for `val_`, charts val_accuracy with one point per epoch."""
        with self.step("learning curve"):
            trial = self.page.get_by_role("link", name=f"trial-{number:04d}", exact=True)
            if not trial.is_visible():
                self.page.locator("button[data-component-id*='runnamecellrenderer']").first.click()
            trial.click()
            self.page.get_by_text("Model metrics", exact=True).click()
            self.page.get_by_placeholder("Search metric charts").fill("val_")  # the curves, not the cost bars
            chart = self.page.get_by_test_id("experiment-view-compare-runs-card").filter(has_text="val_accuracy")
            chart.locator("path.point").first.wait_for()
            points = chart.locator("path.point").count()
            assert points == EPOCHS, f"val_accuracy has {points} points, one per epoch ({EPOCHS}) expected"

    def model_registry(self) -> None:
        """The sidebar's Model registry lists the registered model with its champion."""
        with self.step("model registry"):
            self.page.get_by_role("link", name="Model registry").click()
            row = self.page.get_by_role("row").filter(has_text=REGISTERED_MODEL)
            row.get_by_text("champion").wait_for()


def trial_states(study: FinishedStudy) -> dict[int, str]:
    """Each trial's final state, from the study's Optuna storage (the CLI's default, ./optuna.db)."""
    loaded = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{study.folder / 'optuna.db'}")
    return {trial.number: trial.state.name for trial in loaded.trials}


def walk_study(page: Page, study: FinishedStudy, server_url: str, shots: Path) -> Walk:
    """The whole walk, in a user's order; returns it with its screenshots."""
    states = trial_states(study)
    pruned = [number for number, state in states.items() if state == "PRUNED"]
    complete = [number for number, state in states.items() if state == "COMPLETE"]
    if not pruned or not complete:
        raise StepFailed(f"step 'study': the walk needs a pruned and a complete trial; the trials ended {states}")
    walk = Walk(page, study, server_url, shots)
    run_id = walk.open_printed_link()
    walk.dataset_column(run_id)
    walk.expand_trials(sorted(states))
    walk.trial_status(pruned[0], "Killed")
    walk.switch_to_model_training()
    walk.learning_curve(complete[-1])
    walk.model_registry()
    return walk
