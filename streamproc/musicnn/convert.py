"""Convert a musicnn TensorFlow 1 checkpoint to ONNX and record TensorFlow's outputs to check it by.

Run by ``audiostream models convert-musicnn`` with the converter's own Python (a cached virtualenv
holding TensorFlow and tf2onnx, docs/models.md), never imported by the analyzer: it needs only
numpy, tensorflow and tf2onnx, and prints one JSON line describing what it wrote.

The graph is rebuilt by the package's own ``musicnn.models.define_model``. That code calls
``tf.compat.v1.layers.*``, which Keras 3 (TensorFlow >= 2.16) refuses, so ``Layers`` below stands in
for those six calls with plain ``tf.nn`` ops and variables named exactly as TF1's layers named them
(``conv2d_3/kernel``, ``batch_normalization_9/moving_mean``, ...), inference mode only. The
checkpoint's ``checkpoint`` file holds its author's absolute path, so the weights are restored from
the directory prefix (``Saver.restore(sess, '<dir>/')``), never through ``latest_checkpoint``.
A variable the checkpoint lacks, or one it has that the graph does not use, is an error: weights
that load only partly would convert silently into a wrong model.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import defaultdict

import numpy as np

OPSET = 17
N_FRAMES = 187  # 3 s at 16 kHz, hop 256: librosa.time_to_frames(3, sr=16000, hop_length=256, n_fft=512) + 1
N_MELS = 96
EPSILON = 1e-3  # tf.compat.v1.layers.batch_normalization's default


class Layers:
    """``tf.compat.v1.layers`` for inference, from tf.nn ops, with TF1's variable names."""

    def __init__(self, tf):
        self.tf = tf
        self.count = defaultdict(int)

    def _scope(self, kind, name=None):
        if name:
            return name
        n = self.count[kind]
        self.count[kind] += 1
        return kind if n == 0 else f"{kind}_{n}"

    def _var(self, name, shape):
        return self.tf.compat.v1.get_variable(name, shape=[int(s) for s in shape], dtype=self.tf.float32)

    def conv2d(self, inputs, filters, kernel_size, padding="valid", activation=None, name=None, **_):
        tf = self.tf
        scope = self._scope("conv2d", name)
        with tf.compat.v1.variable_scope(scope):
            kernel = self._var("kernel", [*kernel_size, inputs.shape[-1], filters])
            bias = self._var("bias", [filters])
        out = tf.nn.bias_add(tf.nn.conv2d(inputs, kernel, strides=1, padding=padding.upper()), bias)
        return activation(out) if activation else out

    def batch_normalization(self, inputs, training=False, **_):
        tf = self.tf
        if training is not False:
            raise ValueError("this stand-in builds the inference graph only (training=False)")
        with tf.compat.v1.variable_scope(self._scope("batch_normalization")):
            n = [inputs.shape[-1]]
            gamma, beta = self._var("gamma", n), self._var("beta", n)
            mean, var = self._var("moving_mean", n), self._var("moving_variance", n)
        return tf.nn.batch_normalization(inputs, mean, var, beta, gamma, EPSILON)

    def max_pooling2d(self, inputs, pool_size, strides, padding="valid", **_):
        as_ints = lambda v: [int(x) for x in v]  # noqa: E731
        return self.tf.nn.max_pool2d(inputs, as_ints(pool_size), as_ints(strides), padding.upper())

    def dense(self, inputs, units, activation=None, **_):
        tf = self.tf
        with tf.compat.v1.variable_scope(self._scope("dense")):
            kernel = self._var("kernel", [inputs.shape[-1], units])
            bias = self._var("bias", [units])
        out = tf.nn.bias_add(tf.matmul(inputs, kernel), bias)
        return activation(out) if activation else out

    def flatten(self, inputs, **_):
        return self.tf.reshape(inputs, [-1, int(np.prod(inputs.shape[1:]))])

    def dropout(self, inputs, training=False, **_):
        return inputs


def build(tf, package_dir: str, model: str):
    """The package's own graph for ``model`` with the stand-in layers; (graph, input, outputs)."""
    sys.path.insert(0, package_dir)
    from musicnn import configuration, models  # the wheel's own model code
    labels = configuration.MTT_LABELS if model.startswith("MTT") else configuration.MSD_LABELS
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.layers = Layers(tf)  # what define_model calls resolve to
        x = tf.compat.v1.placeholder(tf.float32, [None, N_FRAMES, N_MELS], name="logmel")
        out = models.define_model(x, False, model, len(labels))
        logits, penultimate = out[0], out[-1]
        tags = tf.nn.sigmoid(logits, name="tags")
        emb = tf.identity(penultimate, name="embedding")
    return graph, labels, x, tags, emb


