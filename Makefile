# fleetwatch. `make demo` and `make test` install what they need on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DURATION ?= 60
PYTEST_ARGS ?=

.PHONY: demo test unit lint stack-up stack-down stack-status bench clean venv

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# grafana-client's HTTP library (niquests) brings urllib3-future, whose wheel replaces urllib3 for the
	# whole environment (elasticsearch and influxdb-client included) through a .pth hook. Built from source
	# with URLLIB3_NO_OVERRIDE it installs beside urllib3 instead.
	URLLIB3_NO_OVERRIDE=1 $(BIN)/pip install -q --no-binary urllib3-future -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

stack-up:
	scripts/stack.sh up

stack-down:
	scripts/stack.sh down

stack-status:
	scripts/stack.sh status

## The main job: simulator + pipeline against the local stack, live progress, then a summary.
demo: venv stack-up
	mkdir -p .fleetwatch
	$(BIN)/fleetwatch demo --config fleetwatch.example.toml --duration $(DURATION)

## Unit tests and integration tests against the real servers of the local stack.
test: venv stack-up
	$(BIN)/pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m dashboards.generate --check
	$(BIN)/python -m dashboards.grafana_alerts --check

## Benchmarks (results in bench/results/, summarised in BENCHMARKS.md). BENCH_READINGS=0, BENCH_LOGS=0 or
## BENCH_ALERTS=0 skips a part.
bench: venv stack-up
	if [ "$${BENCH_READINGS:-1}" != 0 ]; then $(BIN)/python -m bench.run; fi
	if [ "$${BENCH_LOGS:-1}" != 0 ]; then $(BIN)/python -m bench.logs.run; fi
	if [ "$${BENCH_ALERTS:-1}" != 0 ]; then $(BIN)/python -m bench.alerts; fi

clean:
	scripts/stack.sh down || true
	rm -rf .stack .fleetwatch $(VENV)
