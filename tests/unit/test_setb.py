"""Set B (the frozen second real evaluation set): its committed manifest and the hash checks of a rebuild."""
import copy
import json

import numpy as np
import pytest
import soundfile as sf

from streamproc.training import debian, setb

RESERVED = ("asterisk-core-sounds-", "asterisk-prompt-", "pocketsphinx-testdata", "fillets-ng-data",
            "tuxpaint-stamps-", "wesnoth-", "drascula-music", "hyperrogue-music", "asc-music", "lincity-ng-data",
            "sound-theme-freedesktop", "oxygen-sounds", "deepin-sound-theme", "yaru-theme-sound")


def committed():
    return json.loads(setb.MANIFEST.read_text())


def test_committed_manifest_is_consistent_and_only_reserved_packages():
    m = committed()
    setb.check(m)
    per = setb.summary(m)
    assert {lab: sum(v.values()) for lab, v in per.items()} == {"speech": 87, "music": 52, "environment": 90,
                                                               "silence": 21}
    for pkg, info in m["packages"].items():
        assert pkg.startswith(RESERVED), pkg
        assert pkg not in debian.TRAIN_PACKAGES and pkg not in debian.PACKAGES  # never trained on, not set A
        assert info["version"] and info["license"]
    for c in m["clips"]:
        assert len(c["sha256"]) == 64 and len(c["source_sha256"]) == 64
        assert c["file"].startswith(c["label"] + "/") and c["end_s"] > c["start_s"]
        assert setb.package_of(c["source"]) == c["package"]


def test_check_refuses_a_duplicate_recording_and_an_unpinned_package():
    m = committed()
    dup = copy.deepcopy(m)
    dup["clips"].append(dict(dup["clips"][0], file="speech/again.wav"))
    with pytest.raises(RuntimeError, match="same recording"):
        setb.check(dup)
    unpinned = copy.deepcopy(m)
    unpinned["packages"][m["clips"][0]["package"]]["version"] = ""
    with pytest.raises(RuntimeError, match="no pinned version"):
        setb.check(unpinned)


@pytest.fixture
def fake_set(tmp_path, rng):
    """A two-clip manifest over files already in a cache (as if downloaded at the pinned versions)."""
    cache = tmp_path / ".debian-cache-b"
    src = cache / "x" / "usr/share/pocketsphinx/test/data/librivox/a.wav"
    src.parent.mkdir(parents=True)
    sf.write(src, (0.1 * rng.standard_normal(3 * 16000)).astype(np.float32), 16000, subtype="PCM_16")
    (cache / ".complete").write_text(json.dumps({"pocketsphinx-testdata": "1"}))
    clips = [{"file": "speech/a.wav", "label": "speech", "package": "pocketsphinx-testdata",
              "source": str(src.relative_to(cache / "x")), "source_sha256": setb.sha256(src),
              "start_s": 0.0, "end_s": 2.0},
             {"file": "silence/a-2.00.wav", "label": "silence", "package": "pocketsphinx-testdata",
              "source": str(src.relative_to(cache / "x")), "source_sha256": setb.sha256(src),
              "start_s": 2.0, "end_s": 3.0}]
    manifest = {"set": "b", "sr": 16000, "clips": clips,
                "packages": {"pocketsphinx-testdata": {"version": "1", "license": "GPL-2+"}}}
    probe = tmp_path / "probe.wav"
    for c in clips:  # the hash of the clip as cut today: what freeze records
        sf.write(probe, setb.cut(cache / "x", c), 16000, subtype="PCM_16")
        c["sha256"] = setb.sha256(probe)
    return manifest, cache, src


def test_build_rebuilds_a_set_whose_hashes_match(fake_set, tmp_path):
    manifest, cache, _ = fake_set
    out = setb.build(tmp_path / "real-b", manifest, cache=cache, quiet=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.wav")) == ["silence/a-2.00.wav",
                                                                              "speech/a.wav"]
    assert sf.info(str(out / "speech/a.wav")).frames == 32000
    assert "pocketsphinx-testdata" in (out / "manifest.csv").read_text()
    (out / "speech" / "stale.wav").write_bytes((out / "speech/a.wav").read_bytes())  # a clip of another run
    setb.build(out, manifest, cache=cache, quiet=True)
    assert not (out / "speech" / "stale.wav").exists()


def test_build_refuses_a_changed_source_or_clip(fake_set, tmp_path):
    manifest, cache, src = fake_set
    wrong = copy.deepcopy(manifest)
    wrong["clips"][0]["sha256"] = "0" * 64
    with pytest.raises(RuntimeError, match=r"speech/a.wav: the cut clip's sha256 differs"):
        setb.build(tmp_path / "o1", wrong, cache=cache, quiet=True)
    y, sr = sf.read(src)
    sf.write(src, y * 0.5, sr, subtype="PCM_16")
    with pytest.raises(RuntimeError, match=r"(?s)2 of 2 clips.*source .* changed"):
        setb.build(tmp_path / "o2", manifest, cache=cache, quiet=True)


def test_build_refuses_a_directory_it_did_not_make(fake_set, tmp_path):
    manifest, cache, _ = fake_set
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(RuntimeError, match="not a dataset built here"):
        setb.build(tmp_path / "mine", manifest, cache=cache, quiet=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_pauses_are_room_tone_relative_to_the_speech_not_digital_zeros(rng):
    sr = 16000
    t = np.arange(sr) / sr
    word = (0.5 * np.sin(2 * np.pi * 220 * t) * np.sin(np.pi * t)).astype(np.float32)
    room = (10 ** (-65 / 20) * rng.standard_normal(2 * sr)).astype(np.float32)
    y = np.concatenate([word, room, word])
    found = setb._pauses(y)
    assert len(found) == 1
    a, b = found[0]
    assert sr + 1600 <= a and b <= 3 * sr - 1600 and b - a >= int(1.1 * sr)
    assert setb._pauses(np.concatenate([word, np.zeros(2 * sr, np.float32), word])) == []  # not a room
    assert setb._pauses(np.concatenate([word, room[: sr], word])) == []                 # too short for a window


def test_models_endpoint_shows_both_real_set_scores():
    """GET /v1/models (in process): each bundle's held-out, set-A and set-B macro-F1, read beside the bundle."""
    from pathlib import Path

    from fastapi.testclient import TestClient

    from consumers.api import create_app
    root = Path(__file__).resolve().parents[2] / "models" / "soundtype" / "3"
    models = TestClient(create_app(model=str(root))).get("/v1/models").json()
    st3 = next(m for m in models if (m["task"], m["version"]) == ("soundtype", "3"))
    assert st3["real_macro_f1"] == json.loads((root / "evaluation_debian_real.json").read_text())["macro_f1"]
    assert st3["real_b_macro_f1"] == json.loads((root / "evaluation_real_b.json").read_text())["macro_f1"] == 0.52
    assert next(m for m in models if m["task"] == "starter")["real_b_macro_f1"] is None
