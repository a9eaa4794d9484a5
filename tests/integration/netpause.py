"""A pausable loopback TCP proxy: one client's network cut and restored, the brokers untouched.

``Proxies(cluster.proxy_routes())`` forwards each VIA listener of a ``LocalCluster(proxied=True)``; a client
bootstrapped on ``cluster.proxied_bootstrap_servers`` is told the proxies' ports for every broker, so all its
traffic goes through them. ``pause()`` stops moving bytes both ways and accepting new connections (they
wait in the listen backlog): connections stay open and silent, as across a network partition, until
``resume()``. Threads and the standard library only.
"""
from __future__ import annotations

import select
import socket
import threading


class PausableProxy:
    """127.0.0.1:``listen_port`` forwarded to 127.0.0.1:``target_port`` while not paused."""

    def __init__(self, listen_port: int, target_port: int, flowing: threading.Event | None = None):
        self.target_port = target_port
        self.flowing = flowing or threading.Event()
        if flowing is None:
            self.flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self.connections = 0
        self.bytes = 0
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", listen_port))
        self._server.listen(64)
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            if not self.flowing.wait(0.2):
                continue  # paused: new connections wait in the backlog, unanswered
            if not select.select([self._server], [], [], 0.2)[0]:
                continue
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:  # the broker is down (a bounce): refuse, as the broker itself would
                client.close()
                continue
            with self._lock:
                self._socks |= {client, upstream}
                self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                if not self.flowing.wait(0.2):
                    continue  # paused: nothing read, nothing sent; the kernel buffers fill, the peer waits
                if not select.select([src], [], [], 0.2)[0]:
                    continue
                data = src.recv(65536)
                if not data:
                    break
                self.flowing.wait()  # a pause that began during the read holds these bytes too
                dst.sendall(data)
                self.bytes += len(data)
        except (OSError, ValueError):  # (ValueError: the other direction closed the socket under select)
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            with self._lock:
                self._socks -= {src, dst}

    def close(self) -> None:
        self._closed.set()
        self.flowing.set()  # release waiting pumps so they see the close
        self._server.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Proxies:
    """One ``PausableProxy`` per (listen port, target port) route, paused and resumed together."""

    def __init__(self, routes: list[tuple[int, int]]):
        self.flowing = threading.Event()
        self.flowing.set()
        self.proxies = [PausableProxy(listen, target, self.flowing) for listen, target in routes]
        self.pauses = 0

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{p.port}" for p in self.proxies)

    @property
    def paused(self) -> bool:
        return not self.flowing.is_set()

    def pause(self) -> None:
        self.pauses += 1
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        for p in self.proxies:
            p.close()

    def __enter__(self) -> "Proxies":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
