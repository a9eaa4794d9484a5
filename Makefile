# The two commands (README.md): `make demo` and `make test`.
# Both install everything they need first (deploy/setup.sh is idempotent).
VENV ?= .venv
PYTEST_ARGS ?= --durations=25  # the slowest tests in every CI log: what to trim when the suite grows

.PHONY: setup demo test bench
setup:
	@bash deploy/setup.sh

demo: setup
	$(VENV)/bin/audiostream demo

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
