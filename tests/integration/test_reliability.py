"""docs/guarantees.md, proved against a real broker: nothing lost across crashes, rebalances and
broker restarts; sequence faults counted and flagged; bad input and slow models never stop the service.

Every test counts instead of eyeballing: windows expected (from the audio sent) against predictions
received after dedupe by id, classified the way Kafka's own system tests classify a run: all
delivered, more than generated (duplicates, reported) or less than generated (a failure).
"""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from producers.file import replay
from streamproc.kafka import producer_config
from streamproc import wire
from streamproc.audio import to_s16
from streamproc.windowing import WindowSpec

from .helpers import cli, consume, free_port, wait_for, validate

pytestmark = pytest.mark.integration
SPEC = WindowSpec()
SR = SPEC.sr


def signal_for(i: int, seconds: float) -> np.ndarray:
    """A distinct, deterministic stream: tones that change every 2 s, over a little noise."""
    rng = np.random.default_rng(1000 + i)
    t = np.arange(int(seconds * SR)) / SR
    f = 200 + 150 * ((np.floor(t / 2) + i) % 7)
    y = 0.3 * np.sin(2 * np.pi * np.cumsum(f) / SR) + 0.02 * rng.standard_normal(t.size)
    return to_s16(y)


class Streams:
    """N streams of ``seconds`` each, with fixed session ids, and the window ids they must yield."""

    def __init__(self, n: int, seconds: float, prefix: str | None = None):
        prefix = prefix or f"rel-{uuid.uuid4().hex[:6]}"
        self.ids = [f"{prefix}-{i}" for i in range(n)]
        self.pcm = [signal_for(i, seconds) for i in range(n)]
        self.sessions = [uuid.uuid4().bytes for _ in range(n)]
        self.expected = {f"{sid}/{ses.hex()}/{a}"
                         for sid, ses, pcm in zip(self.ids, self.sessions, self.pcm)
                         for a, _b in SPEC.window_bounds(len(pcm))}

    def produce(self, kafka_conf, topic: str, speed: float, frame_samples: int = 1600) -> list[threading.Thread]:
        producer = Producer(producer_config(kafka_conf))
        results = []

        def one(i):
            results.append(replay(self.pcm[i], producer=producer, topic=topic, stream_id=self.ids[i], sr=SR,
                                  frame_samples=frame_samples, speed=speed, session_id=self.sessions[i],
                                  flush_timeout=120))
        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(self.ids))]
        for th in threads:
            th.start()
        threads[0].results = results
        return threads


def read_predictions(kafka_conf, topic: str, expected: set, timeout: float, read_committed: bool = False,
                     settle: float = 2.0):
    """Predictions until every expected id was seen (plus ``settle`` s for late duplicates)."""
    conf = {**kafka_conf, "isolation.level": "read_committed" if read_committed else "read_uncommitted"}
    seen: set = set()
    done_at = [None]

    def until(msgs):  # called with the same, growing list
        for m in msgs[until.n:]:
            seen.add(json.loads(m.value())["id"])
        until.n = len(msgs)
        if expected <= seen and done_at[0] is None:
            done_at[0] = time.monotonic()
        return done_at[0] is not None and time.monotonic() - done_at[0] > settle
    until.n = 0
    return [json.loads(m.value()) for m in consume(conf, topic, until=until, timeout=timeout)]


def classify(preds: list[dict], expected: set) -> dict:
    ids = collections.Counter(p["id"] for p in preds)
    report = {"expected": len(expected), "received": len(preds), "distinct": len(ids),
              "missing": len(expected - set(ids)), "unexpected": len(set(ids) - expected),
              "duplicates": sum(n - 1 for n in ids.values())}
    report["verdict"] = ("less-than-generated" if report["missing"] else
                         "more-than-generated" if report["duplicates"] or report["unexpected"] else "all-delivered")
    print(f"delivery: {report}")
    return report


def analyze_cmd(kafka_conf, t, group, *extra):
    return cli("analyze", "-b", kafka_conf["bootstrap.servers"], "--frames-topic", t["frames"],
               "--predictions-topic", t["predictions"], "--features-topic", t["features"],
               "--deadletter-topic", t["deadletter"], "--group-id", group, "--no-create-topics",
               "--no-metrics", *extra)


class Spawned(subprocess.Popen):
    """A command whose output goes to a file, never a pipe: a pipe nobody reads fills up during an
    outage's reconnect log lines and blocks the process."""

    def output(self) -> str:
        self.log.flush()
        return open(self.log.name, errors="replace").read()

    def communicate(self, timeout=None):
        self.wait(timeout)
        return self.output(), ""


def spawn(cmd, **kw) -> Spawned:
    import tempfile
    log = tempfile.NamedTemporaryFile("w", prefix="audiostream-test-", suffix=".log", delete=False)
    proc = Spawned(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, **kw)
    proc.log = log
    return proc


