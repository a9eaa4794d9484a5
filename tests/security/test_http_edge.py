"""The HTTP edge of a real ``audiostream serve`` process: bodies over the limit (declared and chunked),
clients that trickle, oversized headers, the concurrency limit, and many worst-case uploads at once with
/v1/models still answering. Raw sockets where the client must misbehave."""
from __future__ import annotations

import io
import select
import socket
import threading
import time

import httpx
import numpy as np
import soundfile as sf

from .conftest import SR, silence, start_server, unknown_length

BOUNDARY = "xXx-audiostream-test"


def connect(server, sndbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if sndbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    s.settimeout(60)
    s.connect((server.host, server.port))
    return s


def request_head(content_length: int | None = None, chunked: bool = False, extra: str = "") -> bytes:
    head = (f"POST /v1/classify HTTP/1.1\r\nHost: test\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{extra}")
    if content_length is not None:
        head += f"Content-Length: {content_length}\r\n"
    if chunked:
        head += "Transfer-Encoding: chunked\r\n"
    return (head + "\r\n").encode()


def part_head(filename: str = "x.wav") -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode()


def read_response(sock: socket.socket, timeout: float = 60) -> tuple[int, dict, bytes]:
    """Status, headers and body of one HTTP/1.1 response (read until Content-Length or close)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    n = int(headers.get("content-length", -1))
    while n < 0 or len(body) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def timed_models(server) -> float:
    t0 = time.monotonic()
    r = httpx.get(server.url + "/v1/models", timeout=30)
    assert r.status_code == 200 and any(m["default"] for m in r.json())
    return time.monotonic() - t0


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(server):
    """Content-Length: 50 MB and not one body byte sent: the 413 comes anyway (the body is never awaited)."""
    with connect(server) as s:
        s.sendall(request_head(content_length=50_000_000))
        t0 = time.monotonic()
        status, headers, body = read_response(s, timeout=30)
    assert status == 413 and b"the upload is larger than 2 MiB" in body, body
    assert headers.get("connection") == "close"
    assert time.monotonic() - t0 < 20
    server.assert_within_bound()


def test_a_chunked_body_is_cut_at_the_limit(server):
    """No Content-Length (chunked): the server counts what arrives and answers 413 once it passes the limit;
    the client, willing to send 64 MiB, is stopped long before."""
    limit = server.limits["max_upload_mb"] << 20
    start = server.status("VmRSS")
    sent = 0
    with connect(server, sndbuf=64 << 10) as s:
        s.sendall(request_head(chunked=True))
        first = part_head("endless.wav")
        s.sendall(b"%x\r\n%s\r\n" % (len(first), first))
        block = b"\0" * (16 << 10)
        chunk = b"%x\r\n%s\r\n" % (len(block), block)
        answered = False
        try:
            while sent < 64 << 20:
                if select.select([s], [], [], 0)[0]:
                    answered = True
                    break
                s.sendall(chunk)
                sent += len(block)
        except (BrokenPipeError, ConnectionResetError):
            answered = True
        assert answered, f"sent {sent} bytes without an answer"
        status, _, body = read_response(s, timeout=30)
    assert status == 413 and b"the upload is larger than 2 MiB" in body, body
    assert limit <= sent < limit + (16 << 20), sent  # the rest of 64 MiB was never sent: socket buffers at most
    assert server.status("VmRSS") - start < 16 << 20  # the body went to disk, not memory
    server.assert_within_bound()


def test_a_trickling_client_gets_408_and_does_not_hold_the_server(server):
    """One byte every 0.2 s of a 10 kB body: 408 after --body-timeout (5 s), /v1/models fast meanwhile."""
    timeout = server.limits["body_timeout"]
    result = {}

    def trickle():
        with connect(server) as s:
            s.sendall(request_head(content_length=10_000) + part_head("slow.wav"))  # then the file, slowly
            t0 = time.monotonic()
            s.setblocking(False)
            while not select.select([s], [], [], 0.2)[0] and time.monotonic() - t0 < 60:
                try:
                    s.send(b"x")
                except (BrokenPipeError, ConnectionResetError, BlockingIOError):
                    break
            s.setblocking(True)
            result["response"] = read_response(s, timeout=30)
            result["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=trickle)
    t.start()
    latencies = []
    while t.is_alive():
        latencies.append(timed_models(server))
        t.join(0.2)
    status, _, body = result["response"]
    assert status == 408 and f"not received within {timeout} s".encode() in body, body
    assert timeout - 0.5 <= result["elapsed"] < timeout + 20, result["elapsed"]
    assert latencies and max(latencies) < 5, latencies
    server.assert_within_bound()


def test_oversized_headers(server):
    """Complete but over --max-header-kb: 431. Still arriving past it: the connection is closed (h11's limit),
    never buffered without end."""
    r = httpx.get(server.url + "/v1/models", headers={"x-padding": "a" * (20 << 10)}, timeout=30)
    assert r.status_code == 431 and "the limit is 16384" in r.json()["detail"], r.text
    with connect(server) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: test\r\n")
        sent, closed = 0, False
        try:
            while sent < 8 << 20:
                s.sendall(b"X-Pad-%d: %s\r\n" % (sent, b"a" * 1000))  # never ends the headers
                sent += 1000
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        if not closed:
            s.settimeout(30)
            try:
                data = s.recv(65536)
                closed = data == b"" or data.startswith(b"HTTP/1.1 4")
            except ConnectionResetError:
                closed = True
    assert closed and sent < 8 << 20, sent
    assert timed_models(server) < 5
    server.assert_within_bound()


def test_slow_headers_are_cut_off(server):
    """A header line every 0.5 s (slowloris), and a connection that sends nothing: both are closed after
    --header-timeout (3 s), so they cannot pile up until --max-connections; /v1/models answers meanwhile."""
    timeout = server.limits["header_timeout"]
    idle = connect(server)
    with connect(server) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: test\r\n")
        t0 = time.monotonic()
        closed_after = None
        i = 0
        while time.monotonic() - t0 < timeout + 30:
            try:
                s.sendall(b"X-Slow-%d: 1\r\n" % i)
                if select.select([s], [], [], 0.5)[0] and s.recv(1024) == b"":
                    closed_after = time.monotonic() - t0
                    break
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - t0
                break
            i += 1
            assert timed_models(server) < 5
    assert closed_after is not None and timeout - 0.5 <= closed_after < timeout + 15, closed_after
    idle.settimeout(timeout + 30)
    try:
        assert idle.recv(1024) == b""  # closed by the server, without a word
    except ConnectionResetError:
        pass
    idle.close()
    server.assert_within_bound()


def _tiny_wav() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(SR, np.float32), SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_beyond_max_concurrent_uploads_get_503_with_retry_after(server):
    """Two clients hold both upload slots (trickling); a third upload gets 503 + Retry-After at once, while
    /v1/models answers; when the slow ones time out the slots are free again."""
    holders = []
    for _ in range(server.limits["max_concurrent"]):
        s = connect(server)
        s.sendall(request_head(content_length=10_000) + part_head("slow.wav") + b"RIFF")
        holders.append(s)
    try:
        deadline = time.monotonic() + 60
        while True:  # the holders are admitted once their headers are parsed: wait for that, not a guess
            r = httpx.post(server.url + "/v1/classify", files={"file": ("a.wav", _tiny_wav())}, timeout=60)
            if r.status_code == 503 or time.monotonic() > deadline:
                break
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "5"
        assert r.json()["detail"] == "busy: 2 uploads are being classified (the limit is 2); retry after 5 s"
        assert timed_models(server) < 5
        for s in holders:
            status, _, body = read_response(s, timeout=server.limits["body_timeout"] + 30)
            assert status == 408, body
    finally:
        for s in holders:
            s.close()
    r = httpx.post(server.url + "/v1/classify", files={"file": ("a.wav", _tiny_wav())}, timeout=60)
    assert r.status_code == 200, r.text
    server.assert_within_bound()


def test_many_worst_case_uploads_at_once_at_the_default_limits(tmp_path):
    """The default limits (20 MiB, 600 s, 2 at once): 6 clients send 3 worst cases each at the same time
    (audio just under 600 s that is decoded and analysed in full, a FLAC of unknown length decoded up to the
    cap, the three-hour FLAC). Every answer is 200, 413 or 503 (+Retry-After), /v1/models keeps answering
    within 5 s, and the server's peak RSS stays under the documented bound."""
    server = start_server(tmp_path, max_upload_mb=20, max_duration=600, max_concurrent=2, body_timeout=60)
    try:
        rng = np.random.default_rng(7)
        full = tmp_path / "full.flac"
        with sf.SoundFile(full, "w", SR, 1, format="FLAC", subtype="PCM_16") as f:
            for _ in range(59):
                f.write((rng.standard_normal(SR * 10) * 0.05).astype(np.float32))
            f.write(np.zeros(SR * 9, np.float32))  # 599 s
        unknown = unknown_length(silence(tmp_path / "u.flac", 1800, "FLAC", "PCM_16"))
        bomb = silence(tmp_path / "bomb.flac", 10800, "FLAC", "PCM_16")
        uploads = [("full.flac", full.read_bytes()), ("unknown.flac", unknown.read_bytes()),
                   ("bomb.flac", bomb.read_bytes())]
        assert all(len(d) < 20 << 20 for _, d in uploads)
        answers, errors = [], []
        go = threading.Event()

        def client(i):
            go.wait()
            with httpx.Client(timeout=300) as c:
                for k in range(3):
                    name, data = uploads[(i + k) % 3]
                    try:
                        r = c.post(server.url + "/v1/classify", files={"file": (name, data)})
                        answers.append((name, r.status_code, r.headers.get("retry-after"), r.text[:300]))
                    except httpx.HTTPError as exc:
                        errors.append(f"{name}: {exc!r}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        go.set()
        latencies = []
        while any(t.is_alive() for t in threads):
            latencies.append(timed_models(server))
            time.sleep(0.1)  # pacing the probe, not synchronising: the loop ends when the clients do
        assert not errors, errors
        assert len(answers) == 18
        for name, status, retry, text in answers:
            assert status in (200, 413, 503), (name, status, text)
            if status == 503:
                assert retry == "5" and "busy" in text
            if status == 413:
                assert name != "full.flac", text
        assert any(s == 200 for n, s, _, _ in answers if n == "full.flac"), answers
        assert max(latencies) < 5, max(latencies)
        hwm = server.status("VmHWM")
        print(f"\nbase RSS {server.base_rss / 2**20:.0f} MiB, peak {hwm / 2**20:.0f} MiB, bound "
              f"{server.bound / 2**20:.0f} MiB; answers {sorted((n, s) for n, s, _, _ in answers)}; "
              f"/v1/models max {max(latencies):.2f} s")
        server.assert_within_bound()
    finally:
        server.proc.terminate()
        server.proc.wait(20)
