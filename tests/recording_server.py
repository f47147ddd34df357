"""A real HTTP server on 127.0.0.1 standing in for a third party's endpoint (Slack, a
healthcheck service, a Pushgateway, Sentry): it records every request the real client sent and
answers as told — `ok` (200), `error` (500), any status given as a number, or `hang` (holds the
connection without answering until closed). A gzip-, deflate- or brotli-encoded body is
recorded decompressed."""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import socket


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    url: str
    requests: list[Request] = field(default_factory=list)


@contextmanager
def recording_server(mode: str | int = "ok") -> Iterator[Recorder]:
    """Serve on a free port of 127.0.0.1 until the block ends; `Recorder.url` is its base URL."""
    release = threading.Event()
    recorder = Recorder("")

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            body = _decoded(body, self.headers.get("Content-Encoding"))
            recorder.requests.append(Request(self.command, self.path, dict(self.headers), body))
            if mode == "hang":
                release.wait(60)
                return
            self.send_response(mode if isinstance(mode, int) else 200 if mode == "ok" else 500)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        do_GET = do_POST = do_HEAD = _handle

        def log_message(self, *args: object) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def _decoded(body: bytes, encoding: str | None) -> bytes:
    """`body` without its Content-Encoding (sentry-sdk compresses its envelopes)."""
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # only when sentry-sdk found it installed

        return brotli.decompress(body)
    return body


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (a port just released)."""
    with socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
