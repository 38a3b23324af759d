# Two commands on a fresh machine with only python3: `make run` and `make test`.
# uv is installed from PyPI into .tools/; the environment (.venv) comes from uv.lock.

PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
# `make run PORT=3001` when 3000 is taken.
PORT := 3000
STAMP := $(VENV)/.synced-$(shell $(PYTHON) -c "import hashlib,sys;print(hashlib.sha256(open('uv.lock','rb').read()+open('pyproject.toml','rb').read()).hexdigest()[:12])")
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)

.PHONY: setup run test test-fast demo bench clean help

help:
	@echo "make run    - set up, train the demo models if no champion exists, score, serve on :$(PORT) (PORT=N to change)"
	@echo "make test   - set up the environment and run the whole test suite"
	@echo "make bench  - run the benchmarks (slow; see BENCHMARKS.md)"

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

$(STAMP): uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --python "$$($(PYTHON) -c 'import sys;print(sys.executable)')"
	rm -f $(VENV)/.synced-*
	touch $@

setup: $(STAMP)

run: setup
	$(VENV)/bin/crm-scoring quickstart --port $(PORT)

demo: setup
	$(VENV)/bin/crm-scoring demo

test: setup
	$(VENV)/bin/python -m pytest

test-fast: setup
	$(VENV)/bin/python -m pytest -m "not slow"

bench: setup
	$(VENV)/bin/python benchmarks/bench_generate.py
	$(VENV)/bin/python benchmarks/bench_features.py
	$(VENV)/bin/python benchmarks/bench_rfm_vs_lifetimes.py
	$(VENV)/bin/python benchmarks/bench_ltv_fit.py
	$(VENV)/bin/python benchmarks/bench_batch.py
	$(VENV)/bin/python benchmarks/bench_online.py

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .hypothesis
