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
