"""Set B rebuilt from the Debian archive at the pinned versions, every hash checked (one clip per label:
four packages, about 380 MB of downloads; the whole set is the same command without --only)."""
from __future__ import annotations

import subprocess

import pytest

from .helpers import cli

pytestmark = pytest.mark.integration


def test_set_b_rebuilds_from_the_archive_with_matching_hashes(tmp_path):
    out = tmp_path / "real-b"
    p = subprocess.run(cli("dataset", "debian", "--set", "b", "--only", "1", "--out", str(out)),
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    wavs = sorted(w.parent.name for w in out.rglob("*.wav"))
    assert wavs == ["environment", "music", "silence", "speech"]
    assert "license" in (out / "manifest.csv").read_text().splitlines()[0]
