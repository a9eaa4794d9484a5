"""/v1/similar when a batch index and live streams overlap: a replayed file's stream id equals its clip id,
and it must be listed once (kind ``clip+stream``), not twice. The real app in-process (Starlette's test
client), a real index file from analysed clips, the real LiveStreams object fed feature records as its
Kafka reader would."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("fastapi")


def _features_record(stream_id, vector, spec):
    """A window of the audio.features topic, as the analyzer publishes it (name_stat: value or list)."""
    feats = {}
    for name, v in zip(spec.feature_names(), vector):
        key = name.split("[")[0]
        if "[" in name:
            feats.setdefault(key, []).append(float(v))
        else:
            feats[key] = float(v)
    return {"type": "window", "stream_id": stream_id, "features": feats}


def test_an_id_that_is_clip_and_stream_is_listed_once(tmp_path):
    from fastapi.testclient import TestClient

    from consumers.api import LiveStreams, create_app
    from streamproc.analysis import analyze_pcm
    from streamproc.audio import to_s16
    from streamproc.inference import ModelBundle
    bundle = ModelBundle.load("soundtype")
    sr = bundle.spec.sr
    rng = np.random.default_rng(3)
    t = np.arange(4 * sr) / sr
    clips = {"tone.wav": 0.3 * np.sin(2 * np.pi * 440 * t), "noise.wav": 0.1 * rng.standard_normal(len(t)),
             "chirp.wav": 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)}
    rows = {cid: analyze_pcm(to_s16(y.astype(np.float32)), bundle, file=cid, stream_id=cid) for cid, y in clips.items()}
    index = tmp_path / "index.parquet"
    pq.write_table(pa.Table.from_pylist([{"stream_id": r["stream_id"], "features": r["features"]}
                                         for rs in rows.values() for r in rs]), index)
    live = LiveStreams({}, "p", "f", bundle.spec)  # not started: fed below as its Kafka reader feeds it
    for r in rows["tone.wav"]:  # tone.wav was also replayed through Kafka: a live stream with the same id
        live._features(_features_record("tone.wav", r["features"], bundle.spec))
    y = 0.2 * np.sin(2 * np.pi * 660 * t)
    for r in analyze_pcm(to_s16(y.astype(np.float32)), bundle, file="mic", stream_id="mic"):
        live._features(_features_record("mic", r["features"], bundle.spec))
    assert set(live.embeddings()) == {"tone.wav", "mic"}

    client = TestClient(create_app(index=str(index), live=live))
    got = client.get("/v1/similar", params={"id": "noise.wav", "k": 10}).json()
    ids = [n["id"] for n in got["neighbours"]]
    assert sorted(ids) == ["chirp.wav", "mic", "tone.wav"], got  # each once; the query itself left out
    kinds = {n["id"]: n["kind"] for n in got["neighbours"]}
    assert kinds == {"chirp.wav": "clip", "mic": "stream", "tone.wav": "clip+stream"}
    got = client.get("/v1/similar", params={"id": "tone.wav", "k": 10}).json()
    assert sorted(n["id"] for n in got["neighbours"]) == ["chirp.wav", "mic", "noise.wav"], got


@pytest.mark.skipif(__import__("shutil").which("fluidsynth") is None, reason="fluidsynth is not installed")
def test_music_space_ranks_by_the_tagger_embedding_of_batch_tags(tmp_path):
    """batch --tags writes music_top / music_embedding for music windows; serve --index ranks
    /v1/similar?space=music by them: two piano renders are nearer each other than a drum-and-synth one.
    A clip with no music window is a 404 in that space, not a silent neighbour."""
    from fastapi.testclient import TestClient

    from consumers.api import create_app
    from consumers.batch import _analyze, arrow_schema
    from streamproc import rhythm
    from streamproc.inference import ModelBundle
    from streamproc.musicnn import tagging
    import soundfile as sf
    bundle = ModelBundle.load("soundtype")
    tagger = tagging.load()
    files = {"piano-a.wav": (84, 0, False, 0, False), "piano-b.wav": (92, 7, False, 0, False),
             "synth.wav": (128, 9, True, 81, True)}
    for name, (tempo, tonic, minor, program, drums) in files.items():
        y = rhythm.render_track(tempo, tonic, minor, 6.5, tmp_path, program=program, drums=drums)
        sf.write(tmp_path / name, 0.5 * y / max(1e-9, abs(y).max()), 16000)
    sf.write(tmp_path / "quiet.wav", np.zeros(16000 * 4, np.float32), 16000)
    rows = [r for name in [*files, "quiet.wav"] for r in _analyze(str(tmp_path / name), bundle, str(tmp_path), None,
                                                                   False, tagger)]
    assert all(r["music_embedding"] is None for r in rows if r["stream_id"] == "quiet.wav")
    assert any("piano" in (r["music_top"] or "") for r in rows if r["stream_id"] == "piano-a.wav")
    index = tmp_path / "index.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema(bundle.labels, bundle.spec.n_features)), index)
    from consumers.api import LiveStreams
    live = LiveStreams({}, "p", "f", bundle.spec, tags_topic="t")  # not started: fed as its Kafka reader feeds it
    y = rhythm.render_track(88, 2, False, 6.5, tmp_path, program=0, drums=False)  # a third piano, live
    for rec in tagging.tag_pcm((0.5 * y / abs(y).max() * 32767).astype(np.int16), tagger, "radio"):
        live._tags(rec)
        live._tags(rec)  # at-least-once: a window published twice counts once
    assert set(live.music_embeddings()) == {"radio"} and live.music_vectors["radio"][1] >= 1
    client = TestClient(create_app(index=str(index), live=live))
    got = client.get("/v1/similar", params={"id": "piano-a.wav", "space": "music"}).json()
    # the live piano stream joins the clips: both pianos nearer than the drum-and-synth track
    assert [(n["id"], n["kind"]) for n in got["neighbours"]][2:] == [("synth.wav", "clip")], got
    assert {n["id"] for n in got["neighbours"][:2]} == {"piano-b.wav", "radio"}, got
    got = client.get("/v1/similar", params={"id": "radio", "space": "music"}).json()
    assert [n["id"] for n in got["neighbours"]][-1] == "synth.wav", got
    assert client.get("/v1/similar", params={"id": "quiet.wav", "space": "music"}).status_code == 404
    assert client.get("/v1/similar", params={"id": "quiet.wav"}).status_code == 200  # features space: every clip
