"""Helpers for the integration tests (imported by the tests; fixtures live in conftest.py)."""
from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from confluent_kafka import Consumer


def consume(kafka_conf, topic: str, *, until=None, count: int | None = None, timeout: float = 60.0,
            settle: float = 0.0) -> list:
    """All records of ``topic`` from the beginning until ``count`` records, ``until(records)``, or timeout.

    ``settle``: once the condition holds, keep reading that many seconds more, so a test that expects
    "exactly n" also sees a late duplicate or an extra record instead of returning at the n-th one."""
    c = Consumer({**kafka_conf, "group.id": f"test-reader-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe([topic])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for m in c.consume(num_messages=500, timeout=0.2):
                if m.error() is None:
                    out.append(m)
            if (count is not None and len(out) >= count) or (until is not None and until(out)):
                settled = time.monotonic() + settle
                while time.monotonic() < settled:
                    out += [m for m in c.consume(num_messages=500, timeout=0.2) if m.error() is None]
                break
    finally:
        c.close()
    return out


def values(msgs) -> list[dict]:
    return [json.loads(m.value()) for m in msgs]


SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def validate(record: dict, schema: str) -> None:
    """Check one record against docs/schemas/<schema>.schema.json (the contract a client implements)."""
    import jsonschema
    spec = json.loads((SCHEMAS / f"{schema}.schema.json").read_text())
    jsonschema.validate(record, spec, cls=jsonschema.Draft202012Validator)


def deadletter_header_object(msg) -> dict:
    """A dead letter's audiostream.* headers as {name: UTF-8 text} (what the headers schema describes)."""
    return {k: v.decode() for k, v in (msg.headers() or []) if k.startswith("audiostream.")}


def cli(*args: str) -> list[str]:
    """The installed console script when present, else the same entry point via -m."""
    script = Path(sys.executable).parent / "audiostream"
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "streamproc.cli", *args]


def free_port() -> int:
    """A TCP port free on loopback right now (for servers a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_serve(kafka_conf, topics: dict, log_dir: Path, *extra: str, timeout: float = 120.0):
    """`audiostream serve` on a free loopback port with Kafka and the given topics (ingest onto
    ``topics["frames"]``); yields (base URL, process) once /healthz answers; stopped on exit."""
    import httpx
    port = free_port()
    log_path = log_dir / f"serve-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cli("serve", "--port", str(port), "-b", kafka_conf["bootstrap.servers"],
                                    "--ingest-topic", topics["frames"], "--predictions-topic", topics["predictions"],
                                    "--features-topic", topics["features"], "--deadletter-topic",
                                    topics["deadletter"], *extra), stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.3)
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(30)


def sse_items(base: str, event: str, count: int, timeout: float = 60.0) -> list:
    """The items of ``serve``'s /v1/events ``event`` events (each a JSON list), until ``count`` or ``timeout``."""
    import httpx
    got, current = [], None
    deadline = time.monotonic() + timeout
    with httpx.stream("GET", base + "/v1/events", timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("event: "):
                current = line[7:]
            elif line.startswith("data: ") and current == event:
                got += json.loads(line[6:])
            if len(got) >= count or time.monotonic() > deadline:
                break
    return got


def wait_for(predicate, timeout: float, what: str, step: float = 0.2):
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` s pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# -- a real Prometheus (Debian's package) ---------------------------------------------------------------------
def prometheus_tool(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``."""
    path = shutil.which(name)
    assert path, f"{name} is missing: deploy/setup.sh installs Debian's prometheus package"
    return path


def start_prometheus(config: dict, workdir: Path) -> tuple[subprocess.Popen, int]:
    """Prometheus with ``config`` (written to workdir/prometheus.yml, its TSDB in workdir/tsdb) on a free port."""
    import yaml
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen([prometheus_tool("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
                             f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port


def query(port: int, expr: str) -> dict:
    """Prometheus's answer to an instant query (its error answer too)."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        return json.loads(urllib.request.urlopen(url, timeout=10).read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def alert_rules(port: int, group: str | None = None) -> list[dict]:
    """The rules Prometheus has loaded (those of ``group`` only, if given), with health and last evaluation."""
    groups = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=10).read())
    return [r for g in groups["data"]["groups"] if group in (None, g["name"]) for r in g["rules"]]


def all_evaluated(rules: list[dict]) -> bool:
    """Every rule has been evaluated at least once (Prometheus reports year 1 before that)."""
    return all(not r.get("lastEvaluation", "0001").startswith("0001") for r in rules)
