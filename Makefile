# One command each: `make run` starts the daemon, `make test` runs the tests.
# Both create .venv and install what they need on a fresh machine: `make run` only
# what running needs, `make test` the test extras too.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HASH := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
RUN_STAMP := $(VENV)/.runtime-$(HASH)
STAMP := $(VENV)/.installed-$(HASH)
QUICK ?=

.PHONY: run test bench soak lint clean

# The runtime dependencies only (no moto, schemathesis, hypothesis, ruff): a quick first run.
$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	rm -f $(VENV)/.runtime-*
	touch $@

# Everything, test extras included; it satisfies `make run` as well.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,parquet]'
	rm -f $(VENV)/.installed-* $(VENV)/.runtime-*
	touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/eventstreamd run --config eventstreamd.toml

# Three xdist workers on two cores: most tests wait on daemons, receivers and servers
# (each worker has its own temp dirs, ports and nats-server); worksteal evens out the tail.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 3 --dist worksteal

# The long forms: 100 crashes instead of 10, and 10x the fuzz examples.
soak: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m soak -o addopts=""
	EVENTSTREAMD_FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_schemathesis.py tests/test_fuzz_publish.py tests/test_control_fuzz.py

bench: $(STAMP)
	$(BIN)/python -m bench $(if $(QUICK),--quick,)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

clean:
	rm -rf $(VENV) data .pytest_cache
