"""`python -m fashion_hpo.cli.worker`: one worker process of `fashion-hpo study --workers N`.

It reads its settings as JSON from standard input (exactly as the command that started it holds them: nothing is
lost in a round trip through flags, and no password reaches a command line), then searches like `study`."""

from __future__ import annotations

import sys

from fashion_hpo.cli.main import guarded, run_search_command
from fashion_hpo.core.settings import STUDY, RunSettings


def main() -> int:
    """Search the study with the settings given on standard input."""
    settings = RunSettings.from_json(sys.stdin.read())
    return guarded(f"fashion-hpo {STUDY}", lambda: run_search_command(STUDY, settings))


if __name__ == "__main__":
    raise SystemExit(main())
