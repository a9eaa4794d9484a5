"""``audiostream train DIR --family cnn``: a small log-mel CNN, trained with JAX on CPU, served as ONNX.

The input is each window's log-mel patch (1, n_mels, frames) exactly as the analyzer computes it
(streamproc.features.FeatureExtractor.logmel_patches: the engine's one STFT path), so there is no
train/serve skew; the split by clip file is the MLP's (``split_by_clip``, same seed = same held-out
clips), so the two families are compared on the same data.

Why JAX: the training extra is installed on every fresh CI machine. jax + jaxlib (CPU) + optax are
~90 MB of wheels; torch from PyPI pulls ~3 GB of CUDA wheels (its CPU-only index is not a registry we
reach) and tensorflow-cpu is ~1.9 GB. JAX on CPU with one XLA thread is bit-reproducible: the same seed
on the same machine gives the same ONNX bytes (tests/integration/test_training.py checks it). The ONNX
graph is written here from the trained weights with onnx.helper (Sub/Mul/Conv/Relu/MaxPool/
GlobalAveragePool/Gemm/Softmax) and checked against the JAX forward pass before the bundle is written.

Network (``CHANNELS`` = 8, 16, 32, 128): input standardised by the training set's mean and std of dB,
then per block a 3x3 convolution (padding 1) and ReLU, 2x2 max-pooling after every block but the last,
global average pooling, one dense layer to the labels, softmax. Training: Adam with a cosine-decayed
learning rate, class-balanced cross-entropy, random gain augmentation (every training patch shifted by a
gain drawn uniformly from ``GAIN_DB``: a gain is a shift of every dB cell, floored at the -100 dB of
amin), fixed epochs (no choice made on the held-out clips).
"""
from __future__ import annotations

import collections
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..features import AMIN, TOP_DB, LogMel
from ..progress import Progress
from ..windowing import WindowSpec

CHANNELS = (8, 16, 32, 128)
GAIN_DB = (-40.0, 6.0)
FLOOR_DB = float(10 * np.log10(AMIN))  # -100 dB: power_to_db's floor
OPSET = 17


def _jax():
    # one XLA CPU thread: bit-reproducible training (a multi-threaded Eigen reduction may sum in another
    # order from run to run); set before jax is first imported
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError as exc:
        raise SystemExit(f"train --family cnn needs JAX: pip install 'audiostream[training]' ({exc})") from None
    jax.config.update("jax_enable_x64", False)
    return jax, jnp, optax


def init_params(n_labels: int, seed: int, channels=CHANNELS) -> dict:
    """He-normal convolution and dense weights from numpy's generator (seeded), zero biases."""
    rng = np.random.default_rng(seed)
    params, c_in = {}, 1
    for i, c in enumerate(channels):
        params[f"conv{i}_w"] = (rng.standard_normal((c, c_in, 3, 3)) * np.sqrt(2.0 / (9 * c_in))).astype(np.float32)
        params[f"conv{i}_b"] = np.zeros(c, np.float32)
        c_in = c
    params["dense_w"] = (rng.standard_normal((c_in, n_labels)) * np.sqrt(1.0 / c_in)).astype(np.float32)
    params["dense_b"] = np.zeros(n_labels, np.float32)
    return params


