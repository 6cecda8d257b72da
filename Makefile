# Two entry points for a new user: `make quickstart` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch build to install; on this project's machines these wheels come from local disk.
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup quickstart test test-fast

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[all,test]'
	touch $@

quickstart: setup
	$(BIN)/python run.py experiment=quickstart

# Two pytest-xdist workers (one torch thread each, tests/conftest.py): the suite takes half the wall time of one
# process on 2 cores. Tests that share an expensive cached computation are kept on one worker (xdist_group).
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -q -rs -n $(TEST_WORKERS) --dist loadgroup

# A fast subset for a change to the library or the report: the core (guidance, denoiser, pairs, sampling
# on tiny models), statistics, tables, figures, headline and browser, the export, the analytic pairs, JPEG; no end-to-end run.
FAST_TESTS ?= tests/test_core.py tests/test_report.py tests/test_export.py tests/test_analytic.py tests/test_eval_jpeg.py
test-fast: setup
	$(BIN)/python -m pytest -q -rs -m "not slow" $(FAST_TESTS)
