# The two commands of the README: `make book` (train and build the book) and
# `make test`. Each creates or reuses .venv and installs what is missing.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= cpu
JOBS ?= 1

.PHONY: book test lint format bench system clean-book help

help:
	@echo "make book   train the default sweep ($(PROFILE) profile) and build the book"
	@echo "make test   run the test suite"
	@echo "make lint   ruff check and format check"
	@echo "make bench  run the benchmarks"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

# Debian packages the project reads: the real Fashion-MNIST and, for the book's
# browser test, Chromium. Installed only where apt-get exists and we may use it.
system:
	@sh .ci/system-packages

test: $(STAMP) system
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check duel tests benchmarks
	$(VENV)/bin/ruff format --check duel tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format duel tests benchmarks
	$(VENV)/bin/ruff check --fix duel tests benchmarks

book: $(STAMP) system
	$(PY) -m duel demo --profile $(PROFILE)

bench: $(STAMP)
	$(PY) -m benchmarks.run
