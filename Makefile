# The two commands (README.md): `make demo` and `make test`.
# Both install everything they need first (deploy/setup.sh is idempotent).
VENV ?= .venv
# Two pytest-xdist workers, one test file each at a time (--dist loadfile keeps a module's shared broker
# or cluster in one worker): most integration tests wait on real-time audio and brokers, so the second
# worker fills the idle core. --durations: the slowest tests in every CI log, what to trim as it grows.
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=25

.PHONY: setup demo test bench
setup:
	@bash deploy/setup.sh

demo: setup
	$(VENV)/bin/audiostream demo

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
