"""librosa, imported so that processes starting together on a fresh install cannot corrupt numba's cache.

librosa compiles its numba functions with ``cache=True``. A ``@guvectorize`` function is cached as two
files written separately, and when two processes compile the same functions at once they can leave a
pair from different processes; the next process that loads that pair dies with a segmentation fault in
the GUFunc call (numba issue #10128, librosa #1998; seen here in ``beat_track`` after ``batch --workers``
and Spark's Python workers started together on a fresh virtualenv). Every GUFunc librosa defines has
explicit signatures, so it is compiled (or loaded) when its module is imported: importing those modules
once per process under an exclusive lock per machine means only one process ever compiles them, and the
others load a complete cache. Every audiostream module reaches librosa through ``librosa()``.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib
import logging
import os
import tempfile

log = logging.getLogger(__name__)

# librosa's modules that define @guvectorize functions (tests/unit/test_librosa_import.py checks the list
# against the installed librosa's source, so an upgrade that adds one fails a test instead of a worker)
GUFUNC_MODULES = ("librosa.util.utils", "librosa.beat", "librosa.core.audio", "librosa.core.pitch")

_module = None


def lock_path() -> str:
    """One lock per numba cache: beside NUMBA_CACHE_DIR when set, else in the temporary directory."""
    return os.path.join(os.environ.get("NUMBA_CACHE_DIR") or tempfile.gettempdir(), ".audiostream-numba.lock")


@contextlib.contextmanager
def _exclusive(path: str):
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:  # a read-only place: go on unlocked (as librosa itself would)
        log.debug("no numba cache lock at %s (%s)", path, exc)
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def librosa():
    """The librosa module, its GUFunc modules compiled or loaded once under the machine's lock."""
    global _module
    if _module is None:
        with _exclusive(lock_path()):
            for name in GUFUNC_MODULES:
                importlib.import_module(name)
            import librosa as lr
        _module = lr
    return _module
