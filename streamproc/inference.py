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
from .features import AMIN, LogMel
from .windowing import WindowSpec

BUNDLE_FORMAT = 1
# Silence, defined (docs/training.md): a window whose level (the engine's rms_dbfs metric) is below this
# is `silence` whatever its spectral shape. A bundle's model.yaml may set `silence_below_dbfs` (a number,
# or null for no gate); a deployment overrides it with $AUDIOSTREAM_SILENCE_BELOW_DBFS or a command's
# --silence-below-dbfs ("off" turns the gate off). Only bundles with a `silence` label are gated.
DEFAULT_SILENCE_BELOW_DBFS = -60.0
SILENCE_ENV = "AUDIOSTREAM_SILENCE_BELOW_DBFS"
_FROM_BUNDLE = object()
REQUIRED_KEYS = ("format", "task", "version", "labels", "input", "output", "window_spec")
# What a model takes (model.yaml input.kind; absent = features): the window's pooled feature vector
# (N, n_features), or its log-mel patch (N, 1, n_mels, frames) from the same STFT (docs/model-bundle.md).
INPUT_KINDS = ("features", "logmel")


def logmel_params(spec: WindowSpec, top_db: float | None) -> dict:
    """Everything that defines the log-mel patch this analyzer computes for ``spec``: a ``logmel`` bundle
    states these in model.yaml (input.logmel) and is refused unless every one matches."""
    return {"sr": spec.sr, "n_fft": spec.n_fft, "hop_length": spec.hop_length, "n_mels": spec.n_mels,
            "fmin": spec.fmin, "fmax": spec.fmax, "frames": spec.frames_per_window, "center": False,
            "power": 2.0, "mel_norm": "slaney", "log": "power_to_db", "ref": 1.0, "amin": AMIN,
            "top_db": top_db}


def logmel_input(spec: WindowSpec, top_db: float | None, name: str = "logmel") -> dict:
    """model.yaml's ``input`` mapping for a model that takes ``spec``'s log-mel patch."""
    return {"name": name, "kind": "logmel", "shape": [None, 1, spec.n_mels, spec.frames_per_window],
            "dtype": "float32", "logmel": logmel_params(spec, top_db)}


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
    silence_below_dbfs: float | None = None
    logmel: LogMel | None = None  # set: the model takes log-mel patches (input kind logmel), not vectors

    @property
    def input_kind(self) -> str:
        return "features" if self.logmel is None else "logmel"

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One window's model input: (n_features,) or (1, n_mels, frames)."""
        s = self.spec
        return (s.n_features,) if self.logmel is None else (1, s.n_mels, s.frames_per_window)

    @classmethod
    def load(cls, ref: str | os.PathLike, *, expect_spec: WindowSpec | None = None,
             intra_op_threads: int = 1, silence_below_dbfs=_FROM_BUNDLE) -> "ModelBundle":
        """``silence_below_dbfs``: a deployment's gate level (a number, or None / "off" for no gate);
        by default $AUDIOSTREAM_SILENCE_BELOW_DBFS, else the bundle's model.yaml, else -60 dBFS."""
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
        logmel = _input_kind(inp, spec, meta_path)
        want_shape = [spec.n_features] if logmel is None else [1, spec.n_mels, spec.frames_per_window]
        shape = inp.get("shape", [None, *want_shape])
        if not isinstance(shape, list) or list(shape[1:]) != want_shape:
            raise BundleError(f"{meta_path}: input shape {shape} does not match the "
                              + (f"{spec.n_features} features its window_spec produces" if logmel is None else
                                 f"log-mel patch [N, {', '.join(map(str, want_shape))}] its window_spec produces"))

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
        onnx_shape = list(inputs[inp["name"]].shape)
        if logmel is None and isinstance(onnx_shape[-1], int) and onnx_shape[-1] != spec.n_features:
            raise BundleError(f"{onnx_path}: input {inp['name']!r} takes {onnx_shape[-1]} features but the "
                              f"window_spec produces {spec.n_features}")
        if len(onnx_shape) != 1 + len(want_shape) or any(
                isinstance(d, int) and d != w for d, w in zip(onnx_shape[1:], want_shape)):
            raise BundleError(f"{onnx_path}: input {inp['name']!r} has shape {onnx_shape} but this analyzer "
                              f"feeds [N, {', '.join(map(str, want_shape))}] ({'features' if logmel is None else 'logmel'})")
        gate = _silence_level(meta, labels, meta_path, silence_below_dbfs)
        bundle = cls(path, str(meta["task"]), str(meta["version"]), labels, inp["name"], out["name"], spec,
                     meta, session, gate, logmel)
        try:
            probe = bundle.predict(np.stack([np.zeros(want_shape, np.float32), np.ones(want_shape, np.float32)]))
        except Exception as exc:  # e.g. a fixed batch size or a shape the graph cannot take
            raise BundleError(f"{onnx_path}: inference on a probe batch of 2 windows failed: {exc}") from None
        if probe.shape != (2, len(labels)):
            raise BundleError(f"{onnx_path}: output {out['name']!r} has shape {probe.shape[1:]} per window; "
                              f"model.yaml lists {len(labels)} labels")
        if not np.isfinite(probe).all():
            raise BundleError(f"{onnx_path}: the model returns NaN/Inf scores on a probe input; refusing to serve it")
        return bundle

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Scores (N, n_labels) for model inputs X (N, *input_shape): window vectors (N, n_features), or
        log-mel patches (N, 1, n_mels, frames) for a logmel bundle. One ONNX call."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.shape[1:] != self.input_shape:
            raise ValueError(f"{self.ref} takes {self.input_kind} inputs of shape {self.input_shape} per window, "
                             f"got {X.shape[1:]}")
        if X.shape[0] == 0:
            return np.empty((0, len(self.labels)), dtype=np.float32)
        scores = self.session.run([self.output_name], {self.input_name: X})[0]
        return np.asarray(scores, dtype=np.float32)

    def inputs(self, windows) -> np.ndarray:
        """The model input of engine windows (streamproc.engine.Window): their vectors, or their log-mel
        patches for a logmel bundle (the engine made them: Engine(logmel=bundle.logmel))."""
        if self.logmel is None:
            return np.stack([w.vector for w in windows])
        if any(w.patch is None for w in windows):
            raise ValueError(f"{self.ref} takes log-mel patches; the engine was not built with "
                             "Engine(spec, logmel=bundle.logmel)")
        return np.stack([w.patch for w in windows])

    def score(self, windows) -> np.ndarray:
        """Served scores of engine windows: the model on their inputs, then the silence gate on their level.
        The one path of the live analyzer, batch and the API."""
        return self.gate(self.predict(self.inputs(windows)), [w.metrics["rms_dbfs"] for w in windows])

    def is_gated(self, rms_dbfs) -> bool | np.ndarray:
        """True where a window of level ``rms_dbfs`` (the engine's metric) is silence by definition."""
        if self.silence_below_dbfs is None:
            return np.zeros(np.shape(rms_dbfs), bool) if np.ndim(rms_dbfs) else False
        below = np.asarray(rms_dbfs, dtype=np.float64) < self.silence_below_dbfs
        return below if np.ndim(rms_dbfs) else bool(below)

    def gate(self, scores: np.ndarray, rms_dbfs) -> np.ndarray:
        """Scores with the silence rule applied: a window below the level gets silence 1, every other
        label 0. The one place the rule lives (live analyzer, batch, API, evaluate). A row the model
        returned non-finite is left as it is, so a broken model is still reported, never hidden."""
        gated = self.is_gated(np.asarray(rms_dbfs, dtype=np.float64).reshape(-1))
        gated &= np.isfinite(scores).all(axis=1)
        if not gated.any():
            return scores
        out = np.array(scores, dtype=np.float32, copy=True)
        out[gated] = 0.0
        out[gated, self.labels.index("silence")] = 1.0
        return out

    @property
    def ref(self) -> str:
        return f"{self.task}:{self.version}"


