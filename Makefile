# The two commands: `make run` and `make test`. Everything else is a helper.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: help run test bootstrap lint typecheck pytest bench requirements clean

help:
	@echo "make run    start the platform (web, worker, beat; embedded PostgreSQL/Redis if none is reachable)"
	@echo "make test   lint, type-check and run the whole test suite, browser tests included"
	@echo "make bench  run the benchmarks in bench/"

bootstrap:
	@scripts/bootstrap.sh

run: bootstrap
	@$(PY) -m scripts.run

test:
	@scripts/bootstrap.sh --browser
	@$(MAKE) --no-print-directory lint typecheck
	@$(PY) -m scripts.services exec -- $(PY) -m pytest $(PYTEST_ARGS)

lint:
	@echo "==> ruff"
	@.venv/bin/ruff check .
	@.venv/bin/ruff format --check .

typecheck:
	@echo "==> mypy"
	@.venv/bin/mypy apps config scripts bench tests runtime

pytest:
	@$(PY) -m scripts.services exec -- $(PY) -m pytest $(PYTEST_ARGS)

bench: bootstrap
	@$(PY) -m scripts.services exec -- $(PY) -m bench.provisioning
	@$(PY) -m scripts.services exec -- $(PY) -m bench.api
	@$(PY) -m bench.sandbox
	@$(PY) -m scripts.services exec -- $(PY) -m bench.terminal
	@$(PY) -m scripts.services exec -- $(PY) -m bench.llm_gateway
	@$(PY) -m scripts.services exec -- $(PY) -m bench.llm_local
	@$(PY) -m scripts.services exec -- $(PY) -m bench.knowledge
	@$(PY) -m scripts.services exec -- $(PY) -m bench.agent_pool
	@$(PY) -m scripts.services exec -- $(PY) -m bench.agents

requirements:
	.venv/bin/pip-compile -q --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links requirements/base.in -o requirements/base.txt
	.venv/bin/pip-compile -q --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links requirements/dev.in -o requirements/dev.txt

clean:
	rm -rf .run staticfiles test-artifacts .mypy_cache .ruff_cache
