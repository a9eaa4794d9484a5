"""The TensorFlow converter environment: a virtualenv of its own, made once in the cache.

Pretrained models published as TensorFlow or TFLite files (BirdNET, musicnn) are converted to ONNX on
the user's machine by a script run with this environment's Python. TensorFlow is about 1.5 GB and is
never needed to serve a model, so it stays out of the analyzer's environment (docs/models.md).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import BundleError

REQUIREMENTS = ("tensorflow-cpu==2.21.0", "tf2onnx==1.17.0")


def cache_root() -> Path:
    return Path(os.environ.get("AUDIOSTREAM_CACHE") or
                Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "audiostream")


def python(given: str | None = None, say=lambda msg: None) -> Path:
    """A Python with tensorflow and tf2onnx: ``given``, or the cached virtualenv (made on first use)."""
    if given:
        return Path(given)
    venv = cache_root() / "tf-converter"
    py = venv / "bin" / "python"
    stamp = venv / "requirements.txt"
    want = "\n".join(REQUIREMENTS) + "\n"
    if py.exists() and stamp.exists() and stamp.read_text() == want:
        say(f"converter environment: {venv}")
        return py
    say(f"making the converter environment {venv} ({', '.join(REQUIREMENTS)}; about 1.5 GB, once) ...")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", *REQUIREMENTS],
                       text=True, stderr=subprocess.PIPE)
    if r.returncode:
        raise BundleError(f"could not install the converter ({' '.join(REQUIREMENTS)}): {r.stderr.strip()[-600:]}")
    stamp.write_text(want)
    return py


def run(py: Path, script: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``script`` with the converter's Python, seeing only its own packages; TF's logging quiet."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(py), str(script), *args], env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
