"""Convert BirdNET's TFLite models to ONNX and record the TFLite interpreter's outputs to check them by.

Run by ``audiostream models import-birdnet`` with the converter's own Python (a cached virtualenv
holding TensorFlow and tf2onnx, docs/models.md), never imported by the analyzer: it needs only
numpy, tensorflow and tf2onnx, and prints one JSON line describing what it wrote.

The model computes its spectrograms in the graph: ``RFFT2D`` followed by a cast of the complex
result to float, which keeps the real part. Stock tf2onnx converts RFFT only when a ComplexAbs
consumes it, so ``rfft_real_part`` rewrites each RFFT2D as ONNX ``DFT`` (one-sided) along the
frame axis and takes the real component; taking the magnitude instead would change the answers.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

OPSET = 17  # DFT takes its axis as an attribute up to opset 19


def rfft_real_part(ctx, node, name, args):
    """RFFT2D(x[..., 1, N], fft_length=[1, N]) then Cast(complex->float) == Re(rfft(x, N))."""
    from onnx import TensorProto
    from tf2onnx import utils

    fft_length = node.inputs[1].get_tensor_value(as_list=True)
    if list(fft_length[:1]) != [1]:
        raise ValueError(f"{name}: only RFFT2D over the last axis is supported, fft_length={fft_length}")
    axes = ctx.make_const(utils.make_name(f"{name}_axes"), np.array([-1], np.int64))
    unsq = ctx.make_node("Unsqueeze", [node.input[0], axes.output[0]])        # [..., N, 1]: one real channel
    dft = ctx.make_node("DFT", [unsq.output[0]], attr={"axis": -2, "onesided": 1})  # [..., N/2+1, 2]
    real = ctx.make_const(utils.make_name(f"{name}_re"), np.array(0, np.int64))
    ctx.replace_inputs(node, [dft.output[0], real.output[0]])  # the node itself becomes the Gather
    node.type = "Gather"
    node.set_attr("axis", -1)
    ctx.set_dtype(node.output[0], TensorProto.FLOAT)


def convert(tflite: str, out: str) -> None:
    import tf2onnx
    tf2onnx.convert.from_tflite(tflite, opset=OPSET, output_path=out,
                                custom_op_handlers={"RFFT2D": (rfft_real_part, [])})


def probe_clips(n: int, samples: int, sr: int, seed: int) -> np.ndarray:
    """Clips that fill the window: chirps, tone bursts and noise; never zero stretches, which
    amplify float rounding in the model's own normalisation."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / sr
    clips = []
    for i in range(n):
        f0, f1 = rng.uniform(1500, 4000), rng.uniform(3000, 9000)
        chirp = np.sin(2 * np.pi * (f0 * t + (f1 - f0) / (2 * t[-1]) * t ** 2))
        bursts = (np.sin(2 * np.pi * rng.uniform(2, 8) * t) > 0.3).astype(float)
        noise = rng.normal(0, 1, samples)
        mix = 0.5 * chirp * bursts * (i % 3 != 2) + rng.uniform(0.01, 0.3) * noise
        clips.append((mix / max(1e-9, np.abs(mix).max()) * rng.uniform(0.1, 0.9)).astype(np.float32))
    return np.stack(clips)


def reference(tflite: str, range_tflite: str, n: int, seed: int) -> dict:
    """The TFLite interpreter's outputs on probe clips and on a grid of places and weeks."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf
        Interpreter = tf.lite.Interpreter

    def run(path, x):
        it = Interpreter(model_path=path)
        inp, outp = it.get_input_details()[0], it.get_output_details()[0]
        it.resize_tensor_input(inp["index"], x.shape)
        it.allocate_tensors()
        it.set_tensor(inp["index"], x)
        it.invoke()
        return it.get_tensor(outp["index"]), int(inp["shape"][-1])

    _, samples = run(tflite, np.zeros((1, 144000), np.float32) + 1e-4)
    clips = probe_clips(n, samples, 48000, seed)
    logits = np.concatenate([run(tflite, c[None])[0] for c in clips])
    places = np.array([[lat, lon, week] for lat in (-33.9, 0.0, 42.5, 60.2) for lon in (-76.5, 13.4, 151.2)
                       for week in (-1, 1, 20, 40)], np.float32)
    range_out, _ = run(range_tflite, places)
    return {"clips": clips, "logits": logits, "range_inputs": places, "range_outputs": range_out}


def run_tflite(tflite: str, x_path: str, out_path: str) -> None:
    """The TFLite original's logits for each row of x.npy (evaluate-detector --tflite, the tests)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf
        Interpreter = tf.lite.Interpreter
    it = Interpreter(model_path=tflite)
    inp, outp = it.get_input_details()[0], it.get_output_details()[0]
    out = []
    for w in np.load(x_path):
        it.resize_tensor_input(inp["index"], (1, w.size))
        it.allocate_tensors()
        it.set_tensor(inp["index"], w[None].astype(np.float32))
        it.invoke()
        out.append(it.get_tensor(outp["index"])[0])
    np.save(out_path, np.stack(out))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run-tflite"]:
        run_tflite(*argv[1:4])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tflite")
    p.add_argument("out")
    p.add_argument("--range", required=True, help="the metadata (location/week) model, TFLite")
    p.add_argument("--range-out", required=True)
    p.add_argument("--reference", required=True, help="where to write the TFLite outputs (.npz)")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    import onnx
    import tf2onnx
    convert(a.tflite, a.out)
    tf2onnx.convert.from_tflite(a.range, opset=OPSET, output_path=a.range_out)
    ref = reference(a.tflite, a.range, a.clips, a.seed)
    np.savez(a.reference, **ref)
    main_graph, range_graph = onnx.load(a.out).graph, onnx.load(a.range_out).graph
    print(json.dumps({"input": main_graph.input[0].name, "output": main_graph.output[0].name,
                      "samples": int(ref["clips"].shape[1]), "classes": int(ref["logits"].shape[1]),
                      "range_input": range_graph.input[0].name, "opset": OPSET,
                      "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
