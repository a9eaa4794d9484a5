"""The product's commands, run as a user runs them (subprocesses against the real broker)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamproc.windowing import WindowSpec

from .helpers import cli, consume, validate, values

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_and_prints_live_predictions():
    """`audiostream demo` starts its own broker, replays the demo clip and prints every window."""
    proc = subprocess.run(cli("demo", "--speed", "max", "--metrics-port", "0"), capture_output=True, text=True,
                          timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("demo-")]
    assert len(lines) == 27, proc.stdout
    assert "27/27 windows predicted" in proc.stderr
    labels = [ln.split()[2] for ln in lines]
    # the default model (soundtype) on the demo clip: 4 s speech, 4 s music, 3 s environment, 3 s silence.
    # Window k covers [0.5 k, 0.5 k + 1) s: every window inside one part must carry that part's label, in the
    # clip's order; the three that straddle a boundary (k = 7, 15, 21: half one sound, half the next) are mixes
    # and not judged (soundtype:4 calls the music/environment one speech).
    parts = [(0, 4, "speech"), (4, 8, "music"), (8, 11, "environment"), (11, 14, "silence")]
    want = {k: lab for k in range(27) for a, b, lab in parts if a <= 0.5 * k and 0.5 * k + 1 <= b}
    assert len(want) == 24 and sorted(set(range(27)) - set(want)) == [7, 15, 21]
    assert {k: labels[k] for k in want} == want, labels


def test_demo_against_a_cluster_touches_only_its_own_stream_and_topics(kafka_conf):
    """`demo -b` on a cluster that already carries other streams: it analyses only its own clip, publishes
    nothing into the cluster's standard topics, and deletes the topics it made."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    from producers.file import replay
    from streamproc.kafka import ensure_topics, producer_config
    from streamproc.settings import TOPIC_FRAMES, TOPIC_PREDICTIONS

    other = f"someone-else-{uuid.uuid4().hex[:6]}"
    ensure_topics(kafka_conf, {TOPIC_FRAMES: 1})
    noise = (np.random.default_rng(1).standard_normal(3 * 16000) * 3000).astype(np.int16)
    r = replay(noise, producer=Producer(producer_config(kafka_conf)), topic=TOPIC_FRAMES, stream_id=other,
               sr=16000, frame_samples=1600, speed=float("inf"))
    assert r.delivered == r.frames
    proc = subprocess.run(cli("demo", "-b", kafka_conf["bootstrap.servers"], "--speed", "max", "--duration", "3",
                              "--metrics-port", "0"), capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 5 and all(ln.startswith("demo-") for ln in lines), proc.stdout
    admin = AdminClient(dict(kafka_conf))
    deadline = time.monotonic() + 60  # deletion is acknowledged before every broker's metadata forgets the topic
    while True:
        names = set(admin.list_topics(timeout=10).topics)
        mine = [n for n in names if n.startswith("audiostream-demo-")]
        if not mine or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not mine, names
    if TOPIC_PREDICTIONS in names:  # nothing was published for the stream the demo did not send
        published = values(consume(kafka_conf, TOPIC_PREDICTIONS, timeout=5))
        assert not [p for p in published if p.get("stream_id") == other], published[:3]
    assert "5/5 windows predicted" in proc.stderr and "topics of its own" in proc.stderr, proc.stderr


def test_a_taken_metrics_port_is_a_clear_error_not_a_traceback(kafka_conf, topics):
    """A second analyzer on a host whose metrics port is taken: one line naming the port and the way out
    (`--metrics-port 0`), exit 2 (before: a traceback ending in `OSError: [Errno 98]`, exit 1)."""
    import socket
    t = topics()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        r = subprocess.run(cli("analyze", "-b", kafka_conf["bootstrap.servers"], "--frames-topic", t["frames"],
                               "--metrics-port", str(port)), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"--metrics-port {port}: 127.0.0.1:{port} is already in use" in r.stderr, r.stderr[-3000:]
    assert "--metrics-port 0" in r.stderr


@pytest.mark.parametrize("command", [["watch"], ["produce-file", "CLIP"], ["topics", "list"]])
def test_an_unreachable_broker_is_one_line_per_complaint_then_a_clear_error(command, tmp_path):
    """Nothing listens at the address: the command gives up with a message a person can act on, exit 2,
    after one librdkafka line per distinct complaint (before: watch retried forever, 1158 ERROR lines in
    60 s; the others printed ~190 identical lines and a stray '{}')."""
    from .helpers import free_port
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.zeros(1600, np.float32), 16000)
    address = f"127.0.0.1:{free_port()}"  # free right now: connection refused
    args = [str(clip) if a == "CLIP" else a for a in command]
    r = subprocess.run(cli(*args, "-b", address), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert f"cannot reach Kafka at '{address}'" in last and "check --bootstrap-servers" in last, last
    assert not last.endswith("{}"), last
    errors = [ln for ln in r.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) <= 3, r.stderr[-3000:]


def committed(kafka_conf, group: str, topic: str, partitions: int) -> list[int]:
    c = Consumer({**kafka_conf, "group.id": group, "enable.auto.commit": False})
    try:
        return [tp.offset for tp in c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)]
    finally:
        c.close()


def end_offsets(kafka_conf, topic: str, partitions: int) -> list[int]:
    c = Consumer({**kafka_conf, "group.id": f"probe-{uuid.uuid4().hex[:6]}"})
    try:
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)]
    finally:
        c.close()


