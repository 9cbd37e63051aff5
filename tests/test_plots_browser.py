"""An interactive plot opened in MLflow's artifact viewer with every request off the loopback blocked, as on an
air-gapped network: the page draws its plot from the plotly.js it carries."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import pytest
from playwright.sync_api import Frame, Page, Route, sync_playwright

from fashion_hpo.search.trials import trial_counts
from fashion_hpo.tracking.plots import log_plots
from tests.conftest import tracking_server
from tests.test_plots import synthetic_study
from tests.ui_browser import CHROMIUM, STEP_TIMEOUT_MS, VIEWPORT

LOOPBACK = {"127.0.0.1", "localhost"}


def loopback_only(route: Route) -> None:
    """Let a request through only if it stays on this machine (blob: and data: URLs have no host)."""
    parts = urlsplit(route.request.url)
    if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in LOOPBACK:
        route.abort("internetdisconnected")
    else:
        route.continue_()


def plot_frame(page: Page) -> Frame:
    """The frame in which MLflow's artifact viewer renders an HTML artifact (a blob: URL)."""
    page.locator("iframe").first.wait_for()
    frames = [frame for frame in page.frames if frame.url.startswith("blob:")]
    assert frames, f"no blob: frame in the artifact viewer; frames: {[f.url for f in page.frames]}"
    return frames[0]


@pytest.mark.slow  # `mlflow server` and Chromium: about half a minute
def test_an_html_plot_draws_in_mlflows_viewer_with_no_network(tmp_path: Path, tracking_uri: str) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no {CHROMIUM}: apt-get install chromium (Debian's; Playwright must not download a browser)")
    study = synthetic_study(20)
    with mlflow.start_run() as run:
        log_plots(study, n_complete=trial_counts(study)["complete"])
    page_path = (
        f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts/plots/parallel_coordinate.html"
    )
    with tracking_server(tmp_path, tracking_uri) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
            context.route("**/*", loopback_only)
            page = context.new_page()
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.goto(f"{server.url}/{page_path}")
            reached = page.evaluate("fetch('https://cdn.plot.ly/').then(() => true, () => false)")
            assert reached is False, "the network is not blocked: the test would prove nothing"
            frame = plot_frame(page)
            frame.locator(".js-plotly-plot .main-svg").first.wait_for()
            assert frame.get_by_text("Parallel Coordinate Plot").count(), "the plot's title is not drawn"
        finally:
            browser.close()
