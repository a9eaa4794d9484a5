"""Write model bundles (model.onnx + model.yaml): a fitted scikit-learn classifier (export_sklearn), or any
ONNX graph with the input it takes (write_bundle; the log-mel CNN, streamproc/training/cnn.py)."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np
import yaml

from ..inference import BUNDLE_FORMAT, DEFAULT_SILENCE_BELOW_DBFS, ModelBundle
from ..windowing import WindowSpec

INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"


def export_sklearn(model, spec: WindowSpec, out_dir: str | Path, *, task: str, version: str,
                   description: str, training: dict, evaluation: dict, check_X: np.ndarray | None = None) -> Path:
    """Convert ``model`` (predict_proba, classes_ = label strings) to ONNX and write the bundle.

    ``check_X``: windows whose ONNX scores must equal scikit-learn's (within 1e-4)
    before the bundle is written, so a conversion bug never ships.
    """
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    labels = [str(c) for c in model.classes_]
    onx = to_onnx(model, initial_types=[(INPUT_NAME, FloatTensorType([None, spec.n_features]))],
                  options={id(model): {"zipmap": False}}, target_opset=17)
    # skl2onnx leaves constants no node reads (the soft vote's 'classes_ind'); onnxruntime warns about
    # them at every load, so drop them here
    used = {name for node in onx.graph.node for name in node.input}
    kept = [t for t in onx.graph.initializer if t.name in used]
    del onx.graph.initializer[:]
    onx.graph.initializer.extend(kept)
    # skl2onnx names the outputs 'label' and 'probabilities'; keep only what we serve.
    inp = {"name": INPUT_NAME, "shape": [None, spec.n_features], "dtype": "float32",
           "feature_names": spec.feature_names()}
    check = None
    if check_X is not None and len(check_X):
        check = (check_X, model.predict_proba(check_X.astype(np.float32)))
    return write_bundle(onx.SerializeToString(), spec, out_dir, labels=labels, input_meta=inp, task=task,
                        version=version, description=description, training=training, evaluation=evaluation,
                        check=check, what="scikit-learn")


def write_bundle(onnx_bytes: bytes, spec: WindowSpec, out_dir: str | Path, *, labels: list[str], input_meta: dict,
                 task: str, version: str, description: str, training: dict, evaluation: dict,
                 check: tuple[np.ndarray, np.ndarray] | None = None, what: str = "the trained model") -> Path:
    """Write model.onnx and model.yaml (``input_meta``: model.yaml's input mapping, e.g.
    inference.logmel_input), then load it as the analyzer would. ``check``: (inputs, expected scores): the
    served scores must equal them within 1e-4, or the bundle is not trustworthy and this raises."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(onnx_bytes)
    meta = {
        "format": BUNDLE_FORMAT,
        "task": task,
        "version": str(version),
        "description": description,
        "labels": labels,
        "input": input_meta,
        "output": {"name": OUTPUT_NAME, "kind": "probabilities"},
        "window_spec": spec.to_dict(),
        **({"silence_below_dbfs": DEFAULT_SILENCE_BELOW_DBFS} if "silence" in labels else {}),  # docs/training.md
        "training": training,
        "evaluation": evaluation,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
    }
    (out / "model.yaml").write_text(yaml.safe_dump(meta, sort_keys=False, width=100))
    bundle = ModelBundle.load(out)  # what the analyzer would refuse is refused here, before anyone serves it
    if check is not None:
        got = bundle.predict(check[0])
        err = float(np.abs(got - check[1]).max())
        if err > 1e-4:
            raise RuntimeError(f"ONNX export disagrees with {what} by {err:.2e}; bundle not trustworthy")
    return out
