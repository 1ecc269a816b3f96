#!/usr/bin/env python3
"""Scripted HTTP test server for inlet's REST API source (standard library only).

Start it, wait for the port file, talk to http://127.0.0.1:<port>, kill it with SIGTERM:

    python3 tests/servers/rest_server.py --port-file PATH --log PATH
        [--records N] [--seed S] [--page-size K] [--token-ttl SECS] [--no-parent-watch]

--port-file  The port (decimal, no newline) is written here atomically (tmp file + rename)
             once the socket listens; the file is removed again on a clean exit.
--log        Every request is appended as one JSON line, flushed at once (see "Request log").
--records    Size of the initial dataset (default 1000).
--seed       Seeds the generator of OAuth access tokens (default 7). The dataset itself is
             fully determined by --records.
--page-size  Default page size of every paginated endpoint (default 50).
--token-ttl  Lifetime in seconds of issued OAuth tokens (default 2, may be fractional).
--no-parent-watch
             By default the server exits (as on SIGTERM) when the process that started it
             dies, so a crashed test run leaves no server behind.

SIGTERM and SIGINT end the server cleanly (exit status 0). HTTP/1.1 with keep-alive; every
response carries Content-Length. Idle keep-alive connections are closed after 60 s.

Dataset
-------
Record i (ids 1..N) is

    {"id": i, "name": "item-<i>", "amount": round(i * 1.25, 2)  (a JSON number: 1.25, 2.5, 5.0),
     "updated_at": "2024-01-01T00:00:00Z" + i minutes, formatted "YYYY-MM-DDTHH:MM:SSZ",
     "tags": ["t<i % 3>", "x"], "owner": {"login": "user<i % 5>", "id": i % 5},
     "active": i % 2 == 0, "note": null if i % 10 == 0 else "n<i>"}

Records are always served sorted by (updated_at, id); so is GET /_admin/records.

Common filters (every endpoint serving records or issues; /api/repos ignores them)
----------------------------------------------------------------------------------
since=<ts>     only updated_at >= ts.      until=<ts>   only updated_at < ts.
ids_mod=<m>,<r>  only id % m == r (m >= 1, 0 <= r < m).
Timestamps: ISO 8601 with or without "Z", an offset, fractions; a date alone means midnight;
no zone means UTC. A "+" that arrived as a space (unencoded "+00:00") is accepted too.
Bad values -> 400 {"error": "..."}.
Paging parameters (page, per_page, limit, offset, page_size) must be integers (page >= 1
except on /api/page_number, per_page/limit/page_size >= 1, offset >= 0), else 400.
A repeated query parameter: the last value counts (and is the one logged).

Paginators
----------
GET /api/json_link/items?page=<n, default 1>&per_page=<k>
    {"data": [records], "links": {"next": <absolute URL or null>}, "meta": {"page": n}}
    The next URL is http://127.0.0.1:<port><path>?<all request params, page=n+1>; null on the
    last page (and on any page past the end, which has "data": []).
GET /api/header_link/items?page=&per_page=
    Bare JSON array. Header `Link: <url>; rel="next", <url>; rel="last", <url>; rel="first",
    <url>; rel="prev"` (one header, comma separated; prev only from page 2, next only while
    there is a next page; first and last always). URLs in it never contain a raw comma.
GET /api/cursor/items?cursor=<token>&per_page=
    {"items": [records], "next_cursor": <opaque token or null at the end>}
    Tokens are unpadded URL-safe base64 of "offset:<n>"; a bad token -> 400.
    &omit_empty=1 leaves out an empty "items" and a null "next_cursor" (so no records: {}).
POST /api/cursor/items   JSON body {"cursor": <token|null|absent>, "per_page": k,
    "filter": {"since": ..., "until": ..., "ids_mod": "m,r"}} -> same response. The body's
    per_page/cursor win over the query's; filters of the body and the query both apply.
GET /api/offset/items?offset=<o, default 0>&limit=<l>
    {"total": <count after filters>, "items": [records]}
    &shape=has_more -> {"has_more": <offset + limit < total>, "items": [...]} (no total).
GET /api/page_number/items?page=<p, 1-based, default 1>&page_size=<k>
    {"total_pages": ceil(total / k), "items": [records]}
    &shape=empty_end -> {"items": [...]} only (the client stops on an empty page).
    Page < 1 or past the end -> "items": [] (the default shape still has total_pages).
GET /api/single/items
    Bare JSON array of all (filtered) records.

Auth (GET /auth/<scheme>/items: json_link pages as above once the credential is right)
--------------------------------------------------------------------------------------
bearer          Authorization: Bearer s3cr3t-bearer-token
basic           Authorization: Basic base64("inlet-user:s3cr3t-basic-pass")
api_key_header  X-API-Key: s3cr3t-api-key
api_key_query   ?api_key=s3cr3t-api-key    (the next links repeat api_key, as real APIs do)
GET /auth/<scheme>/repos: the repos of /api/repos behind the same credentials.
oauth           Authorization: Bearer <access_token from POST /oauth/token>
Missing or wrong -> 401 {"error": "unauthorized"} with a WWW-Authenticate header
(Bearer / Basic / ApiKey realm="inlet"). An expired OAuth token -> 401
{"error": "token expired"}; a revoked one -> 401 {"error": "unauthorized"}.

POST /oauth/token  form-encoded grant_type=client_credentials, client_id=inlet-client,
    client_secret=s3cr3t-client-secret, optional scope (client_id/secret may instead come as
    HTTP Basic auth; a JSON body with the same fields is accepted too)
    -> 200 {"access_token": "<random>", "token_type": "bearer", "expires_in": <ttl>
            [, "scope": <scope>]}
    Wrong client -> 401 {"error": "invalid_client"}; other grant -> 400
    {"error": "unsupported_grant_type"}. Tokens expire --token-ttl seconds after issue.

Parent / child
--------------
GET /api/repos?page=&per_page=     json_link shape; 4 repos
    {"id": k, "name": "repo-a".."repo-d", "owner": {"login": "org"}}   (filters ignored)
GET /api/repos/<name>/issues?page=&per_page=&since=&until=&ids_mod=    json_link shape
    repo k (1..4) has issues id = k*1000+1 .. k*1000+5k (repo-a 5 ... repo-d 20),
    {"id", "repo": "<name>", "title": "issue <id> of <name>",
     "updated_at": 2024-01-01T00:00:00Z + id minutes}, sorted by (updated_at, id).
    Unknown repo -> 404 {"error": "unknown repo"}.

Faults (all json_link pages otherwise, with the common filters)
---------------------------------------------------------------
"Per page" counters are keyed by path + the full, sorted query string, so a retry of the
same URL counts against the same page. They live until POST /_admin/reset.
GET /faults/429/items?...&times=<t, default 1>&retry_after=<secs, default 1 | date>
    The first t requests per page -> 429 {"error": "rate limited"} with Retry-After: <secs>
    (retry_after=date: an HTTP-date 2 to 3 s ahead); later ones are normal.
GET /faults/500/items?...&times=<t, default 1>[&status=<400..599>]
    The first t requests per page -> 500, 502, 503, 500, ... (attempt 1, 2, 3, ...), or
    always <status> when given; body {"error": "server error"}.
GET /faults/hang/items?...&hang_secs=<s, default 5, max 300>&times=<t, default 1>
    The first t requests per page sleep s seconds, then answer normally.
GET /faults/reset/items?...&times=<t, default 1>
    The first t requests per page: the connection is closed (SO_LINGER 0, so an RST
    follows) without any response. Logged with "status": 0.
GET /faults/redirect/items?to=<url>[&code=<301|302|303|307|308, default 302>]
    A redirect to `to`, with no body.
GET /faults/elsewhere/items?elsewhere=<url>&...
    json_link pages whose next link points at `elsewhere` (another server's items, say),
    with page=<n+1> and the request's per_page.
GET /faults/repeat/items?...[&loop_at=<n, default 2>][&back_to=<m, default n>]
    page n's next link points at page m (default: itself; a loop).
GET /faults/malformed/items?...&bad_page=<n, default 2>&kind=<k, default syntax>[&times=<t>]
    Page n (every time, or its first t requests when times is given) is broken:
      syntax     200 application/json body  {"data": [ {"id": 1,, }
      shape      200 valid JSON whose "data" is an object (links and meta as usual)
      html       200 text/html error page
      truncated  200 the right JSON cut in half (Content-Length matches the cut body)
      short      Content-Length of the whole body, half of it sent, connection closed
      error      200 {"message": "temporarily unavailable"}: no records, no links
    Other pages are normal.
GET /faults/malformed_offset/items?offset=&limit=&bad_page=&kind=[&times=]
    The same on the offset shape; the page is offset // limit + 1; "shape" makes "items" an
    object.
GET /faults/malformed_cursor/items?cursor=&per_page=&bad_page=&kind=[&times=]
    The same on the cursor shape (tokens the same for every query); the page is
    offset // per_page + 1.
GET /faults/badrecords/items?...   json_link pages where (by original id) every 40th record is
    the bare string "garbage-<id>"; of the others every 10th has "id": "not-a-number" and
    every 25th "updated_at": "yesterday" (both when both apply). Out of 1000: 25 strings,
    75 bad ids, 35 bad timestamps, 15 of them both, so 120 bad and 880 good records.

Admin
-----
POST /_admin/reset  [optional JSON {"dataset": true}]  -> {"ok": true}
    Clears the fault counters, revokes all tokens, zeroes tokens_issued and requests;
    with "dataset": true also restores the initial --records dataset.
POST /_admin/records  {"add": n}  -> {"added": [ids], "records": count}
    Appends ids last+1 .. last+n; their updated_at continue after the newest record in the
    dataset (max updated_at + 1 min each), so they are always the newest.
POST /_admin/records  {"touch": [ids], "minutes": m (default 0), "set": {field: value}}
    -> {"touched": [ids], "records": count}. Sets updated_at of those records to now + m
    minutes (whole seconds) and overwrites the fields in "set" (never id). Unknown id -> 400.
    "add" and "touch" may be combined (touch first).
GET /_admin/records  -> the whole dataset: bare array, unfiltered, sorted by (updated_at, id).
GET /_admin/state    -> {"records": count, "tokens_issued": n, "requests": total}
    (requests counts every request since start or the last reset, this one included).
GET|POST /_admin/revoke_tokens -> {"revoked": n}; every issued token is invalid afterwards.

Anything else -> 404 {"error": "not found"}; a known path with another method -> 405 with
Allow; HEAD, OPTIONS and other methods -> 501; an unparsable request -> 400 and the connection
is closed. Request bodies may be Content-Length or chunked (max 10 MiB, else 413); a body is
parsed as JSON whatever its Content-Type. Internal errors -> 500 {"error": "internal error",
...}; the server never dies of them. Every error body is JSON {"error": "<message>"}.

Request log
-----------
One JSON object per line, written when the response went out (or the connection was cut):
    {"t": <time.time() at arrival>, "method": "GET", "path": "/api/json_link/items",
     "query": {"page": "2"}, "auth": "bearer" | "basic" | "api_key" | "other" | null,
     "status": 200, "body": <parsed JSON request body or null>}
"auth" is the kind of credential presented: the Authorization scheme (bearer, basic, other),
else "api_key" for an X-API-Key header or an api_key query parameter. Secret values are never
logged: query parameters and JSON fields named api_key, apikey, x-api-key, access_token,
refresh_token, id_token, token, client_secret, secret, password or authorization (any case)
are written as "<redacted>", and every known secret (and every issued token) is replaced by
"<redacted>" inside any other logged string.
Form bodies (POST /oauth/token) are logged as null. An unparsable request line is logged with
"method": null and "path": null.
"""

