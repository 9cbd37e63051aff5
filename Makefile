# Developer shortcuts; scripts/setup.sh must have created .venv first.
.PHONY: test test-unit test-full typecheck lint

test:  ## the inner loop: the unit and integration tiers (every test not marked slow)
	. .venv/bin/activate && pytest -m "not slow" -q

test-unit:  ## the unit tier: synthetic data, no store or service
	. .venv/bin/activate && pytest -m "not slow and not integration" -q

test-full:  ## what CI runs (the README's test command): lint, types, layer contracts, then every test
	. .venv/bin/activate && ruff check && mypy && lint-imports && pytest

typecheck:
	. .venv/bin/activate && mypy

lint:
	. .venv/bin/activate && ruff check && ruff format --check
