# The two commands of the README: `make book` (train and build the book) and
# `make test`. Each creates or reuses .venv and installs what is missing.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= cpu
JOBS ?= 2
BOOK_HTML := _build/html

.PHONY: book book-only book-zip book-published test lint format bench system help

help:
	@echo "make book       train the $(PROFILE) sweep, execute the notebooks, build the book"
	@echo "make book-only  rebuild the book from the committed results (no training)"
	@echo "make book-zip   the built book as one archive to read offline"
	@echo "make test       run the test suite"
	@echo "make lint       ruff check and format check"
	@echo "make bench      run the benchmarks"

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

LINTED := duel tests benchmarks notebooks/generate.py

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

format: $(STAMP)
	$(VENV)/bin/ruff format $(LINTED)
	$(VENV)/bin/ruff check --fix $(LINTED)

# The main job: the sweep (resumable, skips finished runs), the analysis
# notebooks, the build. A second run with nothing changed only rebuilds.
book: $(STAMP) system
	$(PY) -m duel book --profile $(PROFILE) --jobs $(JOBS)

# The committed results (see the README) rebuilt into HTML: no training.
book-only: $(STAMP)
	$(PY) -m duel book --profile $(PROFILE) --build-only

# What the Pages workflow builds: the committed results when there are any,
# else a smoke sweep of a few minutes (the front page then says so).
book-published: $(STAMP)
	@if ls runs/$(PROFILE)/*/*/*/seed=*/summary.json >/dev/null 2>&1 \
	  && [ -f book/03_results.ipynb ]; then \
	  $(MAKE) book-only; \
	else \
	  echo "no committed $(PROFILE) results: building the smoke book"; \
	  $(MAKE) book PROFILE=smoke; \
	fi

book-zip:
	@test -f $(BOOK_HTML)/index.html || { echo "no book built yet: run make book or make book-only"; exit 1; }
	rm -f duel-book.zip
	cd $(dir $(BOOK_HTML)) && $(abspath $(PY)) -m zipfile -c ../duel-book.zip html
	@echo "wrote duel-book.zip: unzip it and open html/index.html"

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) -m benchmarks.run
