"""The flags every benchmark script takes."""

from __future__ import annotations

import argparse
from pathlib import Path


def parse_args(doc: str, script: str, quick_help: str) -> argparse.Namespace:
    """--quick (a run of under a minute, which the tests execute), --data-dir and --output (JSON beside the script)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"a run of under a minute ({quick_help})")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="FashionMNIST folder (default: data)")
    parser.add_argument(
        "--output", type=Path, default=Path(script).with_suffix(".json"), help="JSON result file (default: beside it)"
    )
    return parser.parse_args()
