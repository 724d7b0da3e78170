# The two commands a newcomer needs: `make demo` and `make test`. Both set everything up first.
SHELL := /bin/bash
VENV := .venv/bin
PYTEST_ARGS ?=

.PHONY: install demo test lint unit bench faults faults-long mutate cluster-bin images clean

install:
	@scripts/install

lint: install
	$(VENV)/ruff check .
	$(VENV)/ruff format --check src tests bench testbench
	$(VENV)/mypy

cluster-bin: install
	@if [ -x scripts/test-cluster ]; then scripts/test-cluster build; fi

# The two container images (docs/images.md), cached outside the repository like the cluster binaries.
images: install
	@scripts/images build

test: install lint cluster-bin images
	$(VENV)/pytest $(PYTEST_ARGS)

demo: install
	PYTHONPATH=. $(VENV)/python scripts/demo.py

bench: install
	bench/run

# Mutation testing of the pure and fast modules (minutes; docs/testing.md has the scores).
mutate: install
	scripts/mutate

# Kill `certkeeper issue` before every one of its writes to the store (make test runs every 7th).
faults: install
	CERTKEEPER_FAULT_SWEEP=full $(VENV)/pytest tests/test_fault_sweep.py $(PYTEST_ARGS)

# The controller SIGKILLed 10 times while it issues 100 certificates (make test: 3 kills, 20 certificates).
faults-long: install cluster-bin
	CERTKEEPER_FAULTS_LONG=1 $(VENV)/pytest -s tests/kube/test_controller_faults.py $(PYTEST_ARGS)

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache demo-store bench/out mutants
