# fleetwatch. `make demo` and `make test` install what they need on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DURATION ?= 60
PYTEST_ARGS ?=

.PHONY: demo test unit lint fuzz stack-up stack-down stack-status bench soak chaos clean venv sparkplug-proto

## The virtualenv holds fleetwatch's wheel, built from this checkout and installed as users install it (not
## editable), with the dev extras; rebuilt whenever a packaged file changed (scripts/install.sh). The dependencies
## are installed again when pyproject.toml changes: urllib3-future (grafana-client's niquests) is built from source
## with URLLIB3_NO_OVERRIDE=1 so it installs beside urllib3 instead of replacing it for the whole environment.
venv:
	PYTHON=$(PYTHON) VENV=$(VENV) scripts/install.sh

stack-up:
	scripts/stack.sh up

stack-down:
	scripts/stack.sh down

stack-status:
	scripts/stack.sh status

## The main job: simulator + pipeline against the local stack, live progress, then a summary.
## The local InfluxDB asks for credentials: the demo uses the admin scripts/stack.sh created, its password read
## from the stack's secrets file (the example config names no credentials).
demo: venv stack-up
	mkdir -p .fleetwatch
	FLEETWATCH_INFLUXDB_USERNAME=admin \
	FLEETWATCH_INFLUXDB_PASSWORD_FILE="$${FLEETWATCH_STACK_DIR:-$(CURDIR)/.stack}/secrets/influxdb-admin.password" \
	  $(BIN)/fleetwatch demo --config fleetwatch.example.toml --duration $(DURATION)

## Unit tests and integration tests against the real servers of the local stack.
test: venv stack-up
	$(BIN)/pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

## Property-based tests at 10,000 cases per property (CI runs the default few hundred within `make test`): the
## MQTT frame reader, the payload decoders and topic matching, syslog framing, every log parser, the config loader.
FUZZ_TESTS := tests/unit/test_frames_fuzz.py tests/unit/test_payloads_fuzz.py tests/unit/test_syslog_fuzz.py \
	tests/unit/test_log_parsers_fuzz.py tests/unit/test_config_fuzz.py
fuzz: venv
	FLEETWATCH_FUZZ_EXAMPLES=10000 $(BIN)/pytest $(FUZZ_TESTS) --timeout=3600 --hypothesis-show-statistics $(PYTEST_ARGS)

## Run from the checkout (the files under review), not the installed wheel.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m dashboards.generate --check
	$(BIN)/python -m dashboards.grafana_alerts --check

## The Sparkplug B payload module and its typing stub, generated from the schema with grpcio-tools' protoc.
SPARKPLUG := collectors/mqtt/sparkplug
sparkplug-proto: venv
	$(BIN)/python -m grpc_tools.protoc -I$(SPARKPLUG) --python_out=$(SPARKPLUG) --pyi_out=$(SPARKPLUG) \
		$(SPARKPLUG)/sparkplug_payload.proto

## Benchmarks (results in bench/results/, summarised in BENCHMARKS.md). BENCH_READINGS=0, BENCH_LOGS=0 or
## BENCH_ALERTS=0 skips a part.
bench: venv stack-up
	if [ "$${BENCH_READINGS:-1}" != 0 ]; then $(BIN)/python -m bench.run; fi
	if [ "$${BENCH_LOGS:-1}" != 0 ]; then $(BIN)/python -m bench.logs.run; fi
	if [ "$${BENCH_ALERTS:-1}" != 0 ]; then $(BIN)/python -m bench.alerts; fi
	if [ "$${BENCH_ALERTS:-1}" != 0 ]; then BENCH_ALERT_SERIES=100000 BENCH_ALERT_FLEET_RULES=1 BENCH_ALERT_PROBES=120 $(BIN)/python -m bench.alerts; fi
	if [ "$${BENCH_ALERTS:-1}" != 0 ]; then BENCH_ALERT_SERIES=100000 BENCH_ALERT_FLEET_RULES=1 BENCH_ALERT_PROBES=120 BENCH_ALERT_WARM_UP=1 $(BIN)/python -m bench.alerts; fi

## Steady load for SOAK_MINUTES (30): readings and rotated log lines together; memory must level off and no queue
## may grow (bench/soak.py; results in RELIABILITY.md).
soak: venv stack-up
	$(BIN)/python -m bench.soak

## Faults at seeded random moments for CHAOS_MINUTES (30; CHAOS_SEED picks the seed): kill -9 and restart, SIGSTOP,
## broker restart, InfluxDB and Elasticsearch stopped, log rotation bursts; then an exact count of readings, log
## lines, dead letters and alert notifications (bench/chaos.py; results in RELIABILITY.md). Restarts the local
## servers: run it on a stack of its own.
CHAOS_MINUTES ?= 30
chaos: venv stack-up
	CHAOS_MINUTES=$(CHAOS_MINUTES) $(BIN)/python -m bench.chaos

clean:
	scripts/stack.sh down || true
	rm -rf .stack .fleetwatch $(VENV) build dist