def convert(package_dir: str, model: str, out: str, patches: np.ndarray) -> dict:
    import tensorflow as tf
    import tf2onnx
    tf.compat.v1.disable_eager_execution()
    graph, labels, x, tags, emb = build(tf, package_dir, model)
    prefix = f"{package_dir}/musicnn/{model}/"
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        graph_vars = {v.op.name: v for v in tf.compat.v1.global_variables()}
        stored = tf.compat.v1.train.NewCheckpointReader(prefix).get_variable_to_shape_map()
        stored = {k for k in stored if "/Adam" not in k and k not in ("beta1_power", "beta2_power")}  # Adam state
        if set(graph_vars) != stored:
            raise SystemExit(f"{model}: graph and checkpoint disagree: missing {sorted(stored - set(graph_vars))}, "
                             f"extra {sorted(set(graph_vars) - stored)}")
        tf.compat.v1.train.Saver(var_list=graph_vars).restore(sess, prefix)
        ref_tags, ref_emb = sess.run([tags, emb], {x: patches})
        frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
            sess, graph.as_graph_def(), ["tags", "embedding"])
    from tf2onnx import optimizer
    # tf2onnx's optimiser passes iterate sets of node objects and now and then rewrite the graph into
    # another equivalent shape (75 instead of 76 nodes): without them the file is the same every run, and
    # onnxruntime's own graph optimisation (ORT_ENABLE_ALL, at load) does that work where it runs
    optimizer._get_optimizers = lambda: {}
    tf2onnx.convert.from_graph_def(frozen, input_names=["logmel:0"], output_names=["tags:0", "embedding:0"],
                                   opset=OPSET, output_path=out)
    plain_names(out, {"logmel:0": "logmel", "tags:0": "tags", "embedding:0": "embedding"})
    return {"labels": list(labels), "tags": ref_tags, "embedding": ref_emb, "variables": len(graph_vars)}


def plain_names(path: str, names: dict) -> None:
    """TensorFlow's tensor names (``tags:0``) as the bundle's plain ones (``tags``); a dynamic batch axis."""
    import onnx
    m = onnx.load(path)
    for node in m.graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    for v in [*m.graph.input, *m.graph.output]:
        v.name = names.get(v.name, v.name)
        v.type.tensor_type.shape.dim[0].dim_param = "batch"
    canonical(m.graph, keep=set(names.values()))
    onnx.checker.check_model(m)
    onnx.save(m, path)


def canonical(graph, keep: set) -> None:
    """Order the nodes and name the tensors tf2onnx made from the graph's structure alone, so converting
    twice gives the same bytes: tf2onnx's optimiser emits the same weights and operations in a run-dependent
    order with run-dependent names (it iterates sets of node objects). Kahn's topological order, the ready
    node chosen by (op type, canonical inputs, attributes); constants named by first use."""
    from onnx import numpy_helper
    inits = {i.name: i for i in graph.initializer}
    digest = {n: hashlib.sha256(i.SerializeToString(deterministic=True).replace(n.encode(), b"")).hexdigest()[:16]
              for n, i in inits.items()}
    canon = {i.name: i.name for i in graph.input}
    canon.update({n: "c:" + d for n, d in digest.items()})
    canon[""] = ""
    pending = list(graph.node)
    ordered, t, seen, aliases = [], 0, {}, {}
    while pending:
        ready = [n for n in pending if all(i in canon for i in n.input)]
        if not ready:
            raise ValueError("the converted graph has a cycle or a dangling input")
        key = lambda n: (n.op_type, [canon[i] for i in n.input],  # noqa: E731
                         [a.SerializeToString(deterministic=True) for a in n.attribute])
        node = min(ready, key=key)
        pending.remove(node)
        k = repr(key(node))
        if k in seen and not any(o in keep for o in node.output):
            # the same operation on the same inputs (tf2onnx leaves duplicates, e.g. one Transpose per
            # consumer): one node, else which twin feeds which consumer would be run-dependent
            for o, same in zip(node.output, seen[k].output):
                canon[o] = canon[same]
                aliases[o] = same
            continue
        seen[k] = node
        for o in node.output:
            if o in keep:
                canon[o] = o
            else:
                canon[o] = f"t{t}"
                t += 1
        ordered.append(node)
    for node in ordered:  # consumers of a dropped twin read the kept one
        node.input[:] = [aliases.get(i, i) for i in node.input]
    used, names = [], {}
    for node in ordered:
        for i in node.input:
            if i in inits and i not in names:
                names[i] = f"const_{len(names)}"
                used.append(i)
    rename = {o: canon[o] for node in ordered for o in node.output}
    rename.update(names)
    for k, node in enumerate(ordered):
        node.input[:] = [rename.get(i, i) for i in node.input]
        node.output[:] = [rename.get(o, o) for o in node.output]
        node.name = f"n{k}"
    new_inits = []
    for old in used:
        arr = numpy_helper.to_array(inits[old])
        new_inits.append(numpy_helper.from_array(arr, names[old]))
    del graph.node[:]
    graph.node.extend(ordered)
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    del graph.value_info[:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("package_dir", help="the unpacked musicnn wheel (holds musicnn/models.py and the checkpoints)")
    p.add_argument("model", choices=["MTT_musicnn", "MSD_musicnn"])
    p.add_argument("out", help="the ONNX file to write")
    p.add_argument("--patches", required=True, help=".npz with 'logmel' [n, 187, 96] to run TensorFlow on")
    p.add_argument("--reference", required=True, help="where to write TensorFlow's outputs (.npz)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    patches = np.load(a.patches)["logmel"].astype(np.float32)
    got = convert(a.package_dir, a.model, a.out, patches)
    np.savez(a.reference, tags=got["tags"], embedding=got["embedding"])
    import tensorflow as tf
    import tf2onnx
    print(json.dumps({"model": a.model, "input": "logmel", "outputs": ["tags", "embedding"], "labels": got["labels"],
                      "variables": got["variables"], "opset": OPSET, "tensorflow": tf.__version__,
                      "tf2onnx": tf2onnx.__version__, "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