def group_has_members(kafka_conf, group: str) -> bool:
    """The consumer group is stable with every member assigned partitions: the analyzer reads."""
    from confluent_kafka.admin import AdminClient
    admin = AdminClient(dict(kafka_conf))
    try:
        desc = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
    except Exception:  # not known to the coordinator yet
        return False
    return str(desc.state).endswith("STABLE") and bool(desc.members) and all(
        m.assignment and m.assignment.topic_partitions for m in desc.members)


def count_records(kafka_conf, topic: str) -> int:
    """Records written to ``topic`` (read uncommitted: an open transaction's too, and its markers)."""
    c = Consumer({**kafka_conf, "group.id": "count-" + uuid.uuid4().hex[:6], "isolation.level": "read_uncommitted"})
    try:
        md = c.list_topics(topic, timeout=10)
        total = 0
        for p in md.topics[topic].partitions:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += hi - lo
        return total
    finally:
        c.close()


def distinct_ids_so_far(kafka_conf, topic: str) -> set:
    """The prediction ids on ``topic`` now (read uncommitted), for a topic nothing writes to any more: read
    until 3 s pass without a new record. Watermarks cannot say this under --exactly-once: transaction
    markers take offsets too."""
    seen = [time.monotonic(), 0]

    def idle(msgs):
        if len(msgs) != seen[1]:
            seen[:] = [time.monotonic(), len(msgs)]
        return len(msgs) > 0 and time.monotonic() - seen[0] > 3.0
    return {json.loads(m.value())["id"] for m in consume(kafka_conf, topic, until=idle, timeout=90)}


def same_content(preds: list[dict]) -> None:
    """Duplicates of a window carry the same deterministic result (consumers may keep either)."""
    by_id = collections.defaultdict(list)
    for p in preds:
        by_id[p["id"]].append(p)
    for copies in by_id.values():
        assert len({(c["label"], c["start_sample"], c["end_sample"], c["gap"]) for c in copies}) == 1
        for c in copies[1:]:
            for lab, v in c["scores"].items():
                assert abs(v - copies[0]["scores"][lab]) < 1e-4


