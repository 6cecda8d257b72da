# Two entry points for a new user: `make quickstart` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch build to install; on this project's machines these wheels come from local disk.
TORCH ?= torch==2.14.1 torchvision==0.29.1

# The tested set: every installed version pinned (pip freeze of a venv the suite passed in). `make setup`, and so
# CI, installs exactly it (pip -c); `make lock` rewrites it from $(VENV); `make setup-latest` tries the newest.
LOCK := constraints/tested.txt
LATEST_VENV ?= .venv-latest

.PHONY: setup setup-latest lock quickstart test test-fast

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(LOCK) $(TORCH)
	$(BIN)/python -m pip install -q -c $(LOCK) -e '.[all,test]'
	touch $@

# Regenerate the lock from a venv the suite passed in: make test && make lock (or make lock VENV=<that venv>).
lock:
	@test -x $(BIN)/python || { echo "make lock: no venv at $(VENV); run make setup (or pass VENV=<venv>)"; exit 2; }
	{ echo "# The tested set: pip freeze of a venv the suite passed in (Python $$($(BIN)/python -c \
	'import platform; print(platform.python_version())'), $$(date -u +%Y-%m-%d)). Written by make lock;"; \
	echo "# used by make setup: pip install -c constraints/tested.txt -e '.[all,test]'"; \
	$(BIN)/python -m pip freeze --exclude-editable | grep -v -i -e '^rlg-bench' -e '^-e ' -e ' @ file:'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	@echo "wrote $(LOCK) from $(VENV) ($$(grep -vc '^#' $(LOCK)) packages)"

# Opt-in: the newest versions pip resolves (torch stays $(TORCH)) in a separate venv, and what changed against the
# lock. To test them: make test VENV=$(LATEST_VENV); to adopt them: make lock VENV=$(LATEST_VENV).
setup-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install -q $(TORCH)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade -e '.[all,test]'
	$(LATEST_VENV)/bin/python -m pip freeze --exclude-editable | $(PYTHON) constraints/changes.py $(LOCK)

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
