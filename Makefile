# First commands on a fresh machine: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
WORKDIR ?= demo_work

.PHONY: help venv demo demo-quick test test-slow test-gpu browser-deps bench clean

help:
	@echo "make demo        build data, train, evaluate and export the tiny demo model (CPU)"
	@echo "make demo-quick  the same in --quick mode (~3 minutes)"
	@echo "make test        the whole default test suite"
	@echo "make test-slow   slower tests (-m slow)"
	@echo "make test-gpu    GPU tests (-m gpu, needs CUDA)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch is pinned first so nothing below pulls a multi-GB CUDA build.
	$(PY) -m pip install -q "torch==2.13.0"
	DS_BUILD_OPS=0 $(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/videochat demo --workdir $(WORKDIR)

demo-quick: $(STAMP)
	$(VENV)/bin/videochat demo --workdir $(WORKDIR)-quick --quick

# Headless Chromium for the browser test (Debian packages, installed as root when missing).
browser-deps:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "warning: chromium install failed; the browser test will be skipped"; \
	fi

test: $(STAMP) browser-deps
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf $(WORKDIR) $(WORKDIR)-quick .pytest_cache