import argparse
import base64
import binascii
import email.utils
import json
import math
import os
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
from bisect import bisect_left
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from operator import itemgetter
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

BASE_TIME = datetime(2024, 1, 1, tzinfo=timezone.utc)

BEARER_TOKEN = "s3cr3t-bearer-token"
BASIC_USER = "inlet-user"
BASIC_PASSWORD = "s3cr3t-basic-pass"
API_KEY = "s3cr3t-api-key"
CLIENT_ID = "inlet-client"
CLIENT_SECRET = "s3cr3t-client-secret"
STATIC_SECRETS = (BEARER_TOKEN, BASIC_PASSWORD, API_KEY, CLIENT_SECRET)
SENSITIVE_KEYS = {"api_key", "apikey", "x-api-key", "access_token", "refresh_token", "id_token",
                  "token", "client_secret", "secret", "password", "authorization"}
REDACTED = "<redacted>"

REPOS = ["repo-a", "repo-b", "repo-c", "repo-d"]
MAX_BODY = 10 * 1024 * 1024
MAX_HANG_SECS = 300.0
MALFORMED_KINDS = ("syntax", "shape", "html", "truncated", "short", "error")


# ---------------------------------------------------------------------------------------------
# Small helpers


class HttpError(Exception):
    """Raised by handlers to answer with a JSON error."""

    def __init__(self, status, message, headers=None, close=False):
        super().__init__(message)
        self.status = status
        self.body = {"error": message}
        self.headers = headers or []
        self.close = close


