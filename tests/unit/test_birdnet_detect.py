"""Detections from multi-label scores: BirdNET's threshold, sensitivity and species-list rules; the
evaluation groups; the detection record; the Qt resource reader of the evaluation set."""
import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest

from streamproc import records
from streamproc.birdnet.detect import Detector, is_species
from streamproc.birdnet.evalset import group_of, matches, rcc_files
from streamproc.errors import BundleError

LABELS = ["Turdus merula_Eurasian Blackbird", "Larus argentatus_Herring Gull", "Dog_Dog",
          "Strix aluco_Tawny Owl", "Lithobates catesbeianus_American Bullfrog", "Siren_Siren"]


def bundle(meta=None):
    return SimpleNamespace(labels=LABELS, meta=meta or {"detection": {"threshold": 0.5}}, path="/nowhere",
                           ref="birdnet:test")


def test_threshold_and_order():
    d = Detector(bundle())
    conf = np.array([0.5, 0.9, 0.49, 0.7, 0.0, 0.51])
    assert d.found(conf) == [("Larus argentatus_Herring Gull", 0.9), ("Strix aluco_Tawny Owl", 0.7),
                             ("Siren_Siren", 0.51), ("Turdus merula_Eurasian Blackbird", 0.5)]
    assert Detector(bundle(), threshold=0.8).found(conf) == [("Larus argentatus_Herring Gull", 0.9)]


def test_sensitivity_is_birdnets_sigmoid_with_clipped_logits():
    logits = np.array([0.0, 2.0, -2.0, 40.0, -40.0, 1.0])
    plain = Detector(bundle()).confidences(logits)
    assert plain[0] == 0.5 and plain[3] == pytest.approx(1 / (1 + np.exp(-15)))
    keen = Detector(bundle(), sensitivity=1.5).confidences(logits)
    assert keen[1] > plain[1] and keen[2] < plain[2]
    with pytest.raises(BundleError, match="sensitivity"):
        Detector(bundle(), sensitivity=3)


def test_species_list_by_scientific_common_or_full_name(tmp_path):
    f = tmp_path / "species.txt"
    f.write_text("# my garden\nturdus merula\nTawny Owl\nDog_Dog\n")
    d = Detector(bundle(), species_list=f)
    conf = np.full(len(LABELS), 0.9)
    assert [label for label, _ in d.found(conf)] == ["Turdus merula_Eurasian Blackbird", "Dog_Dog",
                                                      "Strix aluco_Tawny Owl"]
    assert d.filters["species_list"]["classes"] == 3
    f.write_text("Turdus merula\nDodo\n")
    with pytest.raises(BundleError, match="does not know.*Dodo"):
        Detector(bundle(), species_list=f)


def test_range_filter_needs_both_coordinates_and_a_range_model():
    with pytest.raises(BundleError, match="both --latitude and --longitude"):
        Detector(bundle(), latitude=50.0)
    with pytest.raises(BundleError, match="no range filter model"):
        Detector(bundle(), latitude=50.0, longitude=8.0)
    with pytest.raises(BundleError, match="week 60"):
        Detector(bundle({"range_filter": {"file": "range.onnx"}}), latitude=50.0, longitude=8.0, week=60)


def test_groups_and_species():
    assert [group_of(x) for x in LABELS] == ["bird", "gull", "dog", "owl", "frog", "siren"]
    assert group_of("Batrachostomus auritus_Large Frogmouth") == "bird"  # a bird, not a frog
    assert group_of("Gallus gallus_Red Junglefowl") == "chicken"
    assert matches("owl", "bird") and matches("tools", "engine") and not matches("bird", "owl")
    assert is_species("Turdus merula_Eurasian Blackbird") and not is_species("Dog_Dog")


def test_detection_record():
    w = SimpleNamespace(window_id="s:0", stream_id="s", session_id=b"\x01" * 16, index=0, start=0, end=144000,
                        sample_rate=48000, gap=False, padded=False, metrics={"rms_dbfs": -30.0},
                        capture_time_ns=1_700_000_000_000_000_000)
    rec = records.detection(w, [("Turdus merula_Eurasian Blackbird", 0.87654321), ("Dog_Dog", 0.3)],
                            task="birdnet", version="2.4", analyzer="a1", latency_s=0.05, threshold=0.25,
                            filters={})
    assert rec["detections"][0] == {"label": "Turdus merula_Eurasian Blackbird", "scientific_name": "Turdus merula",
                                    "common_name": "Eurasian Blackbird", "confidence": 0.876543}
    assert rec["window_end_s"] == 3.0 and rec["model"] == {"task": "birdnet", "version": "2.4"}


