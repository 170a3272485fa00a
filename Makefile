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
# Orthanc itself is not among them: Debian 12's is 1.10.1 (CVE-2026-5437 ... 5445); `make orthanc` installs a current one.
DEBIAN_PACKAGES := debootstrap dicom3tools dcmtk chromium poppler-utils postgresql
# make up LEDGER=postgresql ORTHANC_INDEX=postgresql: both on a local cluster in $(VAR)/postgres (docs/scale-out.md)
LEDGER ?=
ORTHANC_INDEX ?= sqlite
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help setup system-deps venv viewer-deps orthanc orthanc-refresh demo lint test test-fast up down status bench viewer train-smoke clean

help:
	@echo "make demo        set up, start the node, send a real chest CT, print the stored results"
	@echo "make test        make lint, then the test suite (unit + real Orthanc + browser)"
	@echo "make test-fast   the unit tests only (no Orthanc, no browser, nothing slow): the edit loop"
	@echo "make lint        ruff (lint + format check) and mypy, configured in pyproject.toml"
	@echo "make up / down   run / stop the node in the background (writes $(VAR)/node.env)"
	@echo "make orthanc-refresh  reinstall Orthanc (>= 1.12.11, Debian sid) with today's packages"
	@echo "make viewer      open the node's results in OHIF (http://127.0.0.1:3000)"
	@echo "make bench       stage timings, written to docs/benchmarks.md"
	@echo "make train-smoke train all three stages on a miniature dataset (CPU, minutes)"

setup: system-deps venv viewer-deps orthanc

# Debian packages: Orthanc and its plugins, the DICOM validator, dcmtk, chromium for the viewer test.
system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

# Orthanc >= 1.12.11 with its Python, DICOMweb, GDCM and PostgreSQL plugins from Debian sid, bootstrapped
# (as root, once) into a cache folder that runs without root or chroot (inference/neuroradix/deploy/orthanc_dist.py):
# ~/.cache/neuroradix/orthanc-sid or NEURORADIX_ORTHANC_ROOT; `make orthanc-refresh` replaces it with today's
# packages. NEURORADIX_ORTHANC=host runs the host's own Orthanc instead (docs/security.md).
ORTHANC_DIST := $(PY) -m neuroradix.deploy.orthanc_dist
orthanc: venv
	@if [ "$${NEURORADIX_ORTHANC:-sid}" != host ]; then \
	  root="$$($(ORTHANC_DIST) root)"; mkdir -p "$$(dirname "$$root")"; \
	  $(ORTHANC_DIST) show >/dev/null 2>&1 || $(SUDO) $(ORTHANC_DIST) install --root "$$root"; \
	  $(ORTHANC_DIST) show; \
	fi

orthanc-refresh: venv
	root="$$($(ORTHANC_DIST) root)"; mkdir -p "$$(dirname "$$root")"; $(SUDO) $(ORTHANC_DIST) install --refresh --root "$$root"
	$(ORTHANC_DIST) show

# torch first and pinned (an unpinned torch pulls a multi-GB CUDA build), then the project.
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[worker,training,dev,published,published-merlin]'
	# The published models' reference packages (parity tests), without their torchvision: PyPI has only a
	# CUDA build, which breaks `import transformers` beside the CPU torch (pyproject.toml, docs/models.md).
	$(PY) -m pip install -q --no-deps colipri==0.1.3 dynamic-network-architectures==0.4.3 timm==1.0.22 merlin-vlm==0.0.7
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

# The edit loop: the unit tests only (no Orthanc, no browser, nothing marked slow).
test-fast: venv
	$(PY) -m pytest -q -m "not integration and not browser and not slow and not smoke and not encoders"

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
	$(PY) scripts/bench_triage.py --markdown docs/benchmarks.md  # 20 studies of 300x512x512, a 10 min outage

# ENCODER=vit: the contrastive 3D ViT, the head on its tokens and a vit release instead of the segmentation stage
ENCODER ?= swinunetr
train-smoke: venv
	$(PY) -m tests.training.smoke --encoder $(ENCODER) --work $(VAR)/train-smoke  # tests/training/smoke.py
	if [ "$(ENCODER)" = swinunetr ]; then $(PY) -m pytest -q -m smoke tests/training -k "not smoke_pipeline"; fi  # resume after SIGKILL, torchrun

clean: down
	rm -rf $(VAR)
