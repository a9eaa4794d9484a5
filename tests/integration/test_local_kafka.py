"""The local broker's lifecycle: embedded brokers die with their parent; `start` detaches on purpose."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from consumers.local_broker import load_local_kafka

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "local_kafka.py"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def wait_dead(pid: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.2)
    return False


def test_embedded_broker_dies_with_a_killed_parent(tmp_path):
    code = (f"import sys, time; sys.path.insert(0, {str(SCRIPT.parent)!r}); from local_kafka import LocalKafka; "
            "k = LocalKafka().start(); print(k.proc.pid, flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    broker = int(parent.stdout.readline())
    assert alive(broker)
    parent.send_signal(signal.SIGKILL)  # no cleanup runs in the parent
    parent.wait()
    assert wait_dead(broker), "a broker outlived the process that started it"


def test_detached_start_outlives_its_command_until_stop(tmp_path):
    d = tmp_path / "k"
    r = subprocess.run([sys.executable, str(SCRIPT), "start", "--port", "0", "--dir", str(d)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "ready on 127.0.0.1:" in r.stdout, r.stderr
    pid = int((d / "broker.pid").read_text())
    try:
        time.sleep(1)
        assert alive(pid)  # the 'start' command has exited; the broker keeps running
        # ... in a JVM with the collector settings that keep its pauses short under a load generator's
        # megabyte requests (1 MiB regions made each a humongous allocation: docs/performance.md, sitting 10)
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        missing = [o for o in load_local_kafka().G1_OPTIONS if o not in args]
        assert not missing and "-XX:G1HeapRegionSize=8m" in args, f"broker JVM started without {missing}: {args}"
    finally:
        subprocess.run([sys.executable, str(SCRIPT), "stop", "--dir", str(d)], timeout=60)
    assert wait_dead(pid)