def rcc(entries: dict[str, bytes], compress=()) -> bytes:
    """A minimal Qt resource file (format 3): one root directory holding ``entries``."""
    names, name_off = b"", {}
    for n in ["dir", *entries]:
        name_off[n] = len(names)
        names += struct.pack(">HI", len(n), 0) + n.encode("utf-16-be")
    data, data_off = b"", {}
    for n, body in entries.items():
        blob = struct.pack(">I", len(body)) + zlib.compress(body) if n in compress else body
        data_off[n] = len(data)
        data += struct.pack(">I", len(blob)) + blob
    tree = struct.pack(">IHII", 0, 2, 1, 1) + b"\0" * 8                      # root: 1 child, at 1
    tree += struct.pack(">IHII", name_off["dir"], 2, len(entries), 2) + b"\0" * 8
    for n in entries:
        tree += struct.pack(">IHHHI", name_off[n], 1 if n in compress else 0, 0, 0, data_off[n]) + b"\0" * 8
    head = 24
    return (b"qres" + struct.pack(">IIIII", 3, head, head + len(tree), head + len(tree) + len(data), 0)
            + tree + data + names)


def test_rcc_reader():
    blob = rcc({"owl.ogg": b"OggS-owl", "duck.ogg": b"OggS-duck" * 50}, compress={"duck.ogg"})
    assert rcc_files(blob) == {"/dir/owl.ogg": b"OggS-owl", "/dir/duck.ogg": b"OggS-duck" * 50}
    with pytest.raises(ValueError):
        rcc_files(b"not qres")


def test_species_report_counts_first_and_last_heard(tmp_path):
    from consumers.report import species_report

    def rec(i, t, dets):
        return {"id": f"s{i}", "stream_id": f"mic-{i % 2}", "capture_time": t,
                "detections": [{"label": lab, "common_name": lab.split("_")[1], "scientific_name": lab.split("_")[0],
                                "confidence": c} for lab, c in dets]}
    recs = [rec(0, "2026-05-01T05:10:00.000Z", [("Turdus merula_Eurasian Blackbird", 0.9)]),
            rec(1, "2026-05-01T06:20:00.000Z", [("Turdus merula_Eurasian Blackbird", 0.6), ("Dog_Dog", 0.4)]),
            rec(1, "2026-05-01T06:20:00.000Z", [("Turdus merula_Eurasian Blackbird", 0.6)]),  # a duplicate id
            rec(2, "2026-05-01T07:00:00.000Z", [])]
    made = species_report(recs, tmp_path, title="t")
    blackbird, dog = made["classes"]
    assert (blackbird["common_name"], blackbird["detections"], blackbird["streams"]) == ("Eurasian Blackbird", 2, 2)
    assert (blackbird["first_heard"], blackbird["last_heard"]) == ("2026-05-01T05:10:00.000Z", "2026-05-01T06:20:00.000Z")
    assert blackbird["max_confidence"] == 0.9 and dog["detections"] == 1
    assert (tmp_path / "species.png").stat().st_size > 5000
    assert "Eurasian Blackbird" in (tmp_path / "species.html").read_text()


def test_species_grid_keeps_quiet_hours_and_greys_hours_not_listened():
    """An hour analysed with nothing heard is a 0 column; an hour with no window at all is NaN (drawn grey)."""
    import numpy as np

    from consumers.report import species_grid, species_rows
    recs = [{"id": "a", "stream_id": "m", "capture_time": "2026-05-01T05:10:00.000Z",
             "detections": [{"label": "Turdus merula_Eurasian Blackbird", "confidence": 0.9}]},
            {"id": "b", "stream_id": "m", "capture_time": "2026-05-01T06:30:00.000Z", "detections": []},
            {"id": "c", "stream_id": "m", "capture_time": "2026-05-01T08:05:00.000Z",
             "detections": [{"label": "Turdus merula_Eurasian Blackbird", "confidence": 0.7}]}]
    buckets, grid = species_grid(recs, species_rows(recs), ["Turdus merula_Eurasian Blackbird"], "hour")
    assert buckets == ["2026-05-01T05", "2026-05-01T06", "2026-05-01T07", "2026-05-01T08"]
    assert grid[0, 0] == 1 and grid[0, 1] == 0 and np.isnan(grid[0, 2]) and grid[0, 3] == 1
    days, per_day = species_grid(recs, species_rows(recs), ["Turdus merula_Eurasian Blackbird"], "day")
    assert days == ["2026-05-01"] and per_day.tolist() == [[2.0]]
