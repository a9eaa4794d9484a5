"""The analyzer's HTTP endpoint: Prometheus ``/metrics`` plus health probes.

- ``/metrics``: the registry, text exposition format;
- ``/healthz``: liveness, 200 while the loop turns (a wedged process answers 503);
- ``/ready``: readiness, 200 while consuming with the cluster reachable, 503
  during a broker outage, before the group is joined and while stopping.

Binds to loopback unless told otherwise (``--metrics-addr``).
"""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streamproc.errors import bind_error


def serve(addr: str, port: int, registry, *, ready: Callable[[], bool], live: Callable[[], bool]) -> ThreadingHTTPServer:
    """Start the endpoint in a daemon thread; ``shutdown()`` the returned server to stop it.
    A port that cannot be bound (taken, privileged) raises ConfigError naming it, not a traceback."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/livez"):
                ok = live()
                self._send(200 if ok else 503, b"ok\n" if ok else b"not live\n")
            elif path in ("/ready", "/readyz"):
                ok = ready()
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._send(404, b"not found: try /metrics, /healthz or /ready\n")

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # scrapes every few seconds: keep them out of the logs
            pass

    try:
        server = ThreadingHTTPServer((addr, port), Handler)
    except OSError as exc:
        raise bind_error(exc, addr, port) from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="audiostream-http", daemon=True).start()
    return server
