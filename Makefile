# Two commands do all the set-up on a fresh machine:
#   make demo   — create .venv if missing, install, run `retrec demo` on the embedded dataset (offline)
#   make test   — create .venv if missing, install, run the test suite (this is what .ci/run calls)
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REQ ?= requirements.txt

.PHONY: demo test lint install clean

$(STAMP): requirements.txt requirements-base.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r $(REQ)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/retrec demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider --durations=10 tests

lint: $(STAMP)
	$(BIN)/ruff check retrec tests benchmarks

clean:
	rm -rf $(VENV) runs
