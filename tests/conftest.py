import os

import numpy as np
import pytest
from hypothesis import settings

# Property-based tests (decoder fuzzing, API fuzzing) draw the same examples on every run unless
# AUDIOSTREAM_FUZZ_RANDOM=1: CI stays reproducible; set the variable to explore new inputs locally.
settings.register_profile("audiostream", derandomize=not os.environ.get("AUDIOSTREAM_FUZZ_RANDOM"), print_blob=True)
settings.load_profile("audiostream")


WORKER_BROKERS = {}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist, on the controller: which broker a worker's integration tests ran against."""
    broker = getattr(node, "workeroutput", {}).get("audiostream_broker")
    if broker:
        WORKER_BROKERS[node.gateway.id] = broker


def pytest_terminal_summary(terminalreporter):
    for worker, broker in sorted(WORKER_BROKERS.items()):
        terminalreporter.write_line(f"integration tests on {worker} ran against: {broker}")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