def _input_kind(inp: dict, spec: WindowSpec, meta_path: Path) -> LogMel | None:
    """None for a pooled-features model; the LogMel it takes for a logmel one. Refuses (BundleError)
    what this analyzer cannot feed exactly: an unknown kind, or a log-mel definition that is not the one
    its window_spec's STFT produces (a wrong sample rate, n_mels, hop, frame count, log type...)."""
    kind = inp.get("kind", "features")
    if kind not in INPUT_KINDS:
        raise BundleError(f"{meta_path}: input kind {kind!r} is unknown; this analyzer feeds {list(INPUT_KINDS)}")
    if kind == "features":
        return None
    lm = inp.get("logmel")
    if not isinstance(lm, dict):
        raise BundleError(f"{meta_path}: a logmel input needs an input.logmel mapping (sr, n_fft, hop_length, "
                          "n_mels, fmin, fmax, frames, log, top_db, ...)")
    top_db = lm.get("top_db")
    if top_db is not None and (isinstance(top_db, bool) or not isinstance(top_db, (int, float)) or top_db <= 0):
        raise BundleError(f"{meta_path}: input.logmel.top_db must be a positive number of dB or null, got {top_db!r}")
    want = logmel_params(spec, None if top_db is None else float(top_db))
    wrong = [f"{k}: {lm.get(k, '(missing)')!r} != {v!r}" for k, v in want.items() if lm.get(k, "(missing)") != v]
    wrong += [f"{k}: unknown key" for k in sorted(set(lm) - set(want))]
    if wrong:
        raise BundleError(f"{meta_path}: this analyzer cannot feed the log-mel input the model states (bundle "
                          f"!= what its window_spec's STFT produces): {'; '.join(wrong)}")
    return LogMel(None if top_db is None else float(top_db))


def _silence_level(meta: dict, labels: list[str], meta_path: Path, override) -> float | None:
    """The gate level in force: argument > $AUDIOSTREAM_SILENCE_BELOW_DBFS > model.yaml > default."""
    if override is _FROM_BUNDLE:
        override = os.environ.get(SILENCE_ENV, _FROM_BUNDLE)
        source = f"${SILENCE_ENV}"
    else:
        source = "silence_below_dbfs"
    if override is not _FROM_BUNDLE:
        if override is None or str(override).strip().lower() in ("off", "none", ""):
            return None
        try:
            level = float(override)
        except ValueError:
            raise BundleError(f"{source}={override!r} is not a level in dBFS (a number such as -60, or 'off')") from None
    elif "silence_below_dbfs" in meta:
        level = meta["silence_below_dbfs"]
        if level is None:
            return None
        if not isinstance(level, (int, float)) or isinstance(level, bool):
            raise BundleError(f"{meta_path}: silence_below_dbfs must be a number (dBFS) or null, got {level!r}")
        if "silence" not in labels:
            raise BundleError(f"{meta_path}: silence_below_dbfs is set but the bundle has no 'silence' label")
    else:
        level = DEFAULT_SILENCE_BELOW_DBFS
    if "silence" not in labels:
        return None  # a deployment-wide level does not apply to a model without a silence label
    level = float(level)
    if not -120.0 <= level <= 0.0:
        raise BundleError(f"silence_below_dbfs={level} is outside -120..0 dBFS")
    return level
