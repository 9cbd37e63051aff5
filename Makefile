# Developer shortcuts; scripts/setup.sh must have created .venv first.
.PHONY: test test-full typecheck lint

test:  ## the inner loop: every test not marked slow
	. .venv/bin/activate && pytest -m "not slow" -q

test-full: typecheck  ## what CI runs: the type check, then every test (benchmarks, end-to-end, real services, browser)
	. .venv/bin/activate && pytest

typecheck:
	. .venv/bin/activate && mypy

lint:
	. .venv/bin/activate && ruff check && ruff format --check
