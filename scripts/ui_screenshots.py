"""Regenerate the README's screenshots of MLflow's UI from a fresh small study, walked in Debian's Chromium exactly as
tests/test_ui.py walks it (so they show what the test checks, and never go stale).

Usage (from the repository, in its virtual environment): python scripts/ui_screenshots.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the walk lives in the test suite: tests/ui_browser.py

from tests.ui_browser import browser_page, mlflow_ui, run_study, walk_study  # noqa: E402

# The walk's step -> the screenshot in docs/ that README shows.
SCREENSHOTS = {"trials nested": "mlflow-runs-view.png", "learning curve": "mlflow-learning-curve.png"}


def main() -> None:
    """Run the study, walk it in the browser, copy the two screenshots to docs/."""
    with tempfile.TemporaryDirectory(prefix="ui-screenshots-") as tmp:
        folder = Path(tmp)
        study = run_study(folder, folder / "data")
        with mlflow_ui(study) as server, browser_page() as page:
            walk = walk_study(page, study, server.url, folder)
        for step, name in SCREENSHOTS.items():
            target = REPO / "docs" / name
            shutil.copyfile(walk.taken[step], target)
            print(f"{target.relative_to(REPO)}: {target.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
