# `make train`: the built-in default run; `make test`: the test suite. Both set up .venv first when needed.
.PHONY: setup train test test-all

setup:
	bash scripts/setup.sh

train: setup
	.venv/bin/tokenweight train

test: setup
	.venv/bin/python -m pytest -q

test-all: setup
	.venv/bin/python -m pytest -q -m "slow or not slow"
