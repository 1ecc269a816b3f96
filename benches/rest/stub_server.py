#!/usr/bin/env python3
"""Stand-in for the REST bench server, for trying dlt_rest.py without the Rust bench.

    python3 benches/rest/stub_server.py --records 100000 [--port 0]

Serves GET /items?page=N (1-based, 1,000 records a page by default):
    {"data": [...], "next": "<absolute url of page N+1>" | null}
Every page is rendered to bytes before the port is announced, so serving costs
almost no CPU while a client is being measured. Prints one line,
`listening http://127.0.0.1:PORT`, once ready; stops on SIGTERM / Ctrl-C.
Standard library only; binds loopback only.
"""
import argparse
import json
import sys
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)
STATUSES = ("new", "paid", "shipped")
CITIES = ("Berlin", "Lisbon", "Oslo", "Porto", "Turin", "Lyon", "Ghent")


def ts(seconds):
    return (EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def record(i):
    return {
        "id": i,
        "name": f"customer-{i}",
        "email": f"c{i}@example.com",
        "amount": round((i * 7919 % 1_000_000) / 100, 2),
        "status": STATUSES[i % 3],
        "created_at": ts(i),
        "updated_at": ts(i + 3600),
        "address": {"city": CITIES[i % len(CITIES)], "zip": f"{i % 100000:05d}"},
        "tags": ["a", "b"],
    }


def render(records, page_size, base):
    pages = -(-records // page_size)
    out = []
    for p in range(1, pages + 1):
        first = (p - 1) * page_size + 1
        data = [record(i) for i in range(first, min(first + page_size, records + 1))]
        nxt = f"{base}/items?page={p + 1}" if p < pages else None
        out.append(json.dumps({"data": data, "next": nxt}, separators=(",", ":")).encode())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--page-size", type=int, default=1000)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()

    pages = []
    empty = b'{"data":[],"next":null}'

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real API would offer

        def do_GET(self):
            url = urlparse(self.path)
            if url.path != "/items":
                self.send_error(404)
                return
            try:
                page = int(parse_qs(url.query).get("page", ["1"])[0])
            except ValueError:
                self.send_error(400)
                return
            body = pages[page - 1] if 1 <= page <= len(pages) else empty
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):  # no per-request logging
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    pages.extend(render(args.records, args.page_size, base))
    print(f"listening {base}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
