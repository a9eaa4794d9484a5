"""A second decoder, written in JavaScript from docs/wire-format.md alone (tests/clients/wire_decode.mjs),
decodes every good vector to the same fields and rejects every reject vector with the documented reason:
the page is precise enough for another client, and the vectors pin it."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "wire"
CLIENT = Path(__file__).resolve().parents[1] / "clients" / "wire_decode.mjs"


@pytest.fixture(scope="module")
def decoded():
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node on this machine: the independent JavaScript client cannot run")
    paths = sorted(VECTORS.glob("*.json")) + sorted((VECTORS / "reject").glob("*.json"))
    r = subprocess.run([node, str(CLIENT), *map(str, paths)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return {p: json.loads(line) for p, line in zip(paths, r.stdout.splitlines())}


def test_good_vectors_decode_to_their_fields(decoded):
    good = [p for p in decoded if p.parent == VECTORS]
    assert len(good) >= 4
    for path in good:
        want, got = json.loads(path.read_text()), decoded[path]
        assert "reason" not in got, (path.name, got)
        for field in ("key", "sample_rate", "channels", "n_frames", "encoding", "flags", "session_id"):
            assert got[field] == want[field], (path.name, field)
        for field in ("sequence", "sample_offset", "capture_time_ns"):  # 64-bit: strings in JSON from JS
            assert int(got[field]) == want[field], (path.name, field)
        assert got["samples"] == want["samples"], path.name


def test_reject_vectors_get_their_reason(decoded):
    rejects = [p for p in decoded if p.parent.name == "reject"]
    assert len(rejects) >= 20
    reasons = {p.name: (decoded[p].get("reason"), json.loads(p.read_text())["reason"]) for p in rejects}
    assert all(got == want for got, want in reasons.values()), {k: v for k, v in reasons.items() if v[0] != v[1]}
    assert len({want for _, want in reasons.values()}) >= 15  # every documented reason, not one reason many times
