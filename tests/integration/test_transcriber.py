"""The transcriber service through a real broker, and "same answers everywhere" for speech.

One shared run (module fixture ``live``) serves several assertions: a speech file is replayed with
``produce-file`` (4x real time) into Kafka, a ``transcriber`` process turns it into ``audio.transcripts``, is
killed with SIGKILL after its first transcripts, and a second one (same group) takes over. Its records must
match the JSON Schema, every utterance must arrive (de-duplicated by the deterministic id, duplicates
identical), and the utterances and text must equal ``transcribe FILE --json``, ``batch --transcribe`` and
``POST /v1/transcribe`` on the same file. Bad frames go to the dead-letter topic with a reason; the metrics the
transcriber's alert rules use are exposed. A second stream ("dictation") stops in the middle of a sentence:
the transcriber publishes a partial transcript of the open utterance (``final: false``) and, when the stream
stays idle, the final one with the same utterance id; partials (of either stream) match the schema and never
replace or change a final. The dictation's first sentence, shorter than min_utterance_s, gets a pause caption
(a partial at its first pause, at once) before a periodic partial and the final.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import time
import uuid

import numpy as np
import pytest
import soundfile as sf
import yaml
from confluent_kafka import Producer

from streamproc import wire
from streamproc.kafka import ensure_topics
from tests.speech import HARVARD, stream_of

from .conftest import REPO
from .helpers import (all_evaluated, alert_rules, cli, consume, deadletter_header_object, free_port, query,
                      running_serve, sse_items, start_prometheus, validate, values, wait_for)

SENTENCES = HARVARD[:4]
BOUNDS = ("start_sample", "end_sample", "text", "reason")


def _answers(recs) -> list[tuple]:
    return sorted(tuple(r[k] for k in BOUNDS) for r in recs)


def _finals(recs, stream: str = "meeting") -> list[dict]:
    return [r for r in recs if r["final"] and r["stream_id"] == stream]


def _count_finals(n: int):
    return lambda ms: len(_finals(values(ms))) >= n


@pytest.fixture(scope="module")
def dictation():
    """Two sentences 0.8 s apart, cut off 2.2 s into the second: the first (2.5 s) is shorter than
    min_utterance_s, so its pause keeps the utterance open and the transcriber owes it a pause caption (the
    first sentence, at once); the utterance (5.5 s) is open, and not in a pause, where the audio stops, with
    over 2 s of audio after the caption, so it also owes a periodic partial (--partial-every 2) (checked here
    with the real VAD and the bundle's settings, not assumed). Returns the audio and the pause caption's
    (start, end) sample."""
    from streamproc.segmentation import Segmenter, SegmenterConfig
    from tests.speech import say, silence
    a, b = say(HARVARD[4]), say(HARVARD[7])
    y = np.concatenate([silence(0.3), a, silence(0.8), b])[:int(0.3 * 16000) + a.size + int(3.0 * 16000)]
    y = (np.round(y * 32767) / 32768).astype(np.float32)
    meta = yaml.safe_load((REPO / "models" / "transcription" / "1" / "model.yaml").read_text())
    seg = Segmenter(SegmenterConfig.from_dict(meta["segmentation"]), captions=True)
    assert seg.push(y) == []
    (caption,) = seg.take_captions()
    open_utt = seg.open_utterance()
    assert open_utt is not None and not seg.pausing and open_utt.end_sample - open_utt.start_sample > 3.5 * 16000
    assert caption.start_sample == open_utt.start_sample and open_utt.end_sample - caption.end_sample > 2.3 * 16000
    return y, (caption.start_sample, caption.end_sample)


@pytest.fixture(scope="module")
def speech_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("speech") / "harvard4.wav"
    sf.write(path, stream_of(SENTENCES, [0.8, 2.5, 2.5, 2.5]), 16000)  # pauses > long_pause_s: 4 utterances
    return path


@pytest.fixture(scope="module")
def offline(speech_file):
    """`audiostream transcribe FILE --json`, in this process (the model stays loaded for the API test)."""
    from streamproc.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["transcribe", str(speech_file), "--json"]) == 0
    recs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(recs) == len(SENTENCES), recs
    return recs


def _transcriber(kafka_conf, t: dict, group: str, port: int, log_path):
    log = open(log_path, "a")
    return subprocess.Popen(cli("transcriber", "-b", kafka_conf["bootstrap.servers"], "--frames-topic", t["frames"],
                                "--transcripts-topic", t["transcripts"], "--deadletter-topic", t["deadletter"],
                                "--group-id", group, "--metrics-port", str(port), "--no-create-topics",
                                # partials every 2 s of speech (the default), never skipped for lag or a busy
                                # recogniser here (a loaded CI machine is both): the skip rules are tested in
                                # tests/unit/test_transcriber.py
                                "--partial-every", "2", "--partial-max-lag", "1000", "--partial-max-busy", "1",
                                # the restart takes the killed member's partitions back at once (static
                                # membership), not after the session timeout
                                "--instance-id", "replica-1", "-X", "session.timeout.ms=6000"),
                            stdout=log, stderr=subprocess.STDOUT)


def _prometheus(target_port: int, workdir):
    """Debian's Prometheus scraping the transcriber every second as the job the dashboards and alert rules name,
    with the project's alert rules loaded."""
    return start_prometheus({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                             "rule_files": [str(REPO / "deploy" / "prometheus" / "alerts.yml")],
                             "scrape_configs": [{"job_name": "audiostream-transcriber",
                                                 "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}]},
                            workdir)


def _ready(port: int) -> bool:
    import httpx
    try:
        return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def live(kafka_conf, speech_file, offline, dictation, tmp_path_factory):
    dictation, _ = dictation
    tag = uuid.uuid4().hex[:8]
    t = {k: f"test.{tag}.{k}" for k in ("frames", "transcripts", "deadletter", "predictions", "features")}
    ensure_topics(kafka_conf, {n: 1 for n in t.values()})
    logs = tmp_path_factory.mktemp("transcriber")
    group = f"test-transcriber-{tag}"
    # bad input first: garbage and a frame at the wrong rate, each dead-lettered with its reason
    bad = Producer({"bootstrap.servers": kafka_conf["bootstrap.servers"]})
    bad.produce(t["frames"], value=b"x" * 100, key=b"junk")
    bad.produce(t["frames"], key=b"phone", value=wire.encode_pcm(
        np.zeros(800, "<i2").tobytes(), channels=1, n_frames=800, sample_rate=8000, sequence=0, sample_offset=0,
        capture_time_ns=0, session_id=wire.new_session_id()))
    bad.flush(10)
    port_a, port_b = free_port(), free_port()
    # batch --transcribe of the same file runs meanwhile (the replay is paced: the CPU has time for it)
    out = logs / "results.parquet"
    batch = subprocess.Popen(cli("batch", str(speech_file), "--out", str(out), "--transcribe", "--workers", "1",
                                 "-q"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = _transcriber(kafka_conf, t, group, port_a, logs / "a.log")
    second = producer = prom = None
    try:
        wait_for(lambda: _ready(port_a) or first.poll() is not None, 120, "the first transcriber to be ready")
        assert first.poll() is None, (logs / "a.log").read_text()[-3000:]
        session = wire.new_session_id()
        for k, i in enumerate(range(0, dictation.size, 1600)):
            pcm = np.round(dictation[i:i + 1600] * 32768).clip(-32768, 32767).astype("<i2")
            bad.produce(t["frames"], key=b"dictation", value=wire.encode_pcm(
                pcm.tobytes(), channels=1, n_frames=pcm.size, sample_rate=16000, sequence=k, sample_offset=i,
                capture_time_ns=time.time_ns(), session_id=session))
        bad.flush(10)  # no end of stream: the stream just stops (idle flush, 2 s)
        producer = subprocess.Popen(cli("produce-file", str(speech_file), "--stream-id", "meeting", "-b",
                                        kafka_conf["bootstrap.servers"], "--topic", t["frames"], "--speed", "4", "-q"),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        consume(kafka_conf, t["transcripts"], until=_count_finals(2), timeout=120)
        first.send_signal(signal.SIGKILL)  # mid-stream: nothing flushed, nothing committed on the way out
        first.wait(30)
        before = _finals(values(consume(kafka_conf, t["transcripts"], until=_count_finals(2), timeout=30,
                                        settle=1.0)))
        second = _transcriber(kafka_conf, t, group, port_b, logs / "b.log")
        prom, prom_port = _prometheus(port_b, logs)  # scrapes the second one for the speech dashboard's test
        wanted = {r["start_sample"] for r in offline}

        def complete(ms):
            recs = values(ms)
            return ({r["start_sample"] for r in _finals(recs)} >= wanted and _finals(recs, "dictation")
                    and any(not r["final"] for r in recs if r["stream_id"] == "dictation"))
        msgs = consume(kafka_conf, t["transcripts"], timeout=180, settle=2.0, until=complete)
        assert producer.wait(60) == 0, producer.stdout.read()
        import httpx
        metrics = httpx.get(f"http://127.0.0.1:{port_b}/metrics", timeout=10).text
        dead = consume(kafka_conf, t["deadletter"], count=2, timeout=60)
        watch = subprocess.run(cli("watch", "-b", kafka_conf["bootstrap.servers"], "--topic", t["transcripts"],
                                   "--captions", "--from-beginning", "--idle-timeout", "2"),
                               capture_output=True, text=True, timeout=120)
        assert watch.returncode == 0, watch.stderr
        yield {"msgs": msgs, "before": before, "metrics": metrics, "dead": dead, "logs": logs,
               "captions": watch.stdout.splitlines(), "topics": t, "batch": (batch, out), "prometheus": prom_port}
    finally:
        for p in (first, second, producer, batch, prom):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(30)


def test_every_utterance_arrives_after_a_kill_and_matches_the_schema(live, offline):
    msgs = [m for m in live["msgs"] if m.key() != b"dictation"]
    for r in values(live["msgs"]):
        validate(r, "transcript")  # partials included
    recs = _finals(values(msgs))
    assert all(m.key() == b"meeting" for m in msgs)
    by_id: dict[str, dict] = {}
    for r in recs:
        assert by_id.setdefault(r["id"], r) == r, ("a repeat must be the same record", by_id[r["id"]], r)
    assert len(live["before"]) < len(offline), "the first transcriber was killed only after the whole stream"
    assert len(by_id) == len(offline), sorted(by_id)
    (session,) = {r["session_id"] for r in by_id.values()}
    assert all(i == f"meeting/{session}/{r['start_sample']}" for i, r in by_id.items())


def test_the_live_replay_gives_the_answers_of_transcribe_file(live, offline):
    """Same utterance bounds, same text, same reasons as the offline command, after a crash in between (the
    partials published meanwhile change no final)."""
    unique = {r["id"]: r for r in _finals(values(live["msgs"]))}.values()
    assert _answers(unique) == _answers(offline)


def test_a_partial_transcript_precedes_the_final_of_an_open_utterance(live):
    """The dictation stream stops mid-sentence: a partial (final: false) of its open utterance, then the final
    (idle flush) with the same utterance id. Every partial on the topic belongs to a final that followed it
    on the topic (same utterance id, same start, ending no later), and has its own id."""
    recs = values(live["msgs"])
    finals = {r["id"]: (i, r) for i, r in enumerate(recs) if r["final"]}
    partials = [(i, r) for i, r in enumerate(recs) if not r["final"]]
    dictation = [r for _, r in partials if r["stream_id"] == "dictation"]
    assert dictation, "no partial transcript for the open utterance"
    (final,) = {r["id"]: r for r in _finals(recs, "dictation")}.values()
    assert final["reason"] == "idle"
    assert all(p["utterance_id"] == final["id"] and p["text"] for p in dictation)
    for i, p in partials:
        assert p["utterance_id"] in finals, ("a partial without its final", p)
        j, f = finals[p["utterance_id"]]
        assert p["id"] == f"{f['id']}/partial/{p['end_sample']}" and p["reason"] == "partial"
        assert p["start_sample"] == f["start_sample"] and p["end_sample"] <= f["end_sample"]
        assert p["session_id"] == f["session_id"] and p["words"] is None


def test_a_pause_caption_comes_before_its_final_with_the_finals_text(live, dictation, offline):
    """The dictation's first sentence is shorter than min_utterance_s: at its pause the utterance stays open to
    pack more speech, and the transcriber publishes at once a pause caption of it (the partial whose bounds the
    segmenter gives offline, schema-valid, the final's utterance id) before the final. (A periodic partial
    follows it when the first transcriber gets a loop without finals before its kill: timing, not asserted.)
    The meeting's sentences (2.5 s pauses) may get pause captions too, when the transcriber reads the pause
    before the 2 s that close the utterance (timing: a busy or re-reading service reads both in one batch, and
    the final alone covers it); then the final is the caption's very audio and has its text (reused)."""
    recs = values(live["msgs"])
    first_final = {}
    for i, r in enumerate(recs):
        if r["final"]:
            first_final.setdefault(r["id"], (i, r))
    (final,) = {r["id"]: r for r in _finals(recs, "dictation")}.values()
    start, end = dictation[1]
    pause = [(i, r) for i, r in enumerate(recs) if r["id"] == f"{final['id']}/partial/{end}"]
    assert pause, ("no pause caption", [r for r in recs if not r["final"]])
    i, c = pause[0]
    validate(c, "transcript")
    assert c["start_sample"] == start == final["start_sample"] and c["utterance_id"] == final["id"] and c["text"]
    assert i < first_final[final["id"]][0], "the pause caption came after its final"
    captions = [(i, r) for i, r in enumerate(recs) if not r["final"] and r["stream_id"] == "meeting"
                and r["end_sample"] == first_final.get(r["utterance_id"], (0, {}))[1].get("end_sample")]
    for i, c in captions:
        validate(c, "transcript")
        j, f = first_final[c["utterance_id"]]
        assert i < j, ("the pause caption came after its final", c, f)
        assert c["utterance_id"] == f["id"] and c["id"] == f"{f['id']}/partial/{f['end_sample']}"
        assert c["text"] == f["text"] and c["reason"] == "partial" and c["words"] is None
    assert {c["utterance_id"] for _, c in captions} <= {r["id"] for r in recs if r["final"]}
    assert len({c["utterance_id"] for _, c in captions}) <= len(offline)


def test_watch_shows_each_utterance_once_as_a_caption(live, offline):
    """`watch --topic TRANSCRIPTS` after the kill and restart: repeats (same id) are shown once, in order."""
    assert [c for c in live["captions"] if c.startswith("meeting ")] == [
        f"{'meeting':<20} {r['start_s']:8.2f}-{r['end_s']:<8.2f} {r['text']}" for r in offline]
    assert len([c for c in live["captions"] if c.startswith("dictation ")]) == 1  # the final, not the partials


def test_the_live_page_shows_recent_transcripts(live, offline, kafka_conf, tmp_path):
    """`serve -b` reads the transcripts topic: /v1/events sends each utterance once as a `transcripts` event (the
    topic holds repeats from the kill), and the page has the list app.js fills from it."""
    import httpx
    t = live["topics"]
    with running_serve(kafka_conf, t, tmp_path, "--transcripts-topic", t["transcripts"], "--model", "starter") \
            as (base, _proc):
        assert 'id="transcripts"' in httpx.get(base + "/").text
        assert 'addEventListener("transcripts"' in httpx.get(base + "/static/app.js").text
        got = sse_items(base, "transcripts", len(offline) + 1)
    assert len({c["id"] for c in got}) == len(got) and all(c["id"].count("/partial/") == 0 for c in got)
    got = [c for c in got if c["stream_id"] == "meeting"]
    assert [(c["start_s"], c["end_s"], c["text"]) for c in got] == [(r["start_s"], r["end_s"], r["text"])
                                                                     for r in offline]


def test_bad_frames_are_dead_lettered_with_their_reason(live):
    reasons = {deadletter_header_object(m)["audiostream.reason"]: m.key() for m in live["dead"]}
    assert reasons == {"bad_magic": b"junk", "sample_rate_mismatch": b"phone"}
    assert all(deadletter_header_object(m)["audiostream.analyzer"].startswith("transcriber-") for m in live["dead"])


def test_the_metrics_the_alert_rules_use_are_served(live, offline):
    from prometheus_client.parser import text_string_to_metric_families
    samples = {}
    for fam in text_string_to_metric_families(live["metrics"]):
        for s in fam.samples:
            samples.setdefault(s.name, []).append(s)
    groups = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())["groups"]
    rules = [r for g in groups if g["name"] == "audiostream-transcriber" for r in g["rules"]]
    import re
    names = {n for r in rules for n in re.findall(r"\baudiostream_[a-z_]+\b", r["expr"])}
    assert names and all(n in samples for n in names), (names, sorted(samples))

    def total(name):
        return sum(s.value for s in samples[name])
    published_by_second = len(offline) - len({r["id"] for r in live["before"]})
    assert total("audiostream_transcripts_total") >= published_by_second > 0
    assert total("audiostream_transcript_latency_seconds_count") >= published_by_second
    # every stretch of speech the second instance noted got a caption latency when a record first showed it
    assert total("audiostream_caption_latency_seconds_count") > 0
    assert total("audiostream_transcribed_audio_seconds_total") > 0
    assert total("audiostream_transcription_cpu_seconds_total") > 0


def test_every_speech_dashboard_panel_has_data_in_prometheus(live):
    """deploy/grafana/dashboards/audiostream-speech.json: every query of every panel parses and returns data
    in a real Prometheus scraping the transcriber of the live run (the operator's view of captions, latency,
    recogniser load, partials and dead letters)."""
    dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "audiostream-speech.json").read_text())
    exprs = [(p["title"], tgt["expr"]) for p in dashboard["panels"] for tgt in p["targets"]]
    assert len(dashboard["panels"]) >= 10 and len(exprs) >= 20
    port = live["prometheus"]
    # rate() panels need two scrapes inside their range: wait for data, not a fixed time
    try:
        wait_for(lambda: all(query(port, expr).get("data", {}).get("result") for _, expr in exprs), 90,
                 "every speech panel to have data", step=1.0)
    except AssertionError:
        pass  # the loop below names the panel without data
    for title, expr in exprs:
        res = query(port, expr)
        assert res["status"] == "success" and res["data"]["result"], (title, expr, res)
    ready = query(port, dashboard["panels"][0]["targets"][0]["expr"])["data"]["result"]
    assert float(ready[0]["value"][1]) == 1.0   # the second transcriber, consuming
    # the transcriber's alert rules, evaluated by the same Prometheus on the live metrics: healthy, Down false
    def evaluated():
        rules = alert_rules(port, "audiostream-transcriber")
        return rules if rules and all_evaluated(rules) else None
    rules = wait_for(evaluated, 60, "the transcriber's alert rules to be evaluated", step=0.5)
    assert len(rules) == 3 and all(r["health"] == "ok" for r in rules), rules
    down = next(r for r in rules if r["name"] == "AudiostreamTranscriberDown")
    assert query(port, down["query"])["data"]["result"] == []   # scraped: up is 1, the rule's condition is false
    assert query(port, 'up{job="audiostream-transcriber"}')["data"]["result"][0]["value"][1] == "1"


def test_batch_and_the_http_api_give_the_same_answers(live, speech_file, offline):
    batch, out = live["batch"]
    assert batch.wait(300) == 0, batch.stdout.read()
    import pyarrow.parquet as pq
    rows = pq.read_table(out.with_name("results.transcripts.parquet")).to_pylist()
    assert _answers(rows) == _answers(offline)
    assert [row["id"] for row in rows] == [rec["id"] for rec in offline]  # same file, same ids
    assert pq.read_table(out).num_rows > 0  # the window labels beside them

    from fastapi.testclient import TestClient

    from consumers.api import create_app
    with TestClient(create_app(model="starter")) as client:
        resp = client.post("/v1/transcribe", files={"file": (speech_file.name, speech_file.read_bytes())})
    assert resp.status_code == 200, resp.text
    assert resp.json()["transcripts"] == offline  # byte for byte the records `transcribe --json` prints
