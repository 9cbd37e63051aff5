"""The benchmark scripts run (in their --quick form), so they cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_pipeline_ratio_quick_run_reports_both_pipelines(real_data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "pipeline_ratio.json"
    script = REPO / "benchmarks" / "pipeline_ratio.py"
    command = [sys.executable, str(script), "--quick", "--data-dir", str(real_data_dir), "--output", str(output)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(output.read_text())
    assert len(report["trials"]) == 3
    assert report["seed_s"] > 0 and report["ours_s"] > 0
    assert report["ratio"] == report["seed_s"] / report["ours_s"]
    assert "goal >= 10" in result.stdout
