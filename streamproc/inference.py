"""Model bundles: ``models/<task>/<version>/{model.onnx, model.yaml}`` (docs/model-bundle.md).

``ModelBundle.load(path_or_ref)`` validates everything the analyzer needs
before a single record is consumed and raises :class:`BundleError` naming
what is wrong; ``bundle.predict(X)`` runs a batch of window vectors through
one ONNX session call.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .errors import BundleError, WindowSpecError
from .windowing import WindowSpec

BUNDLE_FORMAT = 1
REQUIRED_KEYS = ("format", "task", "version", "labels", "input", "output", "window_spec")


def models_root() -> Path:
    """Where ``task[:version]`` references are looked up: $AUDIOSTREAM_MODELS or the repo's models/."""
    env = os.environ.get("AUDIOSTREAM_MODELS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "models"


def _version_key(v: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"[.\-]", v)]


def resolve(ref: str | os.PathLike, root: Path | None = None) -> Path:
    """A bundle directory from a path, or from ``task`` / ``task:version`` (latest version by default)."""
    try:
        return _resolve(ref, root)
    except (OSError, ValueError) as exc:  # a name the filesystem refuses: too long, a NUL byte, ...
        shown = str(ref) if len(str(ref)) <= 80 else str(ref)[:80] + "..."
        raise BundleError(f"model {shown!r} is not a usable bundle path or task[:version] name: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None


def _resolve(ref: str | os.PathLike, root: Path | None) -> Path:
    p = Path(ref)
    if p.is_dir() or os.sep in str(ref) or str(ref).startswith("."):
        if not p.is_dir():
            raise BundleError(f"model bundle directory {str(p)!r} does not exist")
        return p
    root = root or models_root()
    task, _, version = str(ref).partition(":")
    tdir = root / task
    if not tdir.is_dir():
        known = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
        raise BundleError(f"no model task {task!r} under {root} (known tasks: {known})")
    versions = sorted((d.name for d in tdir.iterdir() if (d / "model.yaml").exists()), key=_version_key)
    if not versions:
        raise BundleError(f"model task {task!r} under {root} has no versions with a model.yaml")
    if version:
        if version not in versions:
            raise BundleError(f"model {task!r} has no version {version!r} (available: {versions})")
        return tdir / version
    return tdir / versions[-1]


@dataclass
class ModelBundle:
    path: Path
    task: str
    version: str
    labels: list[str]
    input_name: str
    output_name: str
    spec: WindowSpec
    meta: dict = field(repr=False)
    session: object = field(repr=False)

    @classmethod
    def load(cls, ref: str | os.PathLike, *, expect_spec: WindowSpec | None = None,
             intra_op_threads: int = 1) -> "ModelBundle":
        path = resolve(ref)
        meta_path = path / "model.yaml"
        onnx_path = path / "model.onnx"
        if not meta_path.exists():
            raise BundleError(f"{path}: model.yaml is missing")
        if not onnx_path.exists():
            raise BundleError(f"{path}: model.onnx is missing")
        try:
            meta = yaml.safe_load(meta_path.read_text())
        except yaml.YAMLError as exc:
            raise BundleError(f"{meta_path}: not valid YAML: {exc}") from None
        if not isinstance(meta, dict):
            raise BundleError(f"{meta_path}: must be a YAML mapping")
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise BundleError(f"{meta_path}: missing key(s) {missing}")
        if meta["format"] != BUNDLE_FORMAT:
            raise BundleError(f"{meta_path}: bundle format {meta['format']!r} is not supported (this analyzer reads {BUNDLE_FORMAT})")
        try:
            spec = WindowSpec.from_dict(meta["window_spec"])
        except (WindowSpecError, TypeError) as exc:
            raise BundleError(f"{meta_path}: window_spec cannot be reproduced by this analyzer: {exc}") from None
        if expect_spec is not None and spec != expect_spec:
            raise BundleError(f"{path}: the bundle was trained with a different window/feature spec than the "
                              f"analyzer is configured for: {'; '.join(spec.differences(expect_spec))}")
        labels = meta["labels"]
        if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
            raise BundleError(f"{meta_path}: labels must be a list of at least two strings, got {labels!r}")
        inp, out = meta["input"], meta["output"]
        if not isinstance(inp, dict) or "name" not in inp or not isinstance(out, dict) or "name" not in out:
            raise BundleError(f"{meta_path}: input and output must be mappings with a 'name'")
        if inp.get("shape", [None, spec.n_features])[-1] != spec.n_features:
            raise BundleError(f"{meta_path}: input shape {inp.get('shape')} does not match the "
                              f"{spec.n_features} features its window_spec produces")

        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
            raise BundleError(f"{onnx_path}: onnxruntime cannot load it: {exc}") from None
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name: o for o in session.get_outputs()}
        if inp["name"] not in inputs:
            raise BundleError(f"{onnx_path}: has no input {inp['name']!r} (inputs: {sorted(inputs)})")
        if out["name"] not in outputs:
            raise BundleError(f"{onnx_path}: has no output {out['name']!r} (outputs: {sorted(outputs)})")
        onnx_width = inputs[inp["name"]].shape[-1]
        if isinstance(onnx_width, int) and onnx_width != spec.n_features:
            raise BundleError(f"{onnx_path}: input {inp['name']!r} takes {onnx_width} features but the "
                              f"window_spec produces {spec.n_features}")
        bundle = cls(path, str(meta["task"]), str(meta["version"]), labels, inp["name"], out["name"], spec,
                     meta, session)
        try:
            probe = bundle.predict(np.stack([np.zeros(spec.n_features, np.float32),
                                             np.ones(spec.n_features, np.float32)]))
        except Exception as exc:  # e.g. a fixed batch size or a shape the graph cannot take
            raise BundleError(f"{onnx_path}: inference on a probe batch of 2 windows failed: {exc}") from None
        if probe.shape != (2, len(labels)):
            raise BundleError(f"{onnx_path}: output {out['name']!r} has shape {probe.shape[1:]} per window; "
                              f"model.yaml lists {len(labels)} labels")
        if not np.isfinite(probe).all():
            raise BundleError(f"{onnx_path}: the model returns NaN/Inf scores on a probe input; refusing to serve it")
        return bundle

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Scores (N, n_labels) for window vectors X (N, n_features): one ONNX call."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.shape[0] == 0:
            return np.empty((0, len(self.labels)), dtype=np.float32)
        scores = self.session.run([self.output_name], {self.input_name: X})[0]
        return np.asarray(scores, dtype=np.float32)

    @property
    def ref(self) -> str:
        return f"{self.task}:{self.version}"
