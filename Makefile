# kattn — every target creates .venv when it is missing.
#   make reproduce   set up, run the experiment suite into runs/ (preset from settings.ini), build the site into _site/
#   make test        set up, check notebooks and library agree, run every notebook (nbdev-test), then pytest
# On a CUDA machine pass the torch you want:  make test TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PRESET ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.kattn-installed
FLAGS ?=

.PHONY: setup reproduce test sync-check nbtest pytest site data lab export clean-nbs help

help:
	@echo "make reproduce | make test | make site | make data | make lab | make export"

# nbdev-export rewrites pyproject.toml with the same content; reinstall only when its content changes.
PYHASH := $(VENV)/.pyproject.sha256
$(PYHASH): pyproject.toml
	@mkdir -p $(VENV); sha256sum pyproject.toml | cmp -s - $@ 2>/dev/null || sha256sum pyproject.toml > $@

$(STAMP): $(PYHASH)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

setup: $(STAMP)

export: setup
	$(BIN)/nbdev-export

# The library must be exactly what the notebooks export, and the notebooks must be clean.
sync-check: setup
	@$(BIN)/nbdev-export && $(BIN)/nbdev-clean
	@if [ -n "$$(git status --porcelain -- kattn nbs)" ]; then \
	  git status --short -- kattn nbs; git --no-pager diff --stat -- kattn nbs; \
	  echo "ERROR: kattn/ or nbs/ changed under nbdev-export/nbdev-clean: the library and the notebooks disagree." \
	       "Edit the notebooks (never kattn/*.py), run 'make export' and commit both."; exit 1; fi
	@echo "sync-check: library and notebooks agree"

nbtest: setup
	$(BIN)/nbdev-test $(if $(FLAGS),--flags "$(FLAGS)")

pytest: setup
	$(BIN)/python -m pytest tests

test: sync-check nbtest pytest

# The training studies read offline stand-ins (enwiki-106, prose, rt-snippets); fetching them takes seconds.
reproduce: setup
	$(BIN)/kattn data fetch enwiki-106 austen shakespeare web-bible rt-snippets ding-de-en
	$(BIN)/kattn reproduce $(if $(PRESET),--preset $(PRESET))

site: setup
	$(BIN)/kattn site

data: setup
	$(BIN)/kattn data fetch all

lab: setup
	$(BIN)/jupyter lab --no-browser --ip=127.0.0.1 --allow-root
