# One-command set-up: every target creates .venv and installs what it needs.
#   make demo    train EigenProClassifier on MNIST (or bundled digits) and print accuracy and time
#   make test    run the whole test suite and the docstrings' examples (doctests)
#   make lint    ruff
#   make bench   every benchmark study, then the README tables (hours; see README.md)
#   make docs    the documentation site (Sphinx, warnings are errors) in docs/_build/html
#
# TORCH_SPEC picks the torch build installed first, before the package. Empty (the default)
# lets pip choose; CPU-only machines can save gigabytes with e.g.
#   make test TORCH_SPEC="torch==2.13.0"        (a CPU wheel, where one is cached locally)
#   make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.eigenpro-installed
DOCS_STAMP := $(VENV)/.eigenpro-docs-installed

.PHONY: demo test lint bench docs install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ -n "$(TORCH_SPEC)" ]; then \
		echo "installing $(TORCH_SPEC) first"; \
		$(PY) -m pip install -q $(TORCH_SPEC); \
	fi
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $(STAMP)

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e ".[test,bench,docs]"
	touch $(DOCS_STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest -q --doctest-modules tests eigenpro

lint: $(STAMP)
	$(VENV)/bin/ruff check eigenpro tests benchmarks examples docs
	$(VENV)/bin/ruff format --check eigenpro tests benchmarks examples docs

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# docs/generated holds autosummary's pages, rewritten from the docstrings at every build.
docs: $(DOCS_STAMP)
	rm -rf docs/generated
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache docs/_build docs/generated docs/_generated
