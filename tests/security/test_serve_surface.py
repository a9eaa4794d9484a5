"""What ``serve`` shows a newcomer and an air-gapped site: the start-up line, the access log, --help with
its defaults, a clear error for a taken port, /docs with no CDN, /v1/models with both scores; and the same
length limit in ``batch`` and ``produce-file`` (a corpus can hold a hostile file too)."""
from __future__ import annotations

import re
import socket
import subprocess
import time

import httpx

from .conftest import cli, silence, sox


def test_docs_load_nothing_from_outside(server):
    """/docs and /redoc reference only this server's URLs, and each of those answers with JS / CSS."""
    for page in ("/docs", "/redoc"):
        r = httpx.get(server.url + page, timeout=30)
        assert r.status_code == 200
        refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)["\']', r.text) + re.findall(r"url:\s*'([^']+)'", r.text)
        assert refs, r.text
        assert not [u for u in refs if "//" in u], f"{page} loads from elsewhere: {refs}"
        assert "cdn" not in r.text.lower() and "googleapis" not in r.text
        for ref in refs:
            a = httpx.get(server.url + ref, timeout=30)
            assert a.status_code == 200, ref
            kind = a.headers["content-type"]
            if ref.endswith(".js"):
                assert "javascript" in kind and len(a.content) > 100_000, (ref, kind)  # the real bundle
            elif ref.endswith(".css"):
                assert "text/css" in kind and b"swagger-ui" in a.content, (ref, kind)
    assert httpx.get(server.url + "/openapi.json", timeout=30).json()["info"]["title"] == "audiostream"


def test_models_carry_the_real_recordings_score(server):
    from streamproc.training.registry import bundles
    want = {(b["task"], b["version"]): b["real_macro_f1"] for b in bundles() if "error" not in b}
    got = {(m["task"], m["version"]): m["real_macro_f1"] for m in httpx.get(server.url + "/v1/models").json()}
    assert got == want and any(v is not None for v in got.values()), got


def test_start_up_line_and_access_log(server):
    """The first line says where it listens, the docs and the model; each request is logged."""
    assert re.match(r"serving on http://127\.0\.0\.1:\d+ \(docs at /docs\), model soundtype:\d+; limits: 2 MiB, "
                    r"60 s of audio, 2 at once", server.log[0]), server.log[:3]
    httpx.get(server.url + "/v1/models?access-log-probe=1", timeout=30)
    deadline = time.monotonic() + 30
    while not any("access-log-probe=1" in line for line in server.log) and time.monotonic() < deadline:
        time.sleep(0.1)
    line = next(line for line in server.log if "access-log-probe=1" in line)
    assert '"GET /v1/models?access-log-probe=1 HTTP/1.1" 200' in line


def test_help_shows_the_defaults():
    out = subprocess.run(cli("serve", "--help"), capture_output=True, text=True, timeout=120).stdout
    flat = " ".join(out.split())
    for text in ("(default: 8000; 0 = any free port)", "(default: 127.0.0.1, loopback only", "(default: 20)",
                 "(default: 600)", "(default: 2)", "(default: 60)", "(default: 16)", "(default: 10)", "--no-access-log"):
        assert text in flat, text


def test_a_taken_port_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(cli("serve", "--port", str(port)), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_batch_skips_and_produce_file_refuses_a_bomb(tmp_path):
    """The three-hour FLAC in a corpus: batch skips it with the reason before decoding it and analyses the
    rest; produce-file refuses it (exit 2) before it touches Kafka."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    sox("-D", "-n", "-r", "16000", "-c", "1", "-b", "16", str(corpus / "bomb.flac"), "trim", "0", "10800")
    silence(corpus / "short.wav", 3, "WAV", "PCM_16")
    r = subprocess.run(cli("batch", str(corpus), "--out", str(tmp_path / "out.parquet"), "--workers", "1", "-q"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "bomb.flac: the audio is 10800 s long (declared by its header); the limit is 3600 s" in r.stderr
    assert "1 file(s) skipped" in r.stderr
    r = subprocess.run(cli("produce-file", str(corpus / "bomb.flac"), "-b", "127.0.0.1:9", "--max-duration", "60"),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "the limit is 60 s" in r.stderr, r.stderr
