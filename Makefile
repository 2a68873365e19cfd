# vallecorsa_ml — the two commands users run are `make run` and `make test`.
# Both create .venv and install the package (with its dev extra) when missing; nothing is installed by hand.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The install stamp is keyed by pyproject.toml's content, not its time: nbdev-export rewrites the file (same bytes)
# on every run, which would otherwise make the next `make run` reinstall the package.
STAMP := $(VENV)/.vml-installed-$(shell (sha256sum pyproject.toml 2>/dev/null || shasum -a 256 pyproject.toml) | cut -c1-16)
PROFILE ?= quick
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: run test docs lab export clean-nbs readme sysdeps install help models

help:
	@echo "make run     run every topic notebook (profile $(PROFILE)) -> runs/<timestamp>/report.html"
	@echo "make test    all tests: export check, nbdev-test, pytest (incl. docs build + Chromium check)"
	@echo "make docs    build the documentation site into _site/ (Quarto if installed and QUARTO=1, else offline)"
	@echo "make lab     open the notebooks in JupyterLab"
	@echo "make models  retrain the shipped models with their recipes (hours of CPU), then ship them and write their cards"

$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@rm -f $(VENV)/.vml-installed*; touch $(STAMP)

install: $(STAMP)

# System packages for the browser check: Debian's chromium (installed when missing and root is available).
sysdeps:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian chromium for the docs browser check"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core) >/dev/null; \
	  else echo "chromium is missing: run 'sudo apt-get install chromium' (needed by the docs browser check)" >&2; exit 1; fi; \
	fi

run: $(STAMP)
	$(BIN)/vml-run --profile $(PROFILE)

test: $(STAMP) sysdeps
	@echo "== nbdev-export must leave vallecorsa_ml/ unchanged"
	$(BIN)/nbdev-export
	@if [ -n "$$(git status --porcelain -- vallecorsa_ml)" ]; then \
	  git status --porcelain -- vallecorsa_ml; git --no-pager diff --stat -- vallecorsa_ml; \
	  echo "vallecorsa_ml/ is out of date with nbs/: run nbdev-export and commit" >&2; exit 1; fi
	@echo "== nbdev-test (on a copy of nbs/, outputs saved so that the docs build renders them without executing twice)"
	@rm -rf nbs_tested && mkdir nbs_tested && cp nbs/*.ipynb nbs_tested/
	$(BIN)/nbdev-test --n-workers 2 --save nbs_tested
	@echo "== pytest (CLI, bad inputs, end to end, docs build + headless Chromium check)"
	VML_DOCS_EXECUTED=nbs_tested $(BIN)/python -m pytest -q -p no:cacheprovider --durations=10 tests

docs: $(STAMP) sysdeps
	$(BIN)/vml-docs $(if $(QUARTO),--quarto,)

readme: $(STAMP)
	$(BIN)/vml-docs --readme

models: $(STAMP)
	$(BIN)/vml-calo-model retrain 3dgan-ds2
	$(BIN)/vml-calo-model retrain dit-ds2

lab: $(STAMP)
	$(BIN)/jupyter lab nbs

export: $(STAMP)
	$(BIN)/nbdev-export

clean-nbs: $(STAMP)
	$(BIN)/nbdev-clean
