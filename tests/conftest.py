import os

import numpy as np
import pytest
from hypothesis import settings

# Property-based tests (decoder fuzzing, API fuzzing) draw the same examples on every run unless
# AUDIOSTREAM_FUZZ_RANDOM=1: CI stays reproducible; set the variable to explore new inputs locally.
settings.register_profile("audiostream", derandomize=not os.environ.get("AUDIOSTREAM_FUZZ_RANDOM"), print_blob=True)
settings.load_profile("audiostream")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