# -- 1, 2: crash ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_sigkill_mid_stream_loses_no_window(kafka_conf, topics, mode):
    """SIGKILL the analyzer mid-stream and restart it: every window of three 60 s streams has a
    prediction. At-least-once: exactly one per window after dedupe by id. Exactly-once: a
    read_committed reader sees no duplicate at all."""
    t = topics(partitions=2)
    streams = Streams(3, 60.0)
    group = f"g-{uuid.uuid4().hex[:6]}"
    extra = ["--instance-id", "replica-0"] + (["--exactly-once"] if mode == "exactly-once" else [])
    first = spawn(analyze_cmd(kafka_conf, t, group, *extra))
    try:
        # the audio starts once the analyzer reads: one that joins late on a loaded machine would catch up on
        # all of it in one burst (one transaction) and be killed after the end
        wait_for(lambda: group_has_members(kafka_conf, group), 90, "the analyzer in its group")
        producers = streams.produce(kafka_conf, t["frames"], speed=6.0)  # 60 s of audio in 10 s
        wait_for(lambda: count_records(kafka_conf, t["predictions"]) >= len(streams.expected) // 3, 60,
                 "a third of the predictions")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        done_before_kill = distinct_ids_so_far(kafka_conf, t["predictions"])
        assert len(done_before_kill & streams.expected) < len(streams.expected), \
            "the kill came after the end: not mid-stream"
        second = spawn(analyze_cmd(kafka_conf, t, group, *extra))
        try:
            for th in producers:
                th.join(120)
            preds = read_predictions(kafka_conf, t["predictions"], streams.expected, timeout=120,
                                     read_committed=(mode == "exactly-once"))
        finally:
            second.send_signal(signal.SIGTERM)
            out = second.communicate(timeout=30)[0]
        assert second.returncode == 0, out[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    report = classify(preds, streams.expected)
    assert report["missing"] == 0 and report["unexpected"] == 0, report
    same_content(preds)
    if mode == "exactly-once":
        assert report["duplicates"] == 0, report
        assert report["verdict"] == "all-delivered"
    # per stream, windows come out in stream order (first copy of each id)
    firsts = {}
    for p in preds:
        firsts.setdefault(p["id"], p)
    for sid in streams.ids:
        starts = [p["start_sample"] for p in firsts.values() if p["stream_id"] == sid]
        assert starts == sorted(starts)


# -- 3: rebalance ----------------------------------------------------------------------------------------
def test_rebalance_second_joins_then_first_leaves(kafka_conf, topics, start_analyzer):
    """A second analyzer joins mid-stream, then the first leaves: no window missing, per-stream order
    kept, and the hand-over rebuilt window state instead of restarting streams at a boundary."""
    t = topics(partitions=4)
    streams = Streams(6, 30.0)
    a = start_analyzer(t, commit_interval_s=0.5)
    group = a.config.group_id
    producers = streams.produce(kafka_conf, t["frames"], speed=3.0)  # 30 s in 10 s
    wait_for(lambda: count_records(kafka_conf, t["predictions"]) >= len(streams.expected) // 4, 60, "a quarter")
    b = start_analyzer(t, group_id=group, commit_interval_s=0.5)
    wait_for(lambda: len(b.assigned) > 0, 60, "the second analyzer to get partitions")
    assert len(a.assigned) + len(b.assigned) == 4
    wait_for(lambda: b.metrics.registry.get_sample_value("audiostream_windows_analyzed_total",
                                                         {"model": b.metrics.model}) > 0, 60,
             "the second analyzer to analyse windows while the first still works")
    a.stop()  # leaves the group: its partitions move to b
    wait_for(lambda: len(b.assigned) == 4, 60, "the second analyzer to own every partition")
    assert count_records(kafka_conf, t["predictions"]) < len(streams.expected), "hand-over was not mid-stream"
    for th in producers:
        th.join(120)
    preds = read_predictions(kafka_conf, t["predictions"], streams.expected, timeout=120)
    report = classify(preds, streams.expected)
    assert report["missing"] == 0 and report["unexpected"] == 0, report
    same_content(preds)
    # per stream, in the order the predictions topic holds them (one partition per stream), the first
    # copy of each window comes in window order
    for sid in streams.ids:
        seen, starts = set(), []
        for p in preds:
            if p["stream_id"] == sid and p["id"] not in seen:
                seen.add(p["id"])
                starts.append(p["start_sample"])
        assert starts == sorted(starts), sid
    assert {p["analyzer"] for p in preds} == {a.instance, b.instance}  # both really worked
    assert a.metrics.registry.get_sample_value("audiostream_offset_commits_total", {"outcome": "ok"}) > 0
    assert a.metrics.registry.get_sample_value("audiostream_offset_commits_total", {"outcome": "failed"}) == 0
    # the new owner re-read what open windows needed and did not publish those windows again
    assert b.metrics.registry.get_sample_value("audiostream_windows_replayed_total") > 0


# -- 4: broker outage -----------------------------------------------------------------------------------
def test_broker_restart_during_replay(private_broker):
    """Stop the broker mid-replay and start it again: producer and analyzer recover on their own,
    /ready says 503 during the outage, nothing is missing; then a second outage past
    --unavailable-timeout makes the analyzer exit non-zero with a message."""
    broker = private_broker()
    conf = {"bootstrap.servers": broker.bootstrap_servers}
    from streamproc.kafka import ensure_topics
    t = {k: f"outage.{k}" for k in ("frames", "predictions", "features", "deadletter")}
    ensure_topics(conf, {n: 2 for n in t.values()})
    streams = Streams(2, 24.0)  # 12 s at speed 2: frames sent during the outage wait in the producer
    port = free_port()
    cmd = analyze_cmd(conf, t, "outage-group", "--unavailable-timeout", "25")
    cmd.remove("--no-metrics")
    analyzer = spawn(cmd + ["--metrics-port", str(port)])

    def ready() -> int:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2).status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return -1
    wait_for(lambda: ready() == 200, 60, "the analyzer to be ready")
    producers = streams.produce(conf, t["frames"], speed=2.0)
    wait_for(lambda: count_records(conf, t["predictions"]) >= 20, 60, "first predictions")
    t_stop = time.monotonic()
    broker.stop(remove=False)  # SIGTERM: a controlled shutdown, data kept
    wait_for(lambda: ready() == 503, 30, "/ready to report the outage")
    scrape = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "audiostream_analyzer_ready 0.0" in scrape  # the gauge says what /ready says
    time.sleep(3)  # the outage lasts a while
    broker.start()
    print(f"broker outage: stopped and started again in {time.monotonic() - t_stop:.1f} s")
    wait_for(lambda: ready() == 200, 60, "/ready after the broker came back")
    for th in producers:
        th.join(120)
    assert all(r.failed == 0 for r in producers[0].results), producers[0].results
    preds = read_predictions(conf, t["predictions"], streams.expected, timeout=120)
    report = classify(preds, streams.expected)
    assert report["missing"] == 0 and report["unexpected"] == 0, report
    assert analyzer.poll() is None, "the analyzer died during the outage"
    # an outage longer than --unavailable-timeout: exit non-zero, saying why
    broker.stop(remove=False)
    out = analyzer.communicate(timeout=90)[0]
    assert analyzer.returncode == 2, out[-2000:]
    assert "unreachable for" in out and "--unavailable-timeout 25" in out, out[-2000:]


# -- 5: sequence faults ---------------------------------------------------------------------------------
def test_sequence_faults_counted_and_flagged(kafka_conf, topics, start_analyzer):
    """A test producer sends duplicates, a 3-frame reorder and a 2 s gap: each counted as specified,
    the gap marked on the features topic, and the windows around it flagged; nothing else is lost."""
    t = topics()
    a = start_analyzer(t, metrics_port=0)
    pcm = signal_for(0, 12.0)
    session = uuid.uuid4().bytes
    sid = "faulty"
    n = 1600
    chunks = [pcm[i:i + n] for i in range(0, len(pcm), n)]  # 120 frames of 100 ms
    order = list(range(0, 20)) + [20, 20, 21] + [23, 24, 22] + list(range(25, 40)) + [38, 39] \
        + list(range(60, 120))  # dup 20, reorder 22 by 2 places, dup 38-39, gap 40..59 (2 s)
    p = Producer(producer_config(kafka_conf))
    for seq in order:
        p.produce(t["frames"], key=sid.encode(), value=wire.encode_pcm(
            chunks[seq].tobytes(), channels=1, n_frames=n, sample_rate=SR, sequence=seq, sample_offset=seq * n,
            capture_time_ns=time.time_ns(), session_id=session,
            flags=wire.FLAG_END_OF_STREAM if seq == 119 else 0))
    assert p.flush(30) == 0
    # windows: 0..4 s contiguous; the 2 s gap (4.0-6.0 s) is longer than a window: resync at 6.0 s
    expected = [a_ for a_, b_ in SPEC.window_bounds(len(pcm)) if b_ <= 4 * SR or a_ >= 6 * SR]
    preds = consume(kafka_conf, t["predictions"], count=len(expected), timeout=60)
    got = sorted(json.loads(m.value())["start_sample"] for m in preds)
    assert got == expected
    flagged = sorted(json.loads(m.value())["start_sample"] for m in preds if json.loads(m.value())["gap"])
    assert flagged == [6 * SR]  # the first window after the gap; the reorder left no mark
    body = urllib.request.urlopen(f"http://127.0.0.1:{a.metrics_port}/metrics", timeout=5).read().decode()
    counts = {ev: float(next(line.split()[-1] for line in body.splitlines()
                             if line.startswith(f'audiostream_stream_sequence_events_total{{event="{ev}"}}')))
              for ev in ("duplicate", "gap", "resync", "reordered")}
    assert counts == {"duplicate": 3.0, "gap": 1.0, "resync": 1.0, "reordered": 1.0}, counts
    assert "audiostream_stream_gap_seconds_total 2.0" in body
    feats = [json.loads(m.value()) for m in consume(kafka_conf, t["features"], count=len(expected) + 1, timeout=30)]
    markers = [f for f in feats if f["type"] == "gap"]
    assert len(markers) == 1
    assert markers[0]["gap_start_sample"] == 40 * n and markers[0]["gap_s"] == 2.0
    assert markers[0]["missing_frames"] == 20 and markers[0]["handling"] == "resynchronised"
    validate(markers[0], "audio.features")


def test_short_gap_is_zero_filled_and_flagged_not_silent(kafka_conf, topics, start_analyzer):
    t = topics()
    start_analyzer(t)
    pcm = signal_for(1, 5.0)
    session, n = uuid.uuid4().bytes, 1600
    p = Producer(producer_config(kafka_conf))
    seqs = [s for s in range(50) if s not in (20, 21, 22)]  # 300 ms lost at 2.0-2.3 s
    for seq in seqs:
        p.produce(t["frames"], key=b"holey", value=wire.encode_pcm(
            pcm[seq * n:(seq + 1) * n].tobytes(), channels=1, n_frames=n, sample_rate=SR, sequence=seq,
            sample_offset=seq * n, capture_time_ns=time.time_ns(), session_id=session))
    assert p.flush(30) == 0
    bounds = SPEC.window_bounds(len(pcm))
    preds = [json.loads(m.value()) for m in consume(kafka_conf, t["predictions"], count=len(bounds), timeout=60)]
    assert sorted(p_["start_sample"] for p_ in preds) == [a_ for a_, _ in bounds]
    flagged = sorted(p_["start_sample"] for p_ in preds if p_["gap"])
    assert flagged == [a_ for a_, b_ in bounds if a_ < 36800 and b_ > 32000]  # overlapping the zero-fill
    feats = [json.loads(m.value()) for m in consume(kafka_conf, t["features"], count=len(bounds) + 1, timeout=30)]
    marker = [f for f in feats if f["type"] == "gap"]
    assert len(marker) == 1 and marker[0]["handling"] == "zero_filled_and_flagged"
    assert marker[0]["gap_start_sample"] == 32000 and marker[0]["gap_end_sample"] == 36800


# -- 6: bad input parade ----------------------------------------------------------------------------------
def test_bad_input_parade_through_the_live_analyzer(kafka_conf, topics, start_analyzer):
    """Every kind of bad record (13 reasons), interleaved with a good stream: each dead-lettered with its reason
    and counted; the good stream yields every window; the analyzer stays ready."""
    t = topics()
    a = start_analyzer(t, metrics_port=0, max_frame_bytes=64 * 1024)
    session = uuid.uuid4().bytes
    good = signal_for(2, 6.0)

    def frame(pcm, seq, sr=SR, session_id=session, **kw):
        return wire.encode_pcm(pcm.tobytes(), channels=1, n_frames=len(pcm), sample_rate=sr, sequence=seq,
                               sample_offset=seq * 1600, capture_time_ns=time.time_ns(), session_id=session_id, **kw)
    valid = frame(good[:1600], 0)
    nan = np.full(1600, np.nan, np.float32)
    bad = [  # (key, value, reason)
        (b"bad", os.urandom(200), "bad_magic"),
        (b"bad", b"ASFM\x02" + valid[5:], "unsupported_version"),
        (b"bad", valid[:40], "too_short"),
        (b"bad", valid[:-10], "length_mismatch"),
        (b"bad", valid[:-2] + b"\x00\x00", "checksum_mismatch"),
        (b"bad", frame(np.zeros(40000, np.int16), 0), "oversized"),
        (b"bad", frame(np.zeros(8000, np.int16), 0, sr=400), "too_long"),  # 20 s in 16 KB: over --max-frame-seconds
        (b"bad", valid[:6] + b"\x09" + valid[7:], "unsupported_encoding"),  # header byte 6: encoding
        (b"bad", valid[:7] + b"\x00" + valid[8:], "bad_channels"),  # header byte 7: channels
        (b"bad", frame(nan, 0, encoding="pcm_f32le"), "non_finite"),
        (b"\xff\xfe-not-utf8", valid, "bad_stream_id"),
        (b"x" * 300, valid, "bad_stream_id"),
        (None, valid, "bad_stream_id"),
        (b"bad", None, "empty"),
        (b"sr-changer", frame(np.zeros(1600, np.int16), 0, sr=48000), "sample_rate_mismatch"),
    ]
    reasons = [r for _, _, r in bad]
    p = Producer(producer_config(kafka_conf))
    frames = [(b"good", frame(good[i * 1600:(i + 1) * 1600], i)) for i in range(60)]
    # a stream that changes its sample rate mid-stream: its 16 kHz frames are analysed, the 48 kHz one refused
    sr_session = uuid.uuid4().bytes
    sr_good = [(b"sr-changer", frame(good[i * 1600:(i + 1) * 1600], i, session_id=sr_session)) for i in range(3)]
    mixed = []
    for i, (k, v) in enumerate(frames):
        mixed.append((k, v))
        if i % 4 == 0 and bad:
            k2, v2, _ = bad.pop(0)
            mixed.append((k2, v2))
    mixed[3:3] = sr_good
    for k, v in mixed:
        p.produce(t["frames"], key=k, value=v)
    assert not bad, "parade longer than the good stream"
    assert p.flush(30) == 0
    dead = consume(kafka_conf, t["deadletter"], count=len(reasons), timeout=60)
    got = sorted(dict(m.headers())["audiostream.reason"].decode() for m in dead)
    assert got == sorted(reasons)
    for m in dead:
        h = dict(m.headers())
        assert h["audiostream.error"] and h["audiostream.source"].startswith(t["frames"].encode())
        if h["audiostream.reason"] == b"empty":
            assert m.value() is None  # a NULL record's dead letter keeps its NULL value (not b"")
    bounds = SPEC.window_bounds(len(good))
    preds = [json.loads(m.value()) for m in consume(kafka_conf, t["predictions"], count=len(bounds), timeout=60)]
    assert sorted(p_["start_sample"] for p_ in preds if p_["stream_id"] == "good") == [a_ for a_, _ in bounds]
    assert not any(p_["gap"] for p_ in preds)
    body = urllib.request.urlopen(f"http://127.0.0.1:{a.metrics_port}/metrics", timeout=5).read().decode()
    for reason in set(reasons):
        assert f'audiostream_deadletter_frames_total{{reason="{reason}"}} {float(reasons.count(reason))}' in body
    assert urllib.request.urlopen(f"http://127.0.0.1:{a.metrics_port}/ready", timeout=5).status == 200


# -- 7: many short-lived streams --------------------------------------------------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_ten_thousand_short_lived_streams(kafka_conf, topics, start_analyzer):
    """10,000 distinct stream ids, 0.2 s each: state and memory return near baseline after idle
    eviction, the active-streams gauge returns to 0, and no metric carries a stream id."""
    t = topics(partitions=2)
    a = start_analyzer(t, metrics_port=0, idle_timeout_s=3.0)
    wait_for(lambda: len(a.assigned) == 2, 30, "assignment")
    baseline = _rss()
    p = Producer(producer_config(kafka_conf, **{"linger.ms": 20}))
    n_streams, n = 10_000, 1600
    chunk = signal_for(3, 0.1)
    ids = [f"short-{uuid.uuid4().hex}" for _ in range(n_streams)]
    for sid in ids:
        session = uuid.uuid4().bytes
        for seq in range(2):
            p.produce(t["frames"], key=sid.encode(), value=wire.encode_pcm(
                chunk.tobytes(), channels=1, n_frames=n, sample_rate=SR, sequence=seq, sample_offset=seq * n,
                capture_time_ns=time.time_ns(), session_id=session))
        p.poll(0)
    assert p.flush(60) == 0
    peak = [0, 0]

    def consumed():
        peak[0] = max(peak[0], len(a.engine.streams))
        peak[1] = max(peak[1], _rss())
        return a.metrics.registry.get_sample_value("audiostream_frames_consumed_total",
                                                   {"topic": t["frames"]}) >= 2 * n_streams
    wait_for(consumed, 120, "all frames consumed", step=0.05)
    wait_for(lambda: len(a.engine.streams) == 0, 30, "idle eviction")
    reg = a.metrics.registry
    wait_for(lambda: reg.get_sample_value("audiostream_active_streams") == 0
             and reg.get_sample_value("audiostream_stream_state_bytes") == 0, 30,
             "the next housekeeping pass to publish the gauges")
    body = urllib.request.urlopen(f"http://127.0.0.1:{a.metrics_port}/metrics", timeout=5).read().decode()
    assert "audiostream_active_streams 0.0" in body
    assert "audiostream_stream_state_bytes 0.0" in body
    after = _rss()
    print(f"10k streams: peak active {peak[0]}, rss baseline {baseline >> 20} MiB, peak {peak[1] >> 20} MiB, "
          f"after eviction {after >> 20} MiB")
    assert peak[0] > 1000  # they really were held at the same time
    assert after - baseline < 64 << 20, (baseline, peak[1], after)
    assert not any(sid in body for sid in ids[:: 97]), "a stream id leaked into a metric"
    assert "short-" not in body


# -- 8: slow and poison models ------------------------------------------------------------------------------
def test_slow_model_falls_behind_with_bounded_memory(kafka_conf, topics, start_analyzer):
    """Inference at 2x real time: lag grows and is reported, memory stays bounded, the analyzer stays
    ready; once the model is fast again it catches up and every window is there."""
    t = topics(partitions=2)
    slow = threading.Event()
    slow.set()
    hop_s = SPEC.hop / SR
    n_streams = 2

    def two_x_real_time(windows):
        if slow.is_set():  # each stream completes a window per hop: this costs twice the audio's duration
            time.sleep(2 * hop_s * len(windows) / n_streams)
    a = start_analyzer(t, metrics_port=0, before_inference=two_x_real_time, batch_size=200)
    streams = Streams(n_streams, 30.0)
    producers = streams.produce(kafka_conf, t["frames"], speed=1.0)
    baseline = _rss()
    lags, states, rss = [], [], []
    for _ in range(20):
        time.sleep(1.0)
        lags.append(sum(a.last_lag.values()))
        states.append(a.engine.state_bytes())
        rss.append(_rss() - baseline)
    seen = [x for x in lags if x > 0]
    print(f"slow model: lag samples {lags}; state max {max(states)} B; rss growth max {max(rss) >> 20} MiB")
    assert len(seen) >= 3 and seen[-1] > seen[0], lags  # falling behind, and saying so
    assert max(states) < 200 * 1600 * 4 * 2, states  # at most a batch of audio in flight, not a growing queue
    assert max(rss) < 256 << 20, rss
    ready = urllib.request.urlopen(f"http://127.0.0.1:{a.metrics_port}/ready", timeout=5).status
    assert ready == 200
    slow.clear()
    for th in producers:
        th.join(60)
    preds = read_predictions(kafka_conf, t["predictions"], streams.expected, timeout=120)
    report = classify(preds, streams.expected)
    assert report["missing"] == 0 and report["unexpected"] == 0, report


def test_max_poll_interval_exceeded_is_survived_without_committing_lost_partitions(kafka_conf, topics, start_analyzer):
    """One inference call longer than max.poll.interval.ms: the group takes the partitions away, the
    analyzer does not commit them, rejoins, and no window is missing."""
    t = topics()
    stalled = threading.Event()

    def stall_once(windows):
        if not stalled.is_set():
            stalled.set()
            time.sleep(9)
    a = start_analyzer(t, before_inference=stall_once,
                       consumer_overrides={"max.poll.interval.ms": 6000, "session.timeout.ms": 6000,
                                           "heartbeat.interval.ms": 1000})
    streams = Streams(1, 12.0)
    producers = streams.produce(kafka_conf, t["frames"], speed=2.0)
    for th in producers:
        th.join(60)
    preds = read_predictions(kafka_conf, t["predictions"], streams.expected, timeout=90)
    report = classify(preds, streams.expected)
    assert stalled.is_set()
    reg = a.metrics.registry
    assert reg.get_sample_value("audiostream_partitions_lost_total") >= 1  # the group really took the partition away
    assert report["missing"] == 0 and report["unexpected"] == 0, report
    # lost partitions were never committed
    assert reg.get_sample_value("audiostream_offset_commits_total", {"outcome": "failed"}) == 0


@pytest.mark.parametrize("kind", ["corrupt", "wrong_shape", "nan"])
def test_poison_bundle_fails_fast_with_no_offsets_committed(kafka_conf, topics, tmp_path, kind):
    from tests.bundles import poison_bundle
    t = topics()
    p = Producer(producer_config(kafka_conf))
    p.produce(t["frames"], key=b"s", value=wire.encode(wire.AudioFrame(SR, 0, 0, 0, b"s" * 16,
                                                                         np.zeros((1600, 1), np.int16))))
    p.flush(10)
    group = f"poison-{uuid.uuid4().hex[:6]}"
    proc = subprocess.run(analyze_cmd(kafka_conf, t, group, "--model", str(poison_bundle(tmp_path, kind))),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error:" in proc.stderr and str(tmp_path) in proc.stderr
    c = Consumer({**kafka_conf, "group.id": group})
    try:
        committed = c.committed([TopicPartition(t["frames"], 0)], timeout=10)
    finally:
        c.close()
    assert committed[0].offset < 0  # nothing consumed, nothing committed


def test_nan_scores_at_run_time_are_counted_not_published(kafka_conf, topics, start_analyzer, tmp_path):
    from tests.bundles import poison_bundle
    t = topics()
    a = start_analyzer(t, model=str(poison_bundle(tmp_path, "nan_at_runtime")))
    streams = Streams(1, 3.0)
    for th in streams.produce(kafka_conf, t["frames"], speed=float("inf")):
        th.join(30)
    n = len(streams.expected)
    feats = consume(kafka_conf, t["features"], count=n, timeout=60)
    assert len(feats) == n  # the audio metrics are still published
    wait_for(lambda: a.metrics.registry.get_sample_value(
        "audiostream_model_invalid_outputs_total", {"model": a.metrics.model}) == n, 10, "invalid outputs")
    assert consume(kafka_conf, t["predictions"], timeout=3) == []


# -- 9: SASL/SCRAM ------------------------------------------------------------------------------------------
def test_sasl_scram(tmp_path, private_broker):
    """A broker with a SCRAM-SHA-256 listener: the producer and the analyzer connect with credentials
    from flags and environment; a wrong password gives a clear error that never shows the password."""
    password, wrong = "s3cret-Alice-pw", "Wr0ng-pw-do-not-print"
    broker = private_broker(scram_users={"alice": password})
    sasl = ["-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanism=SCRAM-SHA-256",
            "-X", "sasl.username=alice"]
    wav = tmp_path / "tone.wav"
    import soundfile as sf
    sf.write(wav, signal_for(4, 3.0), SR, subtype="PCM_16")
    b = ["-b", broker.sasl_bootstrap_servers]
    bad = subprocess.run(cli("produce-file", str(wav), *b, *sasl, "-X", f"sasl.password={wrong}", "-q"),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "refused the credentials of user 'alice'" in bad.stderr and "SASL authentication" in bad.stderr
    assert wrong not in bad.stderr + bad.stdout
    env = {**os.environ, "AUDIOSTREAM_KAFKA_SASL_PASSWORD": password}
    ok = subprocess.run(cli("produce-file", str(wav), *b, *sasl, "--topic", "sasl.frames", "--speed", "max",
                            "--stream-id", "secure", "-q"), capture_output=True, text=True, timeout=60, env=env)
    assert ok.returncode == 0, ok.stderr
    t = {"frames": "sasl.frames", "predictions": "sasl.predictions", "features": "sasl.features",
         "deadletter": "sasl.deadletter"}
    cmd = cli("analyze", *b, *sasl, "--frames-topic", t["frames"], "--predictions-topic", t["predictions"],
              "--features-topic", t["features"], "--deadletter-topic", t["deadletter"], "--no-metrics")
    analyzer = spawn(cmd, env=env)
    try:
        conf = {"bootstrap.servers": broker.sasl_bootstrap_servers, "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "alice", "sasl.password": password}
        preds = consume(conf, t["predictions"], count=len(SPEC.window_bounds(3 * SR)), timeout=60)
        assert len(preds) == len(SPEC.window_bounds(3 * SR))
    finally:
        analyzer.send_signal(signal.SIGTERM)
        out = analyzer.communicate(timeout=30)[0]
    assert analyzer.returncode == 0, out[-2000:]
    assert password not in out
    shown = subprocess.run(cli("config", "show", *b, *sasl), capture_output=True, text=True, env=env, timeout=30)
    assert password not in shown.stdout + shown.stderr and "***" in shown.stdout


# -- gaps released by the reorder timeout, and crashes in exactly-once mode ---------------------------------
@pytest.mark.parametrize("traffic", ["quiet", "busy"])
def test_a_gap_released_by_the_reorder_timeout_is_reported(kafka_conf, topics, start_analyzer, traffic):
    """A frame lost near a stream's end: fewer than --max-reorder frames follow it, so the engine
    holds them until the reorder timeout and then zero-fills the hole. That gap is counted, its
    seconds added and a gap marker published like any other (it once went unreported), and the
    held frames are released even when no other record arrives ("quiet": they once waited for
    the next record on any stream)."""
    t = topics()
    a = start_analyzer(t)
    stop = threading.Event()
    if traffic == "busy":  # another stream keeps the analyzer's polls non-empty
        def tick():
            tp, other = Producer(producer_config(kafka_conf)), uuid.uuid4().bytes
            for seq in range(600):
                if stop.wait(0.1):
                    break
                tp.produce(t["frames"], key=b"ticker", value=wire.encode_pcm(
                    bytes(3200), channels=1, n_frames=1600, sample_rate=SR, sequence=seq, sample_offset=seq * 1600,
                    capture_time_ns=time.time_ns(), session_id=other))
                tp.poll(0)
            tp.flush(10)
        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
    pcm = signal_for(3, 3.0)
    session, n, sid = uuid.uuid4().bytes, 1600, "late-loss"
    p = Producer(producer_config(kafka_conf))
    for seq in [s for s in range(30) if s != 25]:  # frame 25 lost; 26..29 (4 frames, not more) are held
        p.produce(t["frames"], key=sid.encode(), value=wire.encode_pcm(
            pcm[seq * n:(seq + 1) * n].tobytes(), channels=1, n_frames=n, sample_rate=SR, sequence=seq,
            sample_offset=seq * n, capture_time_ns=time.time_ns(), session_id=session,
            flags=wire.FLAG_END_OF_STREAM if seq == 29 else 0))
    assert p.flush(30) == 0
    bounds = SPEC.window_bounds(len(pcm))
    ids = {f"{sid}/{session.hex()}/{s}" for s, _ in bounds}
    try:
        preds = [p_ for p_ in read_predictions(kafka_conf, t["predictions"], ids, timeout=60)
                 if p_["stream_id"] == sid]
    finally:
        stop.set()
    assert sorted(p_["start_sample"] for p_ in preds) == [s for s, _ in bounds]
    assert sorted(p_["start_sample"] for p_ in preds if p_["gap"]) == [32000]  # the window over 40000..41600
    feats = [json.loads(m.value()) for m in consume(kafka_conf, t["features"], until=lambda ms: sum(
        m.key() == sid.encode() for m in ms) > len(bounds), timeout=10)]  # waits past the windows for a marker
    markers = [f for f in feats if f["type"] == "gap" and f["stream_id"] == sid]
    assert len(markers) == 1, markers
    assert markers[0]["gap_start_sample"] == 25 * n and markers[0]["gap_end_sample"] == 26 * n
    assert markers[0]["missing_frames"] == 1 and markers[0]["handling"] == "zero_filled_and_flagged"
    validate(markers[0], "audio.features")
    reg = a.metrics.registry
    assert reg.get_sample_value("audiostream_stream_sequence_events_total", {"event": "gap"}) == 1.0
    assert reg.get_sample_value("audiostream_stream_gap_seconds_total") == 0.1


def test_exactly_once_crash_inside_a_batch_aborts_and_commits_nothing(kafka_conf, topics, start_analyzer):
    """An unexpected exception inside process_batch (here: raised just before inference, after the
    batch's dead letter was produced into the open transaction) must abort the transaction: a
    read_committed reader then sees each output exactly once after a restart."""
    t = topics()
    pcm = signal_for(4, 2.0)
    session, n, sid = uuid.uuid4().bytes, 1600, "crashy"
    p = Producer(producer_config(kafka_conf))
    p.produce(t["frames"], key=b"garbage", value=b"not a frame at all, just bytes")
    for seq in range(20):
        p.produce(t["frames"], key=sid.encode(), value=wire.encode_pcm(
            pcm[seq * n:(seq + 1) * n].tobytes(), channels=1, n_frames=n, sample_rate=SR, sequence=seq,
            sample_offset=seq * n, capture_time_ns=time.time_ns(), session_id=session,
            flags=wire.FLAG_END_OF_STREAM if seq == 19 else 0))
    assert p.flush(30) == 0  # all produced before the analyzer starts: one fetch, one batch

    class Boom(RuntimeError):
        pass

    def explode(windows):
        raise Boom("unexpected failure inside process_batch")

    from consumers.analyzer import Analyzer, AnalyzerConfig
    group = f"test-analyzer-{uuid.uuid4().hex[:8]}"
    first = Analyzer(AnalyzerConfig(kafka=dict(kafka_conf), frames_topic=t["frames"],
                                    predictions_topic=t["predictions"], features_topic=t["features"],
                                    deadletter_topic=t["deadletter"], group_id=group, metrics_port=None,
                                    create_topics=False, exactly_once=True, before_inference=explode))
    th = first.run_in_background()
    th.join(120)
    assert not th.is_alive()
    assert len(th.errors) == 1 and isinstance(th.errors[0], Boom), th.errors  # the crash surfaces as itself
    start_analyzer(t, group_id=group, exactly_once=True)  # the restart
    ids = {f"{sid}/{session.hex()}/{s}" for s, _ in SPEC.window_bounds(len(pcm))}
    preds = read_predictions(kafka_conf, t["predictions"], ids, timeout=90, read_committed=True)
    assert classify(preds, ids)["verdict"] == "all-delivered"
    dead = consume({**kafka_conf, "isolation.level": "read_committed"}, t["deadletter"],
                   until=lambda ms: len(ms) > 1, timeout=5)  # wait past the first: a second is the defect
    assert len(dead) == 1, f"{len(dead)} dead letters for one bad record"
