"""Print every HTTP request received on 127.0.0.1:PORT (method, path, body; a gzip body
decompressed) and answer 200: a local stand-in for Slack, a healthcheck service or Sentry, to see
exactly what the job sends (README "Being told").

    python scripts/record_http.py --port 9000
"""

from __future__ import annotations

import argparse
import gzip
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Printer(BaseHTTPRequestHandler):
    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        print(f"{self.command} {self.path}\n{body.decode(errors='replace')}\n", flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_HEAD = _handle

    def log_message(self, *args: object) -> None:  # the requests are printed above
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000, help="port on 127.0.0.1 (default 9000)")
    args = parser.parse_args(argv)
    try:
        server = ThreadingHTTPServer(("127.0.0.1", args.port), Printer)
    except OSError as exc:
        print(f"record_http: cannot listen on 127.0.0.1:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"recording on http://127.0.0.1:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
