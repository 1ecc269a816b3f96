#!/usr/bin/env python3
"""HTTP receiver for inlet's webhook alerts and OpenLineage events (standard library only).

    python3 tests/servers/receiver.py --port 0 [--fail-first N] [--status CODE] [--no-parent-watch]

--port         Port to listen on, on 127.0.0.1 (0: a free one). The port actually bound is the
               first line printed on stdout (flushed at once, once the socket listens).
--fail-first   The first N POSTs are answered with --status instead of 200 (default 0), so a
               sender's retries can be tested.
--status       The status of those failed answers (default 500).
--no-parent-watch
               By default the receiver exits when the process that started it dies, so a
               crashed test leaves no server behind.

Every POST, to any path, is recorded as
    {"path": "/the/path?query", "headers": {lower-cased name: value},
     "body": <parsed JSON, or the text when it is not JSON>, "received_at": <unix time, float>,
     "answered": <the status code it was answered with>}
and answered 200 {"ok": true} (or CODE {"ok": false} while failing). Bodies may come with
Content-Length or chunked.

GET /received   the JSON list of every record so far, failed ones included, in arrival order.
DELETE /received  forgets them (204).
GET /health     200 "ok".
Anything else: 404.

SIGTERM and SIGINT end the receiver cleanly (exit status 0).
"""

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, fail_first, fail_status):
        super().__init__(address, Handler)
        self.lock = threading.Lock()
        self.records = []
        self.posts = 0
        self.fail_first = fail_first
        self.fail_status = fail_status


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "inlet-test-receiver"

    def log_message(self, format, *args):  # noqa: A002 - quiet: the records are the log
        pass

    def reply(self, status, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers, up to the empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def do_POST(self):
        raw = self.read_body()
        received_at = time.time()
        text = raw.decode("utf-8", errors="replace")
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        headers = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        server = self.server
        with server.lock:
            server.posts += 1
            status = server.fail_status if server.posts <= server.fail_first else 200
            server.records.append({"path": self.path, "headers": headers, "body": body,
                                   "received_at": received_at, "answered": status})
        self.reply(status, json.dumps({"ok": status < 300}))

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/received":
            with self.server.lock:
                body = json.dumps(self.server.records)
            self.reply(200, body)
        elif path == "/health":
            self.reply(200, "ok", "text/plain; charset=utf-8")
        else:
            self.reply(404, json.dumps({"error": f"no such path: {path}"}))

    def do_DELETE(self):
        if self.path.split("?", 1)[0] == "/received":
            with self.server.lock:
                self.server.records.clear()
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.reply(404, json.dumps({"error": f"no such path: {self.path}"}))


def watch_parent(parent):
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def main(argv=None):
    parent = os.getppid()   # read first: the parent may die while we start
    parser = argparse.ArgumentParser(description="Receiver of webhook alerts and OpenLineage events.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--status", type=int, default=500)
    parser.add_argument("--no-parent-watch", action="store_true")
    args = parser.parse_args(argv)
    if args.fail_first < 0 or not 100 <= args.status <= 599:
        parser.error("--fail-first must be >= 0 and --status an HTTP status (100-599)")

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    server = Server(("127.0.0.1", args.port), args.fail_first, args.status)
    if not args.no_parent_watch:
        threading.Thread(target=watch_parent, args=(parent,), daemon=True).start()
    try:
        print(server.server_address[1], flush=True)
        server.serve_forever(poll_interval=0.2)
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
