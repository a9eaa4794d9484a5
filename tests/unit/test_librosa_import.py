"""librosa reached through streamproc.librosa_import: its GUFunc modules compiled under one lock per machine
(numba #10128: processes compiling them at once can leave a mismatched cache that segfaults a later one)."""
from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from streamproc import librosa_import

REPO = Path(__file__).resolve().parents[2]


def test_every_librosa_module_with_a_gufunc_is_imported_under_the_lock():
    import librosa
    root = Path(librosa.__file__).parent
    defining = {".".join(("librosa",) + p.relative_to(root).with_suffix("").parts)
                for p in root.rglob("*.py") if re.search(r"guvectorize\(", p.read_text(encoding="utf-8"))}
    assert defining and defining <= set(librosa_import.GUFUNC_MODULES), defining - set(librosa_import.GUFUNC_MODULES)


def test_no_audiostream_module_imports_librosa_around_the_lock():
    """A bare `import librosa` in our code would compile outside the lock: only librosa_import may do it
    (report.py's librosa.display comes after the locked import)."""
    offenders = []
    for p in list((REPO / "streamproc").rglob("*.py")) + list((REPO / "consumers").rglob("*.py")):
        if p.name == "librosa_import.py":
            continue
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if re.match(r"\s*(import librosa\s*(#.*)?$|from librosa\b)", line):
                offenders.append(f"{p.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, offenders


def test_a_second_process_waits_for_the_first_to_finish_compiling():
    """While one process holds the machine's lock (compiling), another does not import librosa's GUFuncs;
    it goes on once the lock is free."""
    lock = os.open(librosa_import.lock_path(), os.O_RDWR | os.O_CREAT)  # the machine's lock, held ~3 s
    fcntl.flock(lock, fcntl.LOCK_EX)
    child = subprocess.Popen([sys.executable, "-c", "import sys; print('asking', flush=True); "
                              "from streamproc.librosa_import import librosa; librosa(); "
                              "print('beat' if 'librosa.beat' in sys.modules else 'no beat', flush=True)"],
                             cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "asking"
        time.sleep(3.0)  # librosa imports in ~1-2 s: long enough for an unlocked child to have finished
        assert child.poll() is None, "the child imported librosa while another process held the lock"
    finally:
        os.close(lock)
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0 and out.strip() == "beat"
