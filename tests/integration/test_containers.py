"""The container images, built here and run against the real broker (issue #22).

deploy/docker/build.sh builds them once per machine (cached; a few minutes the first time) with Docker or
podman, making its base image from Debian packages when no registry is reachable. Marked ``containers``:
``pytest -m 'not containers'`` leaves them out of a quick local run; ``make test`` runs them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer

from producers.file import replay
from streamproc.kafka import producer_config

from .helpers import consume, free_port, values, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.containers]
# podman's CNI bridge runs iptables from /usr/sbin, which a non-login shell's PATH (a CI runner's) may lack
os.environ["PATH"] = os.pathsep.join(dict.fromkeys(os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin", "/sbin"]))
REPO = Path(__file__).resolve().parents[2]
VERSION = "0.1.0"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")  # what pip inside a build trusts behind a TLS proxy


def engine() -> str | None:
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return "docker"
    return "podman" if shutil.which("podman") else None


@pytest.fixture(scope="session")
def images():
    """Build (or find in the cache) the four images; the engine's command with the build's settings."""
    eng = engine()
    if eng is None:
        pytest.skip("no container engine: neither a running Docker engine nor podman (deploy/setup.sh installs podman)")
    env = dict(os.environ)
    if HOST_CA.exists():
        env.setdefault("AUDIOSTREAM_BUILD_CA", str(HOST_CA))
    r = subprocess.run(["bash", str(REPO / "deploy/docker/build.sh"), "--engine", eng], capture_output=True,
                       text=True, env=env, timeout=1800)
    assert r.returncode == 0, r.stderr[-4000:]
    if eng == "podman":  # the runtime settings build.sh wrote for this host, for the runs below too
        cache = Path(os.environ.get("AUDIOSTREAM_CACHE") or
                     Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "audiostream")
        os.environ.setdefault("CONTAINERS_CONF", str(cache / "containers.conf"))
    return eng


def run(eng, *args, timeout=120, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([eng, *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"{eng} {' '.join(args)}: {r.stderr[-3000:]}"
    return r


def http_get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.read()
    except OSError:
        return None


def test_analyzer_image_analyses_a_replay_serves_metrics_runs_unprivileged_and_stops_cleanly(images, kafka_conf,
                                                                                              topics):
    eng, t = images, topics()
    port, name = free_port(), f"as-analyzer-{uuid.uuid4().hex[:6]}"
    run(eng, "run", "-d", "--name", name, "--network=host", f"audiostream-analyzer:{VERSION}", "analyze",
        "-b", kafka_conf["bootstrap.servers"], "--frames-topic", t["frames"], "--predictions-topic", t["predictions"],
        "--features-topic", t["features"], "--deadletter-topic", t["deadletter"], "--no-create-topics",
        "--metrics-addr", "127.0.0.1", "--metrics-port", str(port), "--group-id", f"img-{name}")
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/ready"), 120, "the analyzer's /ready", step=0.5)
        rng = np.random.default_rng(3)
        pcm = (np.concatenate([np.sin(2 * np.pi * 440 * np.arange(3 * 16000) / 16000) * 0.3,
                               rng.standard_normal(2 * 16000) * 0.2]) * 32767).astype(np.int16)
        res = replay(pcm, producer=Producer(producer_config(kafka_conf)), topic=t["frames"], stream_id="boxed",
                     sr=16000, frame_samples=1600, speed=float("inf"))
        assert res.delivered == res.frames
        preds = values(consume(kafka_conf, t["predictions"], count=9, timeout=90))
        assert len(preds) == 9 and {p["stream_id"] for p in preds} == {"boxed"}  # 5 s: 9 windows of 1 s every 0.5 s
        metrics = http_get(f"http://127.0.0.1:{port}/metrics").decode()
        assert "audiostream_windows_analyzed_total" in metrics
        assert run(eng, "exec", name, "id", "-u").stdout.strip() != "0"  # not root inside the image
        t0 = time.monotonic()
        run(eng, "stop", "-t", "30", name, timeout=60)
        assert time.monotonic() - t0 < 30, "SIGTERM did not stop the analyzer; the engine had to kill it"
        state = json.loads(run(eng, "inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, state
    finally:
        run(eng, "rm", "-f", name, check=False)


def test_producer_image_is_the_slim_edge_install(images):
    eng = images
    image = f"audiostream-producer:{VERSION}"
    for module in ("librosa", "onnxruntime"):
        r = run(eng, "run", "--rm", "--entrypoint", "python", image, "-c", f"import {module}", check=False)
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, (module, r.stderr[-500:])
    assert "capture" in run(eng, "run", "--rm", image, "produce-mic", "--help").stdout
    assert run(eng, "run", "--rm", "--entrypoint", "id", image, "-u").stdout.strip() != "0"


def test_compose_stack_runs_offline_end_to_end_and_leaves_nothing(images, tmp_path):
    """kafka, analyzer, replay and prometheus from deploy/docker-compose.yml (Grafana's image needs a
    registry): the looping replay is analysed, Prometheus scrapes the analyzer, and `down` removes it all."""
    eng = images
    if eng == "podman":
        compose = [str(Path(os.sys.executable).parent / "podman-compose")]
    else:
        compose = ["docker", "compose"]
    project = f"astest{uuid.uuid4().hex[:6]}"
    base = [*compose, "-p", project, "-f", str(REPO / "deploy/docker-compose.yml")]
    services = ["kafka", "analyzer", "replay", "prometheus"]
    r = subprocess.run([*base, "up", "-d", *services], capture_output=True, text=True, timeout=600, cwd=REPO)
    try:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]

        def windows_in_prometheus():
            body = http_get("http://127.0.0.1:9090/api/v1/query?query=sum(audiostream_windows_analyzed_total)")
            if not body:
                return None
            result = json.loads(body)["data"]["result"]
            return result and float(result[0]["value"][1]) > 0
        wait_for(windows_in_prometheus, 240, "Prometheus to see windows analysed in the stack", step=2)
        rules = json.loads(http_get("http://127.0.0.1:9090/api/v1/rules"))["data"]["groups"]
        assert sum(len(g["rules"]) for g in rules) >= 5  # the alert rules are loaded
    finally:
        down = subprocess.run([*base, "down", "-t", "20"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert down.returncode == 0, down.stderr[-2000:]
    left = run(eng, "ps", "-a", "--filter", f"label=com.docker.compose.project={project}", "-q").stdout.strip()
    left += run(eng, "ps", "-a", "--filter", f"label=io.podman.compose.project={project}", "-q").stdout.strip()
    assert not left, left
    networks = run(eng, "network", "ls", "--format", "{{.Name}}").stdout.split()
    assert not [n for n in networks if n.startswith(project)], networks
