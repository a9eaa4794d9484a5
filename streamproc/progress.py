"""Progress for long work: a redrawn line on a terminal, a line every 10% otherwise."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, what: str, total: int, stream=None, enabled: bool = True):
        self.what, self.total = what, max(int(total), 1)
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.monotonic()
        self._last_decile = -1

    def update(self, done: int, note: str = "") -> None:
        if not self.enabled:
            return
        frac = min(done / self.total, 1.0)
        elapsed = time.monotonic() - self.t0
        eta = f", ~{elapsed / frac - elapsed:.0f}s left" if 0 < frac < 1 else ""
        line = f"{self.what}: {done}/{self.total} ({frac:.0%}{eta}){' ' + note if note else ''}"
        if self.tty:
            print("\r" + line + "\033[K", end="" if done < self.total else "\n", file=self.stream, flush=True)
        elif int(frac * 10) > self._last_decile:
            self._last_decile = int(frac * 10)
            print(line, file=self.stream, flush=True)