class Response:
    """What a handler answers. `drop` closes without answering; `short` sends half a body."""

    def __init__(self, status, body=b"", content_type="application/json", headers=None,
                 drop=False, short=False):
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or []
        self.drop = drop
        self.short = short


def json_response(status, obj, headers=None):
    return Response(status, json.dumps(obj).encode("utf-8"), headers=headers)


def format_ts(dt):
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_ts(text):
    """An ISO 8601 timestamp as an aware UTC datetime; ValueError when it is not one."""
    candidates = [text.strip()]
    if " " in candidates[0]:
        # An unencoded "+00:00" offset arrives as " 00:00".
        candidates.append(candidates[0].replace(" ", "+"))
    for candidate in candidates:
        try:
            dt = datetime.fromisoformat(candidate)
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            return dt.astimezone(timezone.utc)
        except (ValueError, OverflowError):
            continue
    raise ValueError(text)


def int_param(query, name, default, minimum):
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(400, f"{name} must be an integer, got {raw!r}")
    if value < minimum:
        raise HttpError(400, f"{name} must be >= {minimum}, got {value}")
    return value


def parse_filter(source):
    """(since, until, ids_mod) from a dict of strings (query or POST body "filter")."""
    since = until = ids_mod = None
    for name in ("since", "until"):
        raw = source.get(name)
        if raw is None or raw == "":
            continue
        if not isinstance(raw, str):
            raise HttpError(400, f"{name} must be a string timestamp")
        try:
            value = parse_ts(raw)
        except ValueError:
            raise HttpError(400, f"bad {name} timestamp: {raw!r}")
        if name == "since":
            since = value
        else:
            until = value
    raw = source.get("ids_mod")
    if raw is not None and raw != "":
        match = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*", str(raw))
        if not match:
            raise HttpError(400, f"ids_mod must be '<m>,<r>', got {raw!r}")
        m, r = int(match.group(1)), int(match.group(2))
        if m < 1 or r >= m:
            raise HttpError(400, f"ids_mod needs m >= 1 and 0 <= r < m, got {raw!r}")
        ids_mod = (m, r)
    return since, until, ids_mod


def apply_filter(entries, flt):
    """The kept (updated_at datetime, id, record) tuples of a list sorted by (updated_at, id)."""
    since, until, ids_mod = flt
    low = bisect_left(entries, since, key=itemgetter(0)) if since is not None else 0
    high = bisect_left(entries, until, key=itemgetter(0)) if until is not None else len(entries)
    kept = entries[low:high]
    if ids_mod is not None:
        kept = [entry for entry in kept if entry[1] % ids_mod[0] == ids_mod[1]]
    return kept


