# The two commands a fresh machine needs (see README):
#   make demo   – set up .venv, start a local Label Studio, run the main job on the sample images, push for review
#   make test   – set up .venv and run the test suite
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/clasp run --samples --out demo-output --label-studio-demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