def forward(params, x, norm, n_conv: int):
    """Logits for patches x (N, 1, n_mels, frames): the JAX network the ONNX graph reproduces."""
    jax, jnp, _ = _jax()
    h = (x - norm[0]) * norm[1]
    for i in range(n_conv):
        h = jax.lax.conv_general_dilated(h, params[f"conv{i}_w"], (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        h = jax.nn.relu(h + params[f"conv{i}_b"][None, :, None, None])
        if i < n_conv - 1:  # 2x2 max-pool, stride 2, floor (ONNX MaxPool's default)
            h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    h = h.mean(axis=(2, 3))
    return h @ params["dense_w"] + params["dense_b"]


def mask(xb: np.ndarray, rng, max_bands: int = 8, max_frames: int = 10) -> np.ndarray:
    """SpecAugment-style masking: per patch one band of up to ``max_bands`` mel bands and one span of
    up to ``max_frames`` frames set to the patch's minimum (its quietest cell)."""
    n, _, m, f = xb.shape
    low = xb.min(axis=(1, 2, 3))
    bw, b0 = rng.integers(0, max_bands + 1, n), rng.integers(0, m, n)
    tw, t0 = rng.integers(0, max_frames + 1, n), rng.integers(0, f, n)
    bands, frames = np.arange(m), np.arange(f)
    hit = (((bands[None, :] >= b0[:, None]) & (bands[None, :] < (b0 + bw)[:, None]))[:, :, None]
           | ((frames[None, :] >= t0[:, None]) & (frames[None, :] < (t0 + tw)[:, None]))[:, None, :])
    return np.where(hit[:, None], low[:, None, None, None], xb).astype(np.float32)


def fit(X: np.ndarray, y: np.ndarray, n_labels: int, *, seed: int, epochs: int, batch: int = 64,
        lr: float = 2e-3, quiet: bool = False, channels=CHANNELS, spec_augment: bool = False):
    """Trained params and the input normalisation (mean, 1/std) for patches X and label indices y.
    ``spec_augment``: also mask one band and one time span of every training patch (``mask``)."""
    jax, jnp, optax = _jax()
    mean = float(X.mean())
    inv_std = float(1.0 / max(X.std(), 1e-3))
    norm = np.array([mean, inv_std], np.float32)
    n_conv = len(channels)
    params = {k: jnp.asarray(v) for k, v in init_params(n_labels, seed, channels).items()}
    counts = np.bincount(y, minlength=n_labels).astype(np.float32)
    class_w = jnp.asarray(counts.sum() / (n_labels * np.maximum(counts, 1)))  # class-balanced loss
    steps_per_epoch = max(1, len(X) // batch)
    opt = optax.adam(optax.cosine_decay_schedule(lr, epochs * steps_per_epoch))
    state = opt.init(params)

    def loss_fn(p, xb, yb):
        logits = forward(p, xb, norm, n_conv)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
        w = class_w[yb]
        return (ce * w).sum() / w.sum()

    @jax.jit
    def step(p, s, xb, yb):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, loss

    rng = np.random.default_rng(seed + 1)
    lo, hi = GAIN_DB
    for epoch in range(epochs):
        order = rng.permutation(len(X))
        gains = rng.uniform(lo, hi, len(X)).astype(np.float32)
        bar = Progress(f"cnn epoch {epoch + 1}/{epochs}", steps_per_epoch, enabled=not quiet)
        total = 0.0
        for b in range(steps_per_epoch):
            sel = order[b * batch:(b + 1) * batch]
            xb = np.maximum(X[sel] + gains[sel, None, None, None], FLOOR_DB)  # random gain: a dB shift
            if spec_augment:
                xb = mask(xb, rng)
            params, state, loss = step(params, state, xb, y[sel])
            total += float(loss)
            bar.update(b + 1)
        if not quiet:
            print(f"cnn epoch {epoch + 1}/{epochs}: mean training loss {total / steps_per_epoch:.4f}",
                  file=sys.stderr, flush=True)
    return {k: np.asarray(v) for k, v in params.items()}, norm


def predict_proba(params, norm, X: np.ndarray, chunk: int = 512) -> np.ndarray:
    jax, jnp, _ = _jax()
    n_conv = sum(1 for k in params if k.startswith("conv") and k.endswith("_w"))
    f = jax.jit(lambda p, x: jax.nn.softmax(forward(p, x, norm, n_conv), axis=-1))
    return np.concatenate([np.asarray(f(params, X[a:a + chunk])) for a in range(0, len(X), chunk)]) \
        if len(X) else np.empty((0, len(params["dense_b"])), np.float32)


def to_onnx(params, norm, input_name: str, output_name: str, n_mels: int, frames: int) -> bytes:
    """The network as an ONNX graph (opset 17) written node by node from the trained weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n_conv = sum(1 for k in params if k.startswith("conv") and k.endswith("_w"))
    inits = [numpy_helper.from_array(np.array(norm[0], np.float32), "norm_mean"),
             numpy_helper.from_array(np.array(norm[1], np.float32), "norm_inv_std")]
    nodes = [helper.make_node("Sub", [input_name, "norm_mean"], ["centred"]),
             helper.make_node("Mul", ["centred", "norm_inv_std"], ["h0"])]
    h = "h0"
    for i in range(n_conv):
        inits += [numpy_helper.from_array(params[f"conv{i}_w"].astype(np.float32), f"conv{i}_w"),
                  numpy_helper.from_array(params[f"conv{i}_b"].astype(np.float32), f"conv{i}_b")]
        nodes += [helper.make_node("Conv", [h, f"conv{i}_w", f"conv{i}_b"], [f"conv{i}"], kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"])]
        h = f"relu{i}"
        if i < n_conv - 1:
            nodes.append(helper.make_node("MaxPool", [h], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            h = f"pool{i}"
    inits += [numpy_helper.from_array(params["dense_w"].astype(np.float32), "dense_w"),
              numpy_helper.from_array(params["dense_b"].astype(np.float32), "dense_b")]
    nodes += [helper.make_node("GlobalAveragePool", [h], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
              helper.make_node("Gemm", ["flat", "dense_w", "dense_b"], ["logits"]),
              helper.make_node("Softmax", ["logits"], [output_name], axis=1)]
    n_labels = int(params["dense_b"].shape[0])
    graph = helper.make_graph(
        nodes, "audiostream_logmel_cnn",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 1, n_mels, frames])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", n_labels])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="audiostream", producer_version="cnn-1")
    model.ir_version = 8  # what onnxruntime >= 1.14 reads; fixed so the bytes do not follow the onnx version
    onnx.checker.check_model(model)
    return model.SerializeToString()


def n_params(params) -> int:
    return int(sum(np.asarray(v).size for v in params.values()))


def train_cnn(data_dir: str, *, task: str, out: str, seed: int = 0, test_fraction: float = 0.2, epochs: int = 12,
              spec_augment: bool = False, quiet: bool = False, spec: WindowSpec | None = None, top_db: float | None = TOP_DB) -> dict:
    from ..inference import logmel_input
    from .bundle import write_bundle
    from .evaluate import plot_confusion, report
    from .train import _manifest_summary, load_split

    spec = spec or WindowSpec()
    t0 = time.monotonic()
    clips, labels, X, y, idx, test_clips = load_split(data_dir, spec, seed, test_fraction, quiet, "log-mel patches",
                                                      LogMel(top_db))
    is_test = np.isin(idx, sorted(test_clips))
    yi = np.array([labels.index(v) for v in y], np.int32)
    if not quiet:
        print(f"training a log-mel CNN on {int((~is_test).sum())} windows of {len(clips) - len(test_clips)} clips, "
              f"testing on {int(is_test.sum())} windows of {len(test_clips)} clips", file=sys.stderr, flush=True)
    params, norm = fit(X[~is_test], yi[~is_test], len(labels), seed=seed, epochs=epochs, quiet=quiet,
                       spec_augment=spec_augment)
    proba = predict_proba(params, norm, X[is_test])
    test_idx = sorted(test_clips)
    clip_scores = np.stack([proba[idx[is_test] == i].mean(axis=0) for i in test_idx])
    clip_rep = report(labels, [clips[i][1] for i in test_idx], [labels[j] for j in clip_scores.argmax(axis=1)])
    window_rep = report(labels, list(y[is_test]), [labels[j] for j in proba.argmax(axis=1)])
    inp = logmel_input(spec, top_db)
    onnx_bytes = to_onnx(params, norm, inp["name"], "probabilities", spec.n_mels, spec.frames_per_window)
    counts = collections.Counter(lab for _, lab in clips)
    training = {"data": str(data_dir), "clips_per_label": dict(counts), "windows": int(len(y)),
                "seed": seed, "split": f"by clip file, {test_fraction:.0%} of each label held out",
                "classifier": f"log-mel CNN (JAX): conv3x3 {'-'.join(map(str, CHANNELS))} + ReLU, 2x2 max-pool, "
                              f"global average pool, dense, softmax; {n_params(params)} parameters; Adam, "
                              f"{epochs} epochs, random gain {GAIN_DB[0]:+g}..{GAIN_DB[1]:+g} dB"
                              + (", SpecAugment masks (1 band <= 8 mels, 1 span <= 10 frames)" if spec_augment else ""),
                "family": "cnn", "parameters": n_params(params),
                "sources": _manifest_summary(Path(data_dir)), "seconds": round(time.monotonic() - t0, 1),
                "command": f"audiostream train {data_dir} --family cnn --task {task} --out {out} --seed {seed}"
                           + (f" --epochs {epochs}" if epochs != 12 else "")
                           + (" --spec-augment" if spec_augment else "")}
    evaluation = {"held_out": {"clips": clip_rep["n_clips"], "macro_f1": clip_rep["macro_f1"],
                               "accuracy": clip_rep["accuracy"], "window_macro_f1": window_rep["macro_f1"],
                               "clip_label_rule": clip_rep["clip_label_rule"]}}
    check = X[is_test][:64]
    out_dir = write_bundle(onnx_bytes, spec, out, labels=labels, input_meta=inp, task=task,
                           version=Path(out).name,
                           description=f"{task} log-mel CNN ({', '.join(labels)}) trained by audiostream train "
                                       "--family cnn",
                           training=training, evaluation=evaluation,
                           check=(check, predict_proba(params, norm, check)) if len(check) else None)
    clip_rep["split"] = "held_out"
    (out_dir / "evaluation.json").write_text(json.dumps({"held_out": clip_rep}, indent=2) + "\n")
    plot_confusion(clip_rep, out_dir / "confusion_held_out.png", f"{task}:{Path(out).name} held-out clips")
    if not quiet:
        print(f"wrote {out_dir}: held-out clip macro-F1 {clip_rep['macro_f1']:.3f} "
              f"(windows {window_rep['macro_f1']:.3f}) in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return clip_rep