def ceil_div(a, b):
    return -(-a // b)


def make_record(i, updated=None):
    if updated is None:
        updated = BASE_TIME + timedelta(minutes=i)
    record = {
        "id": i,
        "name": f"item-{i}",
        "amount": round(i * 1.25, 2),
        "updated_at": format_ts(updated),
        "tags": [f"t{i % 3}", "x"],
        "owner": {"login": f"user{i % 5}", "id": i % 5},
        "active": i % 2 == 0,
        "note": None if i % 10 == 0 else f"n{i}",
    }
    return (updated, i, record)


def make_issues(k):
    name = REPOS[k - 1]
    issues = []
    for issue_id in range(k * 1000 + 1, k * 1000 + 5 * k + 1):
        updated = BASE_TIME + timedelta(minutes=issue_id)
        issues.append((updated, issue_id, {
            "id": issue_id,
            "repo": name,
            "title": f"issue {issue_id} of {name}",
            "updated_at": format_ts(updated),
        }))
    return issues


def encode_cursor(offset):
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def decode_cursor(token):
    if not isinstance(token, str):
        raise HttpError(400, "cursor must be a string")
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise HttpError(400, f"invalid cursor {token!r}")
    match = re.fullmatch(r"offset:(\d+)", text)
    if not match:
        raise HttpError(400, f"invalid cursor {token!r}")
    return int(match.group(1))


def auth_kind(headers, query):
    """Which kind of credential a request presents (never its value)."""
    authorization = headers.get("Authorization")
    if authorization is not None:
        scheme = authorization.strip().split(" ", 1)[0].lower()
        return scheme if scheme in ("bearer", "basic") else "other"
    if headers.get("X-API-Key") is not None or "api_key" in query:
        return "api_key"
    return None


def basic_credentials(headers):
    """(user, password) from an HTTP Basic Authorization header, or None."""
    authorization = headers.get("Authorization") or ""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def bearer_token(headers):
    authorization = headers.get("Authorization") or ""
    scheme, _, value = authorization.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


# ---------------------------------------------------------------------------------------------
# Shared state


class Request:
    def __init__(self, method, path, pairs, headers, raw_body, body_json, body_is_json):
        self.method = method
        self.path = path
        self.pairs = pairs                  # query as a list of (key, value), in order
        self.query = dict(pairs)            # last value wins
        self.headers = headers
        self.raw_body = raw_body
        self.body_json = body_json          # parsed JSON body or None
        self.body_is_json = body_is_json    # False when there was no body or it was not JSON
        self.page_key = path + "?" + urlencode(sorted(pairs))


class App:
    """Dataset, tokens, counters and the request log; every handler. One lock for all state."""

    def __init__(self, records, seed, page_size, token_ttl, log_file):
        self.lock = threading.Lock()
        self.initial_records = records
        self.page_size = page_size
        self.token_ttl = token_ttl
        self.rng = random.Random(seed)
        self.log_file = log_file
        self.log_lock = threading.Lock()
        self.port = None
        # Sorted by (updated_at, id); replaced, never changed in place, so a reader may keep
        # the list it got under the lock.
        self.entries = [make_record(i) for i in range(1, records + 1)]
        self.tokens = {}                    # access token -> expiry (time.time())
        self.ever_issued = set()            # for scrubbing the log
        self.tokens_issued = 0
        self.requests = 0
        self.fault_counts = {}
        self.issues = {REPOS[k - 1]: make_issues(k) for k in range(1, len(REPOS) + 1)}
        self.routes = [
            (r"/api/json_link/items", {"GET": self.h_json_link}),
            (r"/api/header_link/items", {"GET": self.h_header_link}),
            (r"/api/cursor/items", {"GET": self.h_cursor, "POST": self.h_cursor}),
            (r"/api/offset/items", {"GET": self.h_offset}),
            (r"/api/page_number/items", {"GET": self.h_page_number}),
            (r"/api/single/items", {"GET": self.h_single}),
            (r"/auth/(bearer|basic|api_key_header|api_key_query|oauth)/items",
             {"GET": self.h_auth}),
            (r"/auth/(bearer|basic|api_key_header|api_key_query|oauth)/repos",
             {"GET": self.h_auth_repos}),
            (r"/oauth/token", {"POST": self.h_oauth_token}),
            (r"/api/repos", {"GET": self.h_repos}),
            (r"/api/repos/([^/]+)/issues", {"GET": self.h_issues}),
            (r"/faults/429/items", {"GET": self.h_fault_429}),
            (r"/faults/500/items", {"GET": self.h_fault_500}),
            (r"/faults/hang/items", {"GET": self.h_fault_hang}),
            (r"/faults/reset/items", {"GET": self.h_fault_reset}),
            (r"/faults/repeat/items", {"GET": self.h_fault_repeat}),
            (r"/faults/malformed/items", {"GET": self.h_fault_malformed}),
            (r"/faults/malformed_offset/items", {"GET": self.h_fault_malformed_offset}),
            (r"/faults/malformed_cursor/items", {"GET": self.h_fault_malformed_cursor}),
            (r"/faults/redirect/items", {"GET": self.h_fault_redirect}),
            (r"/faults/elsewhere/items", {"GET": self.h_fault_elsewhere}),
            (r"/faults/badrecords/items", {"GET": self.h_fault_badrecords}),
            (r"/_admin/reset", {"POST": self.h_admin_reset}),
            (r"/_admin/records", {"GET": self.h_admin_records, "POST": self.h_admin_records}),
            (r"/_admin/state", {"GET": self.h_admin_state}),
            (r"/_admin/revoke_tokens", {"GET": self.h_admin_revoke, "POST": self.h_admin_revoke}),
        ]
        self.routes = [(re.compile(pattern), methods) for pattern, methods in self.routes]

    # -- plumbing ------------------------------------------------------------------------------

    def count_request(self):
        with self.lock:
            self.requests += 1

    def dispatch(self, req):
        for pattern, methods in self.routes:
            match = pattern.fullmatch(req.path)
            if not match:
                continue
            handler = methods.get(req.method)
            if handler is None:
                allow = ", ".join(sorted(methods))
                raise HttpError(405, "method not allowed", headers=[("Allow", allow)])
            return handler(req, *[unquote(g) for g in match.groups()])
        raise HttpError(404, "not found")

    def scrub(self, value, key=None):
        """A copy of a value for the log with every secret cut out."""
        if key is not None and key.lower() in SENSITIVE_KEYS and value is not None:
            return REDACTED
        if isinstance(value, str):
            with self.lock:
                secrets = STATIC_SECRETS + tuple(self.ever_issued)
            for secret in secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {self.scrub(str(k)): self.scrub(v, str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub(v) for v in value]
        return value

    def log(self, t, method, path, query, auth, status, body):
        entry = {
            "t": t,
            "method": method,
            "path": self.scrub(path),
            "query": self.scrub(query),
            "auth": auth,
            "status": status,
            "body": self.scrub(body),
        }
        line = json.dumps(entry) + "\n"
        with self.log_lock:
            if not self.log_file.closed:   # a late request while shutting down is not logged
                self.log_file.write(line)
                self.log_file.flush()

    def snapshot(self):
        with self.lock:
            return self.entries

    def records_for(self, req, extra_filter=None):
        entries = apply_filter(self.snapshot(), parse_filter(req.query))
        if extra_filter is not None:
            entries = apply_filter(entries, extra_filter)
        return [entry[2] for entry in entries]

    def url_with(self, req, **changes):
        """Absolute URL of this request with some query parameters replaced (or added)."""
        pairs, done = [], set()
        for key, value in req.pairs:
            if key not in changes:
                pairs.append((key, value))
            elif key not in done:
                pairs.append((key, str(changes[key])))
                done.add(key)
        pairs += [(key, str(value)) for key, value in changes.items() if key not in done]
        return f"http://127.0.0.1:{self.port}{req.path}?{urlencode(pairs)}"

    def bump(self, fault, req):
        """Counts one more request of this fault for this page; returns the count (1-based)."""
        with self.lock:
            key = (fault, req.page_key)
            self.fault_counts[key] = self.fault_counts.get(key, 0) + 1
            return self.fault_counts[key]

    # -- paginators ----------------------------------------------------------------------------

    def json_link_body(self, req, records, next_override=None):
        page = int_param(req.query, "page", 1, 1)
        per_page = int_param(req.query, "per_page", self.page_size, 1)
        start = (page - 1) * per_page
        data = records[start:start + per_page]
        has_next = start + per_page < len(records)
        next_url = self.url_with(req, page=page + 1) if has_next else None
        if next_override is not None:
            next_url = self.url_with(req, page=next_override)
        return {"data": data, "links": {"next": next_url}, "meta": {"page": page}}

    def h_json_link(self, req):
        return json_response(200, self.json_link_body(req, self.records_for(req)))

    def h_header_link(self, req):
        records = self.records_for(req)
        page = int_param(req.query, "page", 1, 1)
        per_page = int_param(req.query, "per_page", self.page_size, 1)
        last = max(1, ceil_div(len(records), per_page))
        start = (page - 1) * per_page
        links = []
        if start + per_page < len(records):
            links.append((self.url_with(req, page=page + 1), "next"))
        links.append((self.url_with(req, page=last), "last"))
        links.append((self.url_with(req, page=1), "first"))
        if page > 1:
            links.append((self.url_with(req, page=min(page - 1, last)), "prev"))
        header = ", ".join(f'<{url}>; rel="{rel}"' for url, rel in links)
        return json_response(200, records[start:start + per_page], headers=[("Link", header)])

    def h_cursor(self, req):
        return json_response(200, self.cursor_body(req)[0])

    def cursor_body(self, req):
        """The cursor page's body, and its page number (1-based)."""
        cursor = req.query.get("cursor") or None
        per_page = int_param(req.query, "per_page", self.page_size, 1)
        body_filter = None
        if req.method == "POST":
            if req.raw_body and not req.body_is_json:
                raise HttpError(400, "body must be JSON")
            body = req.body_json if req.raw_body else {}
            if not isinstance(body, dict):
                raise HttpError(400, "body must be a JSON object")
            if body.get("cursor") is not None:
                cursor = body["cursor"]
            if body.get("per_page") is not None:
                value = body["per_page"]
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise HttpError(400, "per_page must be an integer >= 1")
                per_page = value
            flt = body.get("filter")
            if flt is not None:
                if not isinstance(flt, dict):
                    raise HttpError(400, "filter must be a JSON object")
                body_filter = parse_filter(flt)
        offset = decode_cursor(cursor) if cursor is not None else 0
        records = self.records_for(req, body_filter)
        items = records[offset:offset + per_page]
        more = offset + per_page < len(records)
        next_cursor = encode_cursor(offset + per_page) if more else None
        body = {"items": items, "next_cursor": next_cursor}
        if req.query.get("omit_empty"):
            # As protobuf-style JSON encoders do: empty lists and nulls left out.
            body = {k: v for k, v in body.items() if v}
        return body, offset // per_page + 1

    def offset_body(self, req, records):
        offset = int_param(req.query, "offset", 0, 0)
        limit = int_param(req.query, "limit", self.page_size, 1)
        shape = req.query.get("shape", "")
        if shape not in ("", "total", "has_more"):
            raise HttpError(400, f"unknown shape {shape!r}")
        items = records[offset:offset + limit]
        if shape == "has_more":
            return {"has_more": offset + limit < len(records), "items": items}
        return {"total": len(records), "items": items}

    def h_offset(self, req):
        return json_response(200, self.offset_body(req, self.records_for(req)))

    def h_page_number(self, req):
        records = self.records_for(req)
        page = int_param(req.query, "page", 1, -sys.maxsize)    # < 1 is an empty page
        page_size = int_param(req.query, "page_size", self.page_size, 1)
        shape = req.query.get("shape", "")
        if shape not in ("", "total_pages", "empty_end"):
            raise HttpError(400, f"unknown shape {shape!r}")
        items = records[(page - 1) * page_size:page * page_size] if page >= 1 else []
        if shape == "empty_end":
            return json_response(200, {"items": items})
        return json_response(200, {"total_pages": ceil_div(len(records), page_size),
                                   "items": items})

    def h_single(self, req):
        return json_response(200, self.records_for(req))

    # -- auth ----------------------------------------------------------------------------------

    def h_auth(self, req, scheme):
        self.check_auth(req, scheme)
        return json_response(200, self.json_link_body(req, self.records_for(req)))

    def h_auth_repos(self, req, scheme):
        self.check_auth(req, scheme)
        return self.h_repos(req)

    def check_auth(self, req, scheme):
        def deny(challenge, message="unauthorized"):
            raise HttpError(401, message, headers=[("WWW-Authenticate", challenge)])

        if scheme == "bearer":
            if bearer_token(req.headers) != BEARER_TOKEN:
                deny('Bearer realm="inlet"')
        elif scheme == "basic":
            if basic_credentials(req.headers) != (BASIC_USER, BASIC_PASSWORD):
                deny('Basic realm="inlet", charset="UTF-8"')
        elif scheme == "api_key_header":
            if req.headers.get("X-API-Key") != API_KEY:
                deny('ApiKey realm="inlet", header="X-API-Key"')
        elif scheme == "api_key_query":
            if req.query.get("api_key") != API_KEY:
                deny('ApiKey realm="inlet", query="api_key"')
        elif scheme == "oauth":
            token = bearer_token(req.headers)
            with self.lock:
                expiry = self.tokens.get(token) if token else None
            if expiry is None:
                deny('Bearer realm="inlet", error="invalid_token"')
            if time.time() >= expiry:
                deny('Bearer realm="inlet", error="invalid_token", '
                     'error_description="token expired"', "token expired")

    def h_oauth_token(self, req):
        if req.body_is_json:
            form = req.body_json if isinstance(req.body_json, dict) else {}
            form = {k: v for k, v in form.items() if isinstance(v, str)}
        else:
            form = dict(parse_qsl(req.raw_body.decode("utf-8", "replace"),
                                  keep_blank_values=True))
        if form.get("grant_type") != "client_credentials":
            raise HttpError(400, "unsupported_grant_type")
        credentials = basic_credentials(req.headers)
        if credentials is None:
            credentials = (form.get("client_id"), form.get("client_secret"))
        if credentials != (CLIENT_ID, CLIENT_SECRET):
            raise HttpError(401, "invalid_client",
                            headers=[("WWW-Authenticate", 'Basic realm="inlet"')])
        with self.lock:
            # Named like the other secrets, so the tests that look for leaks find them too.
            token = "s3cr3t-tok-" + "".join(self.rng.choice("abcdefghijklmnopqrstuvwxyz0123456789")
                                     for _ in range(32))
            self.tokens[token] = time.time() + self.token_ttl
            self.ever_issued.add(token)
            self.tokens_issued += 1
        body = {"access_token": token, "token_type": "bearer", "expires_in": self.token_ttl}
        if form.get("scope"):
            body["scope"] = form["scope"]
        return json_response(200, body, headers=[("Cache-Control", "no-store")])

    # -- parent / child ------------------------------------------------------------------------

    def h_repos(self, req):
        repos = [{"id": k, "name": name, "owner": {"login": "org"}}
                 for k, name in enumerate(REPOS, start=1)]
        return json_response(200, self.json_link_body(req, repos))

    def h_issues(self, req, name):
        if name not in self.issues:
            raise HttpError(404, "unknown repo")
        issues = [entry[2] for entry in apply_filter(self.issues[name], parse_filter(req.query))]
        return json_response(200, self.json_link_body(req, issues))

    # -- faults --------------------------------------------------------------------------------

    def h_fault_429(self, req):
        records = self.records_for(req)
        times = int_param(req.query, "times", 1, 0)
        retry_after = req.query.get("retry_after", "1")
        if retry_after != "date":
            int_param(req.query, "retry_after", 1, 0)
        body = self.json_link_body(req, records)
        if self.bump("429", req) <= times:
            if retry_after == "date":
                retry_after = email.utils.formatdate(math.ceil(time.time()) + 2, usegmt=True)
            return json_response(429, {"error": "rate limited"},
                                 headers=[("Retry-After", retry_after)])
        return json_response(200, body)

    def h_fault_500(self, req):
        records = self.records_for(req)
        times = int_param(req.query, "times", 1, 0)
        status = int_param(req.query, "status", 0, 0)
        if status and not 400 <= status <= 599:
            raise HttpError(400, "status must be within 400..599")
        body = self.json_link_body(req, records)
        attempt = self.bump("500", req)
        if attempt <= times:
            status = status or (500, 502, 503)[(attempt - 1) % 3]
            return json_response(status, {"error": "server error"})
        return json_response(200, body)

    def h_fault_hang(self, req):
        records = self.records_for(req)
        times = int_param(req.query, "times", 1, 0)
        try:
            hang_secs = float(req.query.get("hang_secs", "5"))
        except ValueError:
            raise HttpError(400, "hang_secs must be a number")
        if not 0 <= hang_secs <= MAX_HANG_SECS:
            raise HttpError(400, f"hang_secs must be within 0..{MAX_HANG_SECS:g}")
        body = self.json_link_body(req, records)
        if self.bump("hang", req) <= times:
            time.sleep(hang_secs)
        return json_response(200, body)

    def h_fault_reset(self, req):
        records = self.records_for(req)
        times = int_param(req.query, "times", 1, 0)
        body = self.json_link_body(req, records)
        if self.bump("reset", req) <= times:
            return Response(0, drop=True)
        return json_response(200, body)

    def h_fault_repeat(self, req):
        records = self.records_for(req)
        page = int_param(req.query, "page", 1, 1)
        loop_at = int_param(req.query, "loop_at", 2, 1)
        back_to = int_param(req.query, "back_to", loop_at, 1)
        body = self.json_link_body(req, records, next_override=back_to if page == loop_at else None)
        return json_response(200, body)

    def malformed(self, req, page, body, items_key):
        """The broken (or, for other pages, the normal) response of a malformed fault."""
        bad_page = int_param(req.query, "bad_page", 2, 1)
        kind = req.query.get("kind", "syntax")
        if kind not in MALFORMED_KINDS:
            raise HttpError(400, f"kind must be one of {', '.join(MALFORMED_KINDS)}")
        times = int_param(req.query, "times", -1, 0)
        if page != bad_page or (times >= 0 and self.bump("malformed", req) > times):
            return json_response(200, body)
        if kind == "syntax":
            return Response(200, b'{"data": [ {"id": 1,, }')
        if kind == "shape":
            body[items_key] = {"oops": "an object where an array belongs"}
            return json_response(200, body)
        if kind == "error":
            # An error object with status 200: no records, no links, nothing to page by.
            return json_response(200, {"message": "temporarily unavailable"})
        if kind == "html":
            html = (b"<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>"
                    b"<body><h1>Service Unavailable</h1><p>Please try again later.</p>"
                    b"</body></html>\n")
            return Response(200, html, content_type="text/html; charset=utf-8")
        full = json.dumps(body).encode("utf-8")
        if kind == "truncated":
            return Response(200, full[:len(full) // 2])
        return Response(200, full, short=True)

    def h_fault_malformed(self, req):
        body = self.json_link_body(req, self.records_for(req))
        return self.malformed(req, body["meta"]["page"], body, "data")

    def h_fault_redirect(self, req):
        to = req.query.get("to")
        if not to:
            raise HttpError(400, "to is required")
        code = int_param(req.query, "code", 302, 300)
        if code not in (301, 302, 303, 307, 308):
            raise HttpError(400, "code must be 301, 302, 303, 307 or 308")
        return Response(code, b"", headers=[("Location", to)])

    def h_fault_elsewhere(self, req):
        elsewhere = req.query.get("elsewhere")
        if not elsewhere:
            raise HttpError(400, "elsewhere is required")
        body = self.json_link_body(req, self.records_for(req))
        if body["links"]["next"] is not None:
            per_page = int_param(req.query, "per_page", self.page_size, 1)
            query = urlencode([("page", body["meta"]["page"] + 1), ("per_page", per_page)])
            body["links"]["next"] = f"{elsewhere}?{query}"
        return json_response(200, body)

    def h_fault_malformed_cursor(self, req):
        body, page = self.cursor_body(req)
        return self.malformed(req, page, body, "items")

    def h_fault_malformed_offset(self, req):
        body = self.offset_body(req, self.records_for(req))
        offset = int_param(req.query, "offset", 0, 0)
        limit = int_param(req.query, "limit", self.page_size, 1)
        return self.malformed(req, offset // limit + 1, body, "items")

    def h_fault_badrecords(self, req):
        corrupted = []
        for record in self.records_for(req):
            rid = record["id"]
            if rid % 40 == 0:
                corrupted.append(f"garbage-{rid}")
                continue
            record = dict(record)
            if rid % 10 == 0:
                record["id"] = "not-a-number"
            if rid % 25 == 0:
                record["updated_at"] = "yesterday"
            corrupted.append(record)
        return json_response(200, self.json_link_body(req, corrupted))

    # -- admin ---------------------------------------------------------------------------------

    def admin_body(self, req):
        if not req.raw_body:
            return {}
        if not req.body_is_json or not isinstance(req.body_json, dict):
            raise HttpError(400, "body must be a JSON object")
        return req.body_json

    def h_admin_reset(self, req):
        body = self.admin_body(req)
        with self.lock:
            self.fault_counts.clear()
            self.tokens.clear()
            self.tokens_issued = 0
            self.requests = 1   # this request
            if body.get("dataset"):
                self.entries = [make_record(i) for i in range(1, self.initial_records + 1)]
        return json_response(200, {"ok": True})

    def h_admin_records(self, req):
        if req.method == "GET":
            return json_response(200, [entry[2] for entry in self.snapshot()])
        body = self.admin_body(req)
        add = body.get("add", 0)
        touch = body.get("touch", [])
        minutes = body.get("minutes", 0)
        changes = body.get("set", {})
        if not isinstance(add, int) or isinstance(add, bool) or not 0 <= add <= 1_000_000:
            raise HttpError(400, "add must be an integer within 0..1000000")
        if not isinstance(touch, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in touch):
            raise HttpError(400, "touch must be a list of integer ids")
        if (not isinstance(minutes, (int, float)) or isinstance(minutes, bool)
                or not abs(minutes) <= 10_000_000):
            raise HttpError(400, "minutes must be a number within -1e7..1e7")
        if not isinstance(changes, dict) or "id" in changes:
            raise HttpError(400, "set must be a JSON object without id")
        answer = {}
        with self.lock:
            entries = list(self.entries)
            if touch:
                by_id = {entry[1]: n for n, entry in enumerate(entries)}
                unknown = [i for i in touch if i not in by_id]
                if unknown:
                    raise HttpError(400, f"unknown ids: {unknown}")
                updated = (datetime.now(timezone.utc) + timedelta(minutes=minutes)).replace(
                    microsecond=0)
                for i in touch:
                    n = by_id[i]
                    record = dict(entries[n][2], **changes)
                    record["updated_at"] = format_ts(updated)
                    entries[n] = (updated, i, record)
                answer["touched"] = touch
            if add:
                last_id = max((entry[1] for entry in entries), default=0)
                newest = max((entry[0] for entry in entries), default=BASE_TIME)
                added = []
                for n in range(1, add + 1):
                    entries.append(make_record(last_id + n, newest + timedelta(minutes=n)))
                    added.append(last_id + n)
                answer["added"] = added
            entries.sort(key=itemgetter(0, 1))
            self.entries = entries
            answer["records"] = len(entries)
        return json_response(200, answer)

    def h_admin_state(self, req):
        with self.lock:
            state = {"records": len(self.entries), "tokens_issued": self.tokens_issued,
                     "requests": self.requests}
        return json_response(200, state)

    def h_admin_revoke(self, req):
        with self.lock:
            revoked = len(self.tokens)
            self.tokens.clear()
        return json_response(200, {"revoked": revoked})


# ---------------------------------------------------------------------------------------------
# HTTP plumbing


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "inlet-rest-test/1.0"
    timeout = 60    # idle keep-alive connections are closed after this many seconds

    def do_GET(self):
        self.handle_any()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format, *args):
        pass    # the JSON log is the log

    def send_error(self, code, message=None, explain=None):
        """Protocol-level errors (bad request line, unsupported method, ...) as JSON too."""
        t = time.time()
        app = self.server.app
        app.count_request()
        method = getattr(self, "command", None)
        path = urlsplit(getattr(self, "path", "") or "").path or None
        self.close_connection = True
        if self.request_version == "HTTP/0.9":     # an unparsable request line: answer 1.1
            self.request_version = "HTTP/1.1"
        body = b"" if method == "HEAD" or code < 200 or code in (204, 304) else json.dumps(
            {"error": message or self.responses.get(code, ("error",))[0]}).encode()
        status = self.send(Response(code, body, headers=[("Connection", "close")]))
        app.log(t, method, path, {}, None, status, None)

    def handle_any(self):
        t = time.time()
        app = self.server.app
        app.count_request()
        split = urlsplit(self.path)
        pairs = parse_qsl(split.query, keep_blank_values=True)
        query = dict(pairs)
        body_json = None
        try:
            raw = self.read_body()
            body_is_json = False
            if raw:     # whatever the Content-Type says; a form body is never valid JSON
                try:
                    body_json = json.loads(raw.decode("utf-8"))
                    body_is_json = True
                except (UnicodeDecodeError, ValueError):
                    body_json = None
            req = Request(self.command, split.path, pairs, self.headers, raw, body_json,
                          body_is_json)
            response = app.dispatch(req)
        except HttpError as error:
            response = json_response(error.status, error.body, error.headers)
            if error.close:
                self.close_connection = True
                response.headers.append(("Connection", "close"))
        except Exception as error:  # never let a handler bug take the server down
            response = json_response(500, {"error": "internal error", "detail": repr(error)})
        status = self.send(response)
        try:
            app.log(t, self.command, split.path, query, auth_kind(self.headers, query), status,
                    body_json)
        except (RecursionError, ValueError):    # an absurdly nested body: log it as null
            app.log(t, self.command, split.path, query, auth_kind(self.headers, query), status,
                    None)

    def read_body(self):
        """The request body (Content-Length or chunked); a broken framing closes the connection."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(65537)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise HttpError(400, "bad chunked encoding", close=True)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass    # trailers
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise HttpError(413, "body too large", close=True)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            length = int(length)
        except ValueError:
            raise HttpError(400, "bad Content-Length", close=True)
        if length < 0:
            raise HttpError(400, "bad Content-Length", close=True)
        if length > MAX_BODY:
            raise HttpError(413, "body too large", close=True)
        return self.rfile.read(length)

    def send(self, response):
        """Writes a response; returns the status to log (0 when the connection was dropped)."""
        try:
            if response.drop:
                self.close_connection = True
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                return 0
            self.send_response(response.status)
            for name, value in response.headers:
                self.send_header(name, value)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if self.command == "HEAD":
                return response.status
            if response.short:
                self.wfile.write(response.body[:len(response.body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
            else:
                self.wfile.write(response.body)
                self.wfile.flush()
        except OSError:     # the client went away (e.g. it timed out on a hang)
            self.close_connection = True
        return response.status


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def write_port_file(path, port):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.write(str(port))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def watch_parent(parent):
    """Ends the server (as SIGTERM would) once the process that started it is gone."""
    while True:
        time.sleep(1)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def main(argv=None):
    parent = os.getppid()   # read first: the parent may die while we start
    parser = argparse.ArgumentParser(description="Scripted REST API test server for inlet.")
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--page-size", type=int, default=50)
    parser.add_argument("--token-ttl", type=float, default=2.0)
    parser.add_argument("--no-parent-watch", action="store_true")
    args = parser.parse_args(argv)
    if args.records < 0 or args.page_size < 1 or args.token_ttl <= 0:
        parser.error("--records must be >= 0, --page-size >= 1, --token-ttl > 0")
    token_ttl = int(args.token_ttl) if args.token_ttl == int(args.token_ttl) else args.token_ttl

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    log_file = open(args.log, "a", encoding="utf-8")
    app = App(args.records, args.seed, args.page_size, token_ttl, log_file)
    server = Server(("127.0.0.1", 0), Handler)
    server.app = app
    app.port = server.server_address[1]
    if not args.no_parent_watch:
        threading.Thread(target=watch_parent, args=(parent,), daemon=True).start()
    try:
        write_port_file(args.port_file, app.port)
        server.serve_forever(poll_interval=0.2)
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        server.server_close()
        with app.log_lock:
            log_file.close()
        try:
            os.remove(args.port_file)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
