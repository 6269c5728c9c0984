# `make train`: the built-in default run; `make test`: the test suite. Both set up .venv first when needed; the
# test targets also install the browser of the HTML-report test (scripts/setup.sh --browser).
.PHONY: setup setup-test train test test-all

setup:
	bash scripts/setup.sh

setup-test:
	bash scripts/setup.sh --browser

train: setup
	.venv/bin/tokenweight train

test: setup-test
	.venv/bin/python -m pytest -q

test-all: setup-test
	.venv/bin/python -m pytest -q -m "slow or not slow"
