"""S3 on loopback for the tests: moto's server, and a proxy in front of it that injects faults.

The proxy forwards every request to moto unchanged, except the ones its schedule picks: those get
an HTTP 500 ``InternalError``, a 503 ``SlowDown``, a connection closed before any response, or a
200 whose body stops half-way (the connection then closes). Each object path is faulted on its
first request only, so a client that retries succeeds; ``injected`` counts what was done.
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("slowdown", "internal", "drop", "truncate")


def start_moto() -> tuple[object, str]:
    """A moto S3 server on 127.0.0.1 (a free port); returns (server, endpoint URL)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


class FaultProxy:
    """A loopback HTTP proxy to ``upstream`` that faults the first request of each path (GETs only,
    listings included), cycling through :data:`FAULTS`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._pick(self.command, self.path)
                if fault in ("slowdown", "internal"):
                    code, status = ("SlowDown", 503) if fault == "slowdown" else ("InternalError", 500)
                    payload = (
                        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                        f"<Message>injected by the test proxy</Message></Error>"
                    ).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault == "drop":
                    self.close_connection = True
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                conn.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                if fault == "truncate" and len(data) > 1:
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                    return
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                with proxy._lock:
                    proxy.forwarded += 1

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _pick(self, method: str, path: str) -> str:
        """The fault for this request ("" for none): GETs, first time per path, cycling kinds."""
        if method != "GET":
            return ""
        with self._lock:
            if path in self._seen:
                return ""
            self._seen.add(path)
            is_listing = "list-type" in path
            fault = "slowdown" if is_listing else FAULTS[sum(self.injected.values()) % len(FAULTS)]
            self.injected[fault] += 1
            return fault

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
