"""A small HTTP proxy on loopback that makes an object store misbehave, for the tests.

It forwards every request to the real (moto) server, except the ones its `Faults` pick:
answered 503 SlowDown (throttling), connection reset before any answer, or for GETs, reset
half-way through the body. Requests for keys that contain `broken` fail every time. Faults
are chosen by request number, not at random, so a test run is repeatable.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}
SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
UNAVAILABLE = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
    b"<Message>Service is unable to handle request.</Message></Error>"
)


@dataclass
class Faults:
    """Which requests fail. Counts what was injected, so a test can check that it was."""

    slowdown_every: int = 0  # every n-th request: 503 SlowDown
    reset_every: int = 0  # every n-th request: connection reset, no answer
    cut_body_every: int = 0  # every n-th GET with a body: reset half-way through it
    broken: str = ""  # GETs of keys containing this fail every time (503)
    injected: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pick(self, method: str, path: str) -> str:
        with self.lock:
            self.requests += 1
            n = self.requests
            fault = ""
            if self.broken and method == "GET" and self.broken in path:
                fault = "broken"
            elif self.slowdown_every and n % self.slowdown_every == 0:
                fault = "slowdown"
            elif self.reset_every and n % self.reset_every == 0:
                fault = "reset"
            elif method == "GET" and self.cut_body_every and n % self.cut_body_every == 0:
                fault = "cut_body"
            if fault:
                self.injected[fault] = self.injected.get(fault, 0) + 1
            return fault


class FlakyProxy:
    """`with FlakyProxy(upstream, faults) as proxy:` serves on proxy.url until the block ends."""

    def __init__(self, upstream: str, faults: Faults):
        target = urlsplit(upstream)
        handler = type("Handler", (_Handler,), {"upstream": target, "faults": faults})
        self.server = _QuietServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.faults = faults
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # resets are the point, not news


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream = None
    faults: Faults

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self):
        self.forward()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def forward(self) -> None:
        body = self.read_body()
        fault = self.faults.pick(self.command, self.path)
        if fault == "reset":
            self.reset()
            return
        if fault in ("slowdown", "broken"):
            self.answer(503, SLOWDOWN if fault == "slowdown" else UNAVAILABLE)
            return
        status, headers, payload = self.ask_upstream(body)
        self.send_response(status)
        headers = [(name, value) for name, value in headers if name.lower() not in HOP_BY_HOP]
        if not any(name.lower() == "content-length" for name, _ in headers):
            headers.append(("Content-Length", str(len(payload))))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault == "cut_body" and len(payload) > 1:
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.reset()
            return
        self.wfile.write(payload)

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def ask_upstream(self, body: bytes):
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        try:
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def answer(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the connection was reset on purpose

    def reset(self) -> None:
        """Close with RST (SO_LINGER 0): the client sees 'connection reset by peer'."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()
