"""From a multi-label bundle's scores to detections: threshold, sensitivity, species and range filters.

The rules are BirdNET's own (BirdNET-Analyzer, BirdNET-Go): confidence = sigmoid(sensitivity * logit)
with logits clipped to +-15; a class is reported at or above the threshold (default 0.25 here, as
birdnetlib); a species list keeps only the species it names; the range filter (the bundle's metadata
model, from latitude, longitude and week of year) keeps only species whose occurrence there and then
is at least ``location_threshold`` (0.03). Classes that are not species ("Dog_Dog", "Siren_Siren",
"Engine_Engine", "Human vocal_Human vocal", ...: scientific and common name alike) get no occurrence
from the range model, so the range filter keeps them; a species list filters them like any class.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BundleError


def is_species(label: str) -> bool:
    sci, _, common = label.partition("_")
    return bool(common) and sci != common


def read_species_list(path: str | Path, labels: list[str]) -> set[str]:
    """A species list file (one per line: the full label, the scientific or the common name; # comments)."""
    by_name: dict[str, str] = {}
    for label in labels:
        sci, _, common = label.partition("_")
        for key in (label, sci, common):
            by_name.setdefault(key.casefold(), label)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"species list {path}: cannot be read: {exc}") from None
    chosen, unknown = set(), []
    for line in lines:
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if name.casefold() in by_name:
            chosen.add(by_name[name.casefold()])
        else:
            unknown.append(name)
    if unknown:
        raise BundleError(f"species list {path}: {len(unknown)} name(s) the model does not know, e.g. "
                          f"{unknown[:3]} (use the model's labels: scientific or common names)")
    if not chosen:
        raise BundleError(f"species list {path}: names no species")
    return chosen


class Detector:
    """Detections of one multi-label bundle (``ModelBundle`` whose output is ``multilabel``)."""

    def __init__(self, bundle, *, threshold: float | None = None, sensitivity: float | None = None,
                 latitude: float | None = None, longitude: float | None = None, week: int = -1,
                 species_list: str | Path | None = None, location_threshold: float | None = None):
        meta = bundle.meta.get("detection") or {}
        self.labels = bundle.labels
        self.threshold = float(meta.get("threshold", 0.25) if threshold is None else threshold)
        self.sensitivity = float(meta.get("sensitivity", 1.0) if sensitivity is None else sensitivity)
        if not 0.0 < self.threshold <= 1.0:
            raise BundleError(f"detection threshold {self.threshold} must lie in (0, 1]")
        if not 0.1 <= self.sensitivity <= 1.5:
            raise BundleError(f"sensitivity {self.sensitivity} must lie in [0.1, 1.5] (BirdNET-Go's range)")
        self.filters: dict = {}
        allowed = np.ones(len(self.labels), dtype=bool)
        if species_list is not None:
            chosen = read_species_list(species_list, self.labels)
            allowed &= np.array([label in chosen for label in self.labels])
            self.filters["species_list"] = {"file": str(species_list), "classes": len(chosen)}
        if (latitude is None) != (longitude is None):
            raise BundleError("the range filter needs both --latitude and --longitude")
        if latitude is not None:
            if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
                raise BundleError(f"latitude {latitude} / longitude {longitude} out of range")
            if week != -1 and not 1 <= week <= 48:
                raise BundleError(f"week {week} must be 1-48 (BirdNET's 4 weeks a month) or -1 for all year")
            lt = float(meta.get("location_threshold", 0.03) if location_threshold is None else location_threshold)
            occurrence = self.occurrence(bundle, latitude, longitude, week)
            species = np.array([is_species(label) for label in self.labels])
            allowed &= (occurrence >= lt) | ~species
            self.filters["location"] = {"latitude": latitude, "longitude": longitude, "week": week,
                                        "threshold": lt, "species": int(((occurrence >= lt) & species).sum())}
        self.allowed = allowed

    @staticmethod
    def occurrence(bundle, latitude: float, longitude: float, week: int) -> np.ndarray:
        """The range model's occurrence of every class at a place and week (-1: all year)."""
        rf = bundle.meta.get("range_filter")
        if not rf:
            raise BundleError(f"{bundle.ref} has no range filter model; --latitude/--longitude need one")
        import onnxruntime as ort
        path = Path(bundle.path) / rf["file"]
        try:
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
            raise BundleError(f"{path}: onnxruntime cannot load the range model: {exc}") from None
        x = np.array([[latitude, longitude, week]], dtype=np.float32)
        return sess.run(None, {sess.get_inputs()[0].name: x})[0][0]

    def confidences(self, logits: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.sensitivity * np.clip(logits, -15.0, 15.0)))

    def found(self, confidences: np.ndarray) -> list[tuple[str, float]]:
        """(label, confidence) of one window's allowed classes at or above the threshold, best first."""
        idx = np.flatnonzero((confidences >= self.threshold) & self.allowed)
        idx = idx[np.argsort(-confidences[idx], kind="stable")]
        return [(self.labels[i], float(confidences[i])) for i in idx]