def test_analyze_cli_commits_after_delivery_and_stops_on_sigterm(kafka_conf, topics, tmp_path):
    t = topics(partitions=2)
    boot = kafka_conf["bootstrap.servers"]
    wav = tmp_path / "hum.wav"
    sf.write(wav, (0.2 * np.sin(2 * np.pi * 300 * np.arange(3 * 16000) / 16000)).astype(np.float32), 16000)
    group = f"cli-{uuid.uuid4().hex[:6]}"
    analyzer = subprocess.Popen(cli("analyze", "-b", boot, "--frames-topic", t["frames"], "--predictions-topic",
                                    t["predictions"], "--features-topic", t["features"], "--deadletter-topic",
                                    t["deadletter"], "--group-id", group, "--metrics-port", "0"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        p = subprocess.run(cli("produce-file", str(wav), "--stream-id", "hum", "-b", boot, "--topic", t["frames"],
                               "--speed", "max", "-q"), capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        expected = len(WindowSpec().window_bounds(3 * 16000))
        preds = values(consume(kafka_conf, t["predictions"], count=expected))
        assert [x["window_index"] for x in preds] == list(range(expected))
        # the last window is completed by the last record (frame 29), so every record was processed
        # by now: SIGTERM must flush and commit all of them (no sleep needed to "let it settle")
        analyzer.send_signal(signal.SIGTERM)
        out, err = analyzer.communicate(timeout=30)
    finally:
        if analyzer.poll() is None:
            analyzer.kill()
    assert analyzer.returncode == 0, err[-3000:]
    assert "metrics http://127.0.0.1:" in err
    # every frame was processed and its outputs acknowledged, so the group's offsets are at the end
    ends = end_offsets(kafka_conf, t["frames"], 2)
    assert sorted(ends) == [0, 30]  # one stream -> one partition; 3 s in 100 ms frames
    assert [c for c, e in zip(committed(kafka_conf, group, t["frames"], 2), ends) if e] == [30]


def test_bad_model_fails_fast_without_consuming(kafka_conf, topics, tmp_path):
    t = topics()
    bundle = tmp_path / "broken"
    shutil.copytree(REPO / "models" / "starter" / "1", bundle)
    (bundle / "model.onnx").write_bytes(b"not an onnx model")
    group = f"bad-{uuid.uuid4().hex[:6]}"
    p = subprocess.run(cli("analyze", "-b", kafka_conf["bootstrap.servers"], "--model", str(bundle),
                           "--frames-topic", t["frames"], "--group-id", group, "--no-metrics"),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "model.onnx: onnxruntime cannot load it" in p.stderr
    groups = AdminClient(kafka_conf).list_consumer_groups(request_timeout=10).result()
    assert group not in {g.group_id for g in groups.valid}  # never joined, so never committed

    p = subprocess.run(cli("analyze", "-b", kafka_conf["bootstrap.servers"], "--model", "nosuchtask", "--no-metrics"),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "no model task 'nosuchtask'" in p.stderr


def test_window_spec_mismatch_is_refused_naming_it(tmp_path):
    import yaml
    spec = WindowSpec(n_mels=128).to_dict()
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    p = subprocess.run(cli("analyze", "-b", "127.0.0.1:1", "--window-spec", str(tmp_path / "spec.yaml"),
                           "--no-metrics"), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "different window/feature spec" in p.stderr and "n_mels: 64 != 128" in p.stderr
    (tmp_path / "bad.yaml").write_text("hop_length: 0\n")
    p = subprocess.run(cli("analyze", "--window-spec", str(tmp_path / "bad.yaml"), "--no-metrics"),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "hop_length=0 must be a positive integer" in p.stderr
    # the bundle's own spec is accepted (then the unreachable broker is what stops it)
    (tmp_path / "same.yaml").write_text(yaml.safe_dump(WindowSpec().to_dict()))
    p = subprocess.run(cli("analyze", "-b", "127.0.0.1:1", "--window-spec", str(tmp_path / "same.yaml"),
                           "--no-metrics"), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "cannot reach Kafka" in p.stderr


def test_produce_file_rejects_bad_input(tmp_path):
    bad = tmp_path / "notaudio.wav"
    bad.write_bytes(b"RIFF....this is not audio")
    p = subprocess.run(cli("produce-file", str(bad), "-b", "127.0.0.1:1"), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "cannot decode audio" in p.stderr
    p = subprocess.run(cli("produce-file", str(bad), "--speed", "-2"), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "must be > 0" in p.stderr


def test_watch_prints_predictions(kafka_conf, topics, start_analyzer, tmp_path):
    t = topics()
    start_analyzer(t, model="starter")  # a beep is "tonal" to the starter model: a label we can predict
    wav = tmp_path / "beep.wav"
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 880 * np.arange(2 * 16000) / 16000)).astype(np.float32), 16000)
    p = subprocess.run(cli("produce-file", str(wav), "--stream-id", "beeper", "-b", kafka_conf["bootstrap.servers"],
                           "--topic", t["frames"], "--speed", "max", "-q"), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    w = subprocess.run(cli("watch", "-b", kafka_conf["bootstrap.servers"], "--topic", t["predictions"],
                           "--from-beginning", "--max", "3", "--idle-timeout", "30"),
                       capture_output=True, text=True, timeout=60)
    assert w.returncode == 0, w.stderr
    rows = [ln.split() for ln in w.stdout.splitlines()]
    assert len(rows) == 3 and all(r[0] == "beeper" and r[2] == "tonal" for r in rows), w.stdout
    j = subprocess.run(cli("watch", "-b", kafka_conf["bootstrap.servers"], "--topic", t["predictions"],
                           "--from-beginning", "--json", "--max", "1", "--idle-timeout", "30"),
                       capture_output=True, text=True, timeout=60)
    rec = json.loads(j.stdout)
    assert rec["stream_id"] == "beeper" and rec["window_start_s"] == 0.0


def test_watch_draws_a_live_table_on_a_terminal(kafka_conf, topics, start_analyzer, tmp_path):
    """Under a pseudo-terminal `watch` redraws one row per stream with label, confidence and level meter,
    and a stream's genre and mood from the music tagger's records (docs/music.md) beside its label."""
    import pty
    import select
    from confluent_kafka import Producer
    t = topics()
    start_analyzer(t, model="starter")  # tone -> "tonal", noise -> "noise"
    # a tag record of porch's first 3 s (audio.tags schema), keyed like porch's frames and ahead of its
    # predictions in their partition, so watch has read it before its 6th prediction: here the tagger's
    # topic is the predictions topic (watch tells the records apart by their fields)
    tags = {"rock": 0.61, "pop": 0.22, "jazz": 0.05, "happy": 0.31, "sad": 0.02}
    rec = {"v": 1, "stream_id": "porch", "window_index": 0, "start_sample": 0, "end_sample": 48128,
           "sample_rate": 16000, "start_s": 0.0, "end_s": 3.008, "model": "musictags-msd:1",
           "gate_model": "soundtype:4", "music_share": 1.0, "top": [[k, v] for k, v in tags.items()],
           "tags": tags, "embedding": [0.0]}
    validate(rec, "audio.tags")
    prod = Producer({**kafka_conf})
    prod.produce(t["predictions"], json.dumps(rec).encode(), key=b"porch")
    assert prod.flush(30) == 0
    for sid, y in (("porch", 0.3 * np.sin(2 * np.pi * 660 * np.arange(2 * 16000) / 16000)),
                   ("garage", 0.2 * np.random.default_rng(1).standard_normal(2 * 16000))):
        sf.write(tmp_path / f"{sid}.wav", y.astype(np.float32), 16000)
        p = subprocess.run(cli("produce-file", str(tmp_path / f"{sid}.wav"), "--stream-id", sid, "-b",
                               kafka_conf["bootstrap.servers"], "--topic", t["frames"], "--speed", "max", "-q"),
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
    consume(kafka_conf, t["predictions"], count=6)
    master, slave = pty.openpty()
    proc = subprocess.Popen(cli("watch", "-b", kafka_conf["bootstrap.servers"], "--topic", t["predictions"],
                                "--tags-topic", t["predictions"], "--from-beginning", "--max", "6",
                                "--idle-timeout", "20"),
                            stdin=slave, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    proc.wait(30)
    os.close(master)
    text = screen.decode(errors="replace")
    assert proc.returncode == 0
    assert "\x1b[" in text  # redrawn in place, not scrolled lines
    last = text.split("STREAM")[-1]
    assert "LABEL" in last and "LEVEL" in last and "GAPS" in last
    rows = {ln.split()[0]: ln.split() for ln in last.splitlines() if ln.strip().startswith(("porch", "garage"))}
    assert rows["porch"][1] == "tonal" and rows["garage"][1] == "noise", last
    assert "#" in rows["porch"][3]  # the level meter shows a -13 dBFS tone
    porch = next(ln for ln in last.splitlines() if ln.strip().startswith("porch"))
    assert "MUSIC, LAST MINUTE" in last and porch.rstrip().endswith("genre: rock 0.61, pop 0.22  mood: happy 0.31"), last
    assert "genre" not in next(ln for ln in last.splitlines() if ln.strip().startswith("garage"))
