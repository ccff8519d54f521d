# Two commands: `make run` and `make test`. Both create the virtual environment on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= config.yaml
PYTEST_ARGS ?=
SOAK_SECONDS ?= 3600

.PHONY: install system-deps run test lint model benchmarks soak clean

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
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; exit $$rc

# Remake the shipped default model from data that ships inside scikit-image (see README).
model: $(STAMP)
	$(PY) scripts/make_default_model.py --out models/default

benchmarks: $(STAMP)
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/quality.py

# An hour (SOAK_SECONDS) of the real daemon on a folder feed and an ffmpeg camera; exit 1 when RSS, fds,
# threads or p99 latency grow. tests/test_soak.py runs the same code for 2 minutes in `make test`. Then the
# SIGKILL hunt at 20 rounds (8 in `make test`, about 7.5 s a round).
soak: $(STAMP)
	$(PY) benchmarks/soak.py --seconds $(SOAK_SECONDS)
	SIGKILL_ROUNDS=20 $(PY) -m pytest -q tests/faults/test_faults_sigkill.py

clean:
	rm -rf $(VENV) var .pytest_cache
