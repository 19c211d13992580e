"""A small HTTP reverse proxy on loopback that records requests before forwarding them.

Tests put it between the code under test and moto to see exactly what went over the wire
(which credentials signed a request, what an AssumeRole call carried) without patching boto3.
It can also inject faults: a status code, a dropped connection, or a truncated body for
matching requests.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass
class RecordedRequest:
    """One request seen by the proxy."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Fault:
    """Spoil the answer to matching requests ``times`` times; ``hits`` counts how often it did.

    By default the answer is ``status`` with ``body``. ``drop_connection``: the connection is
    closed without any answer (a reset). ``truncate``: the request is forwarded and the
    upstream answer sent with its full ``Content-Length`` but only half of its body, then
    the connection is closed (a transfer cut short).
    """

    matches: Callable[[RecordedRequest], bool]
    status: int | None = 503
    body: bytes = (
        b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
    )
    times: int = 1
    drop_connection: bool = False
    truncate: bool = False
    hits: int = 0


@dataclass
class RecordingProxy:
    """Forwards to ``upstream`` and keeps every request in ``requests``."""

    upstream: str
    requests: list[RecordedRequest] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """The proxy's own address."""
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> RecordingProxy:
        """Listen on 127.0.0.1 on a free port, in a daemon thread."""
        proxy = self
        upstream = urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = RecordedRequest(self.command, self.path, dict(self.headers), body)
                with proxy._lock:
                    proxy.requests.append(request)
                    fault = next(
                        (f for f in proxy.faults if f.times > 0 and f.matches(request)), None
                    )
                    if fault is not None:
                        fault.times -= 1
                        fault.hits += 1
                if fault is not None and fault.drop_connection:
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault is not None and not fault.truncate:
                    self.send_response(fault.status or 503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(fault.body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(fault.body)
                    return
                conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                # A HEAD answer has no body but announces the object's length.
                announced = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", announced or str(len(payload)))
                self.end_headers()
                conn.close()
                if self.command == "HEAD":
                    return
                if fault is not None:  # truncate: half the body, then hang up
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.close()
                    return
                self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
