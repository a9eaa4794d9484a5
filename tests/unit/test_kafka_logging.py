"""librdkafka's log lines: one line per distinct complaint, not one per retry."""
import logging

from streamproc.kafka import RepeatFilter

REFUSED = ("FAIL [rdkafka#producer-1] [thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to "
           "ipv4#127.0.0.1:1 failed: Connection refused (after {ms}ms in state CONNECT{more})")


def record(text: str) -> logging.LogRecord:
    return logging.LogRecord("audiostream.kafka", logging.ERROR, __file__, 1, "%s", (text,), None)


def test_repeats_are_held_back_and_counted_when_the_complaint_prints_again():
    now = [0.0]
    f = RepeatFilter(window=300.0, clock=lambda: now[0])
    first = record(REFUSED.format(ms=0, more=""))
    assert f.filter(first) and first.getMessage().endswith("(after 0ms in state CONNECT)")
    # librdkafka's own retries: other handles, other timings, its own "suppressed" note -- the same complaint
    for i in range(200):
        now[0] += 0.05
        text = REFUSED.format(ms=i, more=", 1 identical error(s) suppressed").replace("producer-1", f"consumer-{i % 3}")
        assert not f.filter(record(text))
    other = record("FAIL [rdkafka#producer-1] [thrd:b:9092/1]: b:9092/1: SASL authentication error")
    assert f.filter(other)  # a different complaint prints at once
    now[0] += 300.0
    again = record(REFUSED.format(ms=3, more=""))
    assert f.filter(again)
    assert again.getMessage().endswith("(and 200 more like it in the last 300 s)")
    now[0] += 1.0
    assert not f.filter(record(REFUSED.format(ms=5, more="")))


def test_a_transient_retry_is_debug_detail_not_a_warning(caplog):
    f = RepeatFilter()
    text = ("GETPID [rdkafka#producer-3] [thrd:main]: Failed to acquire idempotence PID from broker "
            "127.0.0.1:43913/1: Broker: Coordinator load in progress: retrying")
    r = logging.LogRecord("audiostream.kafka", logging.WARNING, __file__, 1, "%s", (text,), None)
    logging.getLogger("audiostream.kafka").setLevel(logging.INFO)
    assert not f.filter(r)
    assert r.levelno == logging.DEBUG
    logging.getLogger("audiostream.kafka").setLevel(logging.DEBUG)
    try:
        assert f.filter(r)  # still there for whoever asks for debug logs
    finally:
        logging.getLogger("audiostream.kafka").setLevel(logging.NOTSET)
