"""deploy/kafka/local_kafka.py forks brokers from one long-lived thread (no broker needed here)."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

from consumers.local_broker import load_local_kafka


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_a_child_started_from_a_short_lived_thread_outlives_that_thread():
    """PR_SET_PDEATHSIG fires when the forking *thread* exits: a broker restarted from the chaos soak's bounce
    thread was SIGTERMed (exit 143) as soon as that thread returned. ``_spawn`` forks from one thread that
    lives as long as the process, so the child outlives the thread that asked for it."""
    lk = load_local_kafka()
    box = []
    th = threading.Thread(target=lambda: box.append(lk._spawn(["sleep", "30"], preexec_fn=lk._die_with_parent)))
    th.start()
    th.join()
    proc = box[0]
    try:
        time.sleep(0.5)  # (without _spawn, the SIGTERM arrives as the thread exits: well within this)
        assert proc.poll() is None, f"the child died with its thread: exit {proc.returncode}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def test_spawn_hands_back_the_error_of_a_failed_start():
    lk = load_local_kafka()
    with pytest.raises(FileNotFoundError):
        lk._spawn(["/nonexistent/java"], stdout=subprocess.DEVNULL)
