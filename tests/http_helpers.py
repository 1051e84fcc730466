"""A tiny HTTP server on loopback for the sample downloads: GET with ``Range: bytes=N-`` support, and a
switch that cuts a response after N bytes (a lost connection). Serves a folder (a fake mirror, or
``../shared/data`` laid out as the samples' mirror is)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class RangeHandler(BaseHTTPRequestHandler):
    """GET of files under ``server.root``; ``Range: bytes=N-`` answered with 206; a path in
    ``server.cut`` gets only that many bytes of its body on its next request, then the connection closes."""

    server: SampleServer

    def do_GET(self) -> None:
        rel = unquote(urlparse(self.path).path).lstrip("/")
        rng = self.headers.get("Range")
        self.server.requests.append((rel, rng))
        path = self.server.root / rel
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1]) if rng else 0
        if start >= len(data) > 0:
            self.send_error(416)
            return
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.server.cut.pop(rel, None)
        self.wfile.write(body if cut is None else body[:cut])  # HTTP/1.0: the connection closes after this

    def log_message(self, *args: object) -> None:
        pass


class SampleServer(ThreadingHTTPServer):
    root: Path
    cut: dict[str, int]
    requests: list[tuple[str, str | None]]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


def serve(root: Path) -> Iterator[SampleServer]:
    """A generator: yields a server on a free loopback port serving ``root``; closing the generator stops it."""
    server = SampleServer(("127.0.0.1", 0), RangeHandler)
    server.root, server.cut, server.requests = Path(root), {}, []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
