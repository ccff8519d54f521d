# Two commands: `make run` and `make test`. Both create the virtual environment on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= config.yaml
PYTEST_ARGS ?=
# pytest-xdist workers; a test file runs whole on one worker (its module fixtures, a daemon, are shared).
# PYTEST_WORKERS= (empty) runs the suite in one process.
PYTEST_WORKERS ?= -n 3 --dist loadfile
SOAK_SECONDS ?= 3600

.PHONY: install system-deps run test lint model bench benchmarks soak clean install-service

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

system-deps:
	bash scripts/install-system-deps.sh

run: $(STAMP)
	mkdir -p inbox
	$(VENV)/bin/monitor run --config $(CONFIG)

lint: $(STAMP)
	$(VENV)/bin/ruff check monitor tests benchmarks scripts

# pytest exits 5 when it collected no test: that is a failure of the suite, never a pass.
test: $(STAMP) system-deps lint
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_WORKERS) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; exit $$rc

# Remake the shipped default model from data that ships inside scikit-image (see README).
model: $(STAMP)
	$(PY) scripts/make_default_model.py --out models/default

# The benchmark suite (benchmarks/suite.py, a few minutes on 2 cores): a table, then one JSON object (last line;
# also written to BENCH_JSON). BENCH_ARGS=--quick: a ~1-minute smoke; BENCH_ARGS="--rss-images 100000": the full
# memory check.
BENCH_JSON ?= var/bench.json
BENCH_ARGS ?=
bench: $(STAMP)
	mkdir -p $(dir $(BENCH_JSON))
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) benchmarks/suite.py --json $(BENCH_JSON) $(BENCH_ARGS)

benchmarks: $(STAMP) bench
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/quality.py

# An hour (SOAK_SECONDS) of the real daemon on a folder feed and an ffmpeg camera; exit 1 when RSS, fds,
# threads or p99 latency grow. tests/test_soak.py runs the same code for 2 minutes in `make test`. Then the
# SIGKILL hunt at 20 rounds (8 in `make test`, about 7.5 s a round).
soak: $(STAMP)
	$(PY) benchmarks/soak.py --seconds $(SOAK_SECONDS)
	SIGKILL_ROUNDS=20 $(PY) -m pytest -q tests/faults/test_faults_sigkill.py

# Production install as a systemd service (scripts/install_service.py, stdlib only, no .venv needed): the unit
# files, the service user (sysusers.d), folders (tmpfiles.d), /etc/anomaly-monitor/config.yaml, the model and a
# venv with the runtime dependencies only, made by SERVICE_PYTHON. DESTDIR stages it all in a folder (with
# NO_VENV=1: a venv cannot be moved); INSTANCES="line2=9109 line3=9110" adds configs for anomaly-monitor@NAME.
DESTDIR ?=
PREFIX ?= /opt/anomaly-monitor
SERVICE_PYTHON ?= /usr/bin/python3
INSTANCES ?=
METRICS_HOST ?= 127.0.0.1
NO_VENV ?=
INSTALL_ARGS ?=
install-service:
	$(PYTHON) scripts/install_service.py --destdir '$(DESTDIR)' --prefix '$(PREFIX)' --python '$(SERVICE_PYTHON)' \
		--metrics-host '$(METRICS_HOST)' $(foreach i,$(INSTANCES),--instance '$(i)') $(if $(NO_VENV),--no-venv) \
		$(INSTALL_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache
