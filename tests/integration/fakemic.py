"""A microphone for tests that PortAudio captures through its real ALSA path.

A private PulseAudio server exposes a capture source fed from a FIFO
(module-pipe-source, 16 kHz s16le mono); ALSA's ``pulse`` plugin
(libasound2-plugins) makes it the ``pulse`` input device that sounddevice lists.
A feeder thread writes into the FIFO at real-time pace, as a microphone delivers
audio: silence, or the known signal a test queued with ``play()``. Capture
through that path is sample-exact (no mixing, no resampling). Why not ALSA's ``file`` plugin alone: with no sound card its ``null``
slave does not pace capture (hundreds of millions of samples a second here).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np


class PulseMic:
    rate = 16000

    def __init__(self, workdir: Path):
        self.dir = Path(workdir)
        self.runtime = self.dir / "run"
        self.fifo = self.dir / "mic.fifo"
        self.proc = None
        self.fd = None
        self._pending = None
        self._lock = threading.Lock()
        self._closing = threading.Event()

    @property
    def env(self) -> dict:
        return {**os.environ, "XDG_RUNTIME_DIR": str(self.runtime),
                "PULSE_SERVER": f"unix:{self.runtime}/pulse/native"}

    def start(self) -> "PulseMic":
        if shutil.which("pulseaudio") is None:
            raise RuntimeError("pulseaudio is not installed (deploy/setup.sh installs it)")
        self.runtime.mkdir(parents=True, exist_ok=True)
        (self.dir / "mic.pa").write_text(
            "load-module module-native-protocol-unix\n"
            f"load-module module-pipe-source source_name=fakemic file={self.fifo} format=s16le rate={self.rate} "
            "channels=1\n"
            "set-default-source fakemic\n")
        self.proc = subprocess.Popen(
            ["pulseaudio", "-n", "-F", str(self.dir / "mic.pa"), "--daemonize=no", "--exit-idle-time=-1",
             "--disallow-exit", f"--log-target=file:{self.dir / 'pulse.log'}"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.fifo.exists() and subprocess.run(["pactl", "info"], env=self.env,
                                                     capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"PulseAudio did not start: {(self.dir / 'pulse.log').read_text()[-2000:]}")
        self.fd = os.open(self.fifo, os.O_WRONLY)  # kept open: re-opening the FIFO stalls the source
        self._feeder = threading.Thread(target=self._feed, daemon=True)
        self._feeder.start()
        return self

    def _feed(self, chunk: int = 1600) -> None:
        """Like a real microphone, always deliver audio at real-time pace: queued signals, else silence."""
        silence = bytes(2 * chunk)
        t0 = time.monotonic()
        k = 0
        while not self._closing.is_set():
            delay = t0 + k * chunk / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with self._lock:
                if self._pending is not None:
                    data, done = self._pending
                    piece, rest = data[:chunk], data[chunk:]
                    self._pending = (rest, done) if rest.size else None
                    if not rest.size:
                        done.set()
                    payload = piece.tobytes() + silence[2 * piece.size:]
                else:
                    payload = silence
            try:
                os.write(self.fd, payload)
            except (BrokenPipeError, OSError):
                return  # the server is going away
            k += 1

    def play(self, pcm: np.ndarray) -> threading.Event:
        """Queue int16 samples (a multiple of 100 ms) into the microphone; the event is set once delivered."""
        done = threading.Event()
        with self._lock:
            self._pending = (np.ascontiguousarray(pcm, dtype="<i2"), done)
        return done

    def stop(self) -> None:
        self._closing.set()
        if getattr(self, "_feeder", None) is not None:
            self._feeder.join(2)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
