"""A real ``audiostream serve`` process on a free loopback port, and hostile files made at test time.

Memory is read from the server's /proc/<pid>/status: VmRSS now, VmHWM (the kernel's high-water mark,
which sees peaks between two reads). The bound every test checks is docs/security.md's formula:

    peak RSS <= base + max_concurrent * (BYTES_PER_SAMPLE * max_duration * model_sr + PER_REQUEST_FIXED)

with ``base`` the server's RSS once it listens (it warms up before listening).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# docs/security.md: the per-request worst case, measured (see "Memory bound")
BYTES_PER_SAMPLE = 8  # decoded float32 (4) and the int16 the engine reads (2), plus 2 of headroom
PER_REQUEST_FIXED = 32 << 20  # multipart parsing, the spooled upload, features and rows of one request
SR = 16000  # the default model's rate

LIMITS = {"max_upload_mb": 2, "max_duration": 60, "max_concurrent": 2, "body_timeout": 5, "header_timeout": 3}


def cli(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "audiostream"
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "streamproc.cli", *args]


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, limits: dict, log: list[str]):
        self.proc, self.url, self.limits, self.log = proc, url, limits, log
        self.host, self.port = url.split("//")[1].split(":")[0], int(url.rsplit(":", 1)[1])
        self.base_rss = self.status("VmRSS")

    def status(self, key: str) -> int:
        """VmRSS / VmHWM of the server process, in bytes."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise AssertionError(f"{key} not in /proc/{self.proc.pid}/status")

    @property
    def bound(self) -> int:
        """The documented peak RSS for this server's limits."""
        per_request = BYTES_PER_SAMPLE * self.limits["max_duration"] * SR + PER_REQUEST_FIXED
        return self.base_rss + self.limits["max_concurrent"] * per_request

    def assert_within_bound(self) -> None:
        hwm = self.status("VmHWM")
        assert self.proc.poll() is None, "the server died:\n" + "".join(self.log[-30:])
        assert hwm <= self.bound, (f"peak RSS {hwm >> 20} MiB over the documented bound {self.bound >> 20} MiB "
                                   f"(base {self.base_rss >> 20} MiB)")


def start_server(tmp_path: Path, **overrides) -> Server:
    limits = {**LIMITS, **overrides}
    args = ["serve", "--port", "0"]
    for k, v in limits.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    proc = subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TMPDIR": str(tmp_path)})
    log: list[str] = []
    found = threading.Event()
    url = []

    def pump():  # keep reading so the pipe never fills; the first line says where it listens
        for line in proc.stdout:
            log.append(line)
            m = re.search(r"serving on (http://\S+) ", line)
            if m and not url:
                url.append(m.group(1))
                found.set()
        found.set()

    threading.Thread(target=pump, daemon=True).start()
    if not found.wait(180) or not url:  # it warms up (imports, JIT) before it listens: slow on a loaded box
        proc.kill()
        raise AssertionError("serve did not start:\n" + "".join(log[-40:]))
    return Server(proc, url[0], limits, log)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = start_server(tmp_path_factory.mktemp("serve"))
    yield s
    s.proc.terminate()
    s.proc.wait(20)


# -- hostile files -----------------------------------------------------------------------------------------
def silence(path: Path, seconds: float, fmt: str, subtype: str | None = None, sr: int = SR) -> Path:
    """Digital silence written in blocks (the test process never holds it): compresses to almost nothing."""
    with sf.SoundFile(path, "w", sr, 1, format=fmt, subtype=subtype) as f:
        block = np.zeros(sr * 10, np.float32)
        left = int(seconds * sr)
        while left > 0:
            f.write(block[:min(left, len(block))])
            left -= len(block)
    return path


def unknown_length(path: Path) -> Path:
    """A FLAC whose STREAMINFO says 0 total samples ("unknown", allowed by the format)."""
    data = bytearray(path.read_bytes())
    data[21] &= 0xF0
    data[22:26] = b"\0\0\0\0"
    path.write_bytes(bytes(data))
    return path


def sox(*args: str) -> None:
    subprocess.run(["sox", *args], check=True, capture_output=True, timeout=120)
