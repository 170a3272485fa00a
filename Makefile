# Neuro Radix: chest-CT AI node for Orthanc / DICOMweb.
# `make demo` sets everything up on a fresh Debian 12 machine and runs the main job; `make test` runs the tests.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VAR ?= var
# Where `neuroradix viewer` (and the browser tests) find app-config.js and OHIF's node_modules.
export NEURORADIX_VIEWER_DIR ?= $(CURDIR)/viewer
TORCH_VERSION ?= 2.13.0
DEBIAN_PACKAGES := orthanc orthanc-python orthanc-dicomweb orthanc-gdcm orthanc-postgresql dicom3tools dcmtk chromium poppler-utils postgresql
# make up LEDGER=postgresql ORTHANC_INDEX=postgresql: both on a local cluster in $(VAR)/postgres (docs/scale-out.md)
LEDGER ?=
ORTHANC_INDEX ?= sqlite
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help setup system-deps venv viewer-deps demo lint test test-fast up down status bench viewer train-smoke clean

help:
	@echo "make demo        set up, start the node, send a real chest CT, print the stored results"
	@echo "make test        make lint, then the test suite (unit + real Orthanc + browser)"
	@echo "make lint        ruff (lint + format check) and mypy, configured in pyproject.toml"
	@echo "make up / down   run / stop the node in the background (writes $(VAR)/node.env)"
	@echo "make viewer      open the node's results in OHIF (http://127.0.0.1:3000)"
	@echo "make bench       stage timings, written to docs/benchmarks.md"
	@echo "make train-smoke train all three stages on a miniature dataset (CPU, minutes)"

setup: system-deps venv viewer-deps

# Debian packages: Orthanc and its plugins, the DICOM validator, dcmtk, chromium for the viewer test.
system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

# torch first and pinned (an unpinned torch pulls a multi-GB CUDA build), then the project.
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[worker,training,dev]'
	touch $@

# OHIF's prebuilt viewer from npm (no browser download: the test drives Debian's chromium).
viewer-deps: viewer/node_modules/.installed
viewer/node_modules/.installed: viewer/package.json viewer/package-lock.json
	npm ci --prefix viewer --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

demo: setup
	$(PY) -m neuroradix.cli demo --var $(VAR)

# The lint and type gate (settings in pyproject.toml); `make test` runs it first.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Under CI (.ci/run sets CI=1) a skipped test fails: tests/conftest.py turns every skip into a failure.
test: setup lint
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not integration and not browser and not slow"

up: setup
	$(PY) -m neuroradix.cli up --var $(VAR) --ledger "$(LEDGER)" --orthanc-index $(ORTHANC_INDEX)

down:
	@if [ -x $(PY) ]; then $(PY) -m neuroradix.cli down --var $(VAR); else echo "nothing to stop"; fi

status: venv
	$(PY) -m neuroradix.cli status --var $(VAR)

viewer: up
	$(PY) -m neuroradix.cli viewer --env-file $(VAR)/node.env

bench: setup
	$(PY) scripts/bench.py --models --out docs/benchmarks.md
	$(PY) scripts/bench_scale.py --studies 40 --workers 1 2 3 --markdown docs/benchmarks.md

# ENCODER=vit: the contrastive 3D ViT, the head on its tokens and a vit release instead of stages 1-3
ENCODER ?= swinunetr
train-smoke: venv
	$(PY) -m neuroradix.cli train-smoke --encoder $(ENCODER) --work $(VAR)/train-smoke
	if [ "$(ENCODER)" = swinunetr ]; then $(PY) -m pytest -q -m smoke tests/training -k "not smoke_pipeline"; fi  # resume after SIGKILL, torchrun

clean: down
	rm -rf $(VAR)
