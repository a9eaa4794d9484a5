"""Model bundles for tests: poison ones (a copy of the starter bundle with its model.onnx replaced), and an
untrained log-mel CNN (cnn_bundle)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

STARTER = Path(__file__).resolve().parents[1] / "models" / "starter" / "1"


def _graph(kind: str, n_in: int = 74, n_out: int = 3):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_in])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, n_out])
    w = np.zeros((n_in, n_out), np.float32)
    if kind in ("zeros", "nan"):  # every score 0 (well-formed; used with a wrong input width) or NaN
        b = np.full(n_out, 0.0 if kind == "zeros" else np.nan, np.float32)
        nodes = [helper.make_node("MatMul", ["features", "W"], ["z"]), helper.make_node("Add", ["z", "B"], ["probabilities"])]
    elif kind == "nan_at_runtime":  # sqrt(1 + mfcc_mean[0]): finite on the probe (0 and 1), NaN on real audio (mfcc0 < -1)
        w[0, :] = 1.0
        b = np.ones(n_out, np.float32)
        nodes = [helper.make_node("MatMul", ["features", "W"], ["z"]), helper.make_node("Add", ["z", "B"], ["s"]),
                 helper.make_node("Sqrt", ["s"], ["probabilities"])]
    else:
        raise ValueError(kind)
    g = helper.make_graph(nodes, kind, [x], [y], [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def poison_bundle(root: Path, kind: str) -> Path:
    """kind: corrupt (not ONNX), wrong_shape (input of 10 features), nan, nan_at_runtime."""
    dst = Path(root) / kind
    shutil.copytree(STARTER, dst)
    onnx_path = dst / "model.onnx"
    if kind == "corrupt":
        onnx_path.write_bytes(b"\x08\x07garbage" + bytes(range(256)) * 4)
    elif kind == "wrong_shape":
        onnx_path.write_bytes(_graph("zeros", n_in=10))
    else:
        onnx_path.write_bytes(_graph(kind))
    return dst


def cnn_bundle(root: Path, n_mels: int = 64) -> Path:
    """A logmel bundle with untrained weights, written the way train --family cnn writes one."""
    from streamproc.inference import logmel_input
    from streamproc.training.bundle import write_bundle
    from streamproc.training.cnn import init_params, to_onnx
    from streamproc.windowing import WindowSpec
    spec = WindowSpec()
    params = init_params(4, seed=0)
    inp = logmel_input(spec, 80.0)
    onnx_bytes = to_onnx(params, np.array([-50.0, 0.05], np.float32), inp["name"], "probabilities", n_mels,
                         spec.frames_per_window)
    if n_mels != spec.n_mels:  # the graph takes another patch than the one model.yaml states
        out = Path(root) / "cnn"
        out.mkdir(parents=True)
        (out / "model.onnx").write_bytes(onnx_bytes)
        ok = cnn_bundle(Path(root) / "ok")
        (out / "model.yaml").write_bytes((ok / "model.yaml").read_bytes())
        return out
    return write_bundle(onnx_bytes, spec, Path(root) / "cnn", labels=["environment", "music", "silence", "speech"],
                        input_meta=inp, task="soundtype-cnn", version="0", description="test", training={},
                        evaluation={})
