# lbm-gateway developer entry points. `make run` and `make test` work on a fresh Debian machine
# with Python 3.11: each sets up what it needs first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ./lbm-data
PYTEST_ARGS ?=

.PHONY: venv run test lint bench clean-venv

$(BIN)/lbm: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	# build the capture path's C helpers now, not later inside a hardened unit
	$(BIN)/python -m capture.build
	@touch $(BIN)/lbm

venv: $(BIN)/lbm

# The appliance's main job on the embedded default: local data dir, loopback ports, no external
# services. Ctrl-C stops every daemon.
run: venv
	$(BIN)/lbm --data-dir $(DATA) init
	$(BIN)/lbm --data-dir $(DATA) run

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: venv lint
	$(BIN)/pytest $(PYTEST_ARGS)

bench: venv
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,bench]'
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
