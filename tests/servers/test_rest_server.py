"""Self-test of rest_server.py (standard library only).

    python3 -m unittest tests/servers/test_rest_server.py      (from the repository root)

Starts the server as a subprocess (one shared instance, plus fresh ones where a test changes
the dataset, reads the log or stops the server) and exercises every endpoint and fault.
Expected records are computed here from the documented formula, not fetched from the server.
"""

import base64
import email.utils
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlencode, urlsplit

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rest_server.py")
BASE_TIME = datetime(2024, 1, 1, tzinfo=timezone.utc)
SECRETS = ("s3cr3t-bearer-token", "s3cr3t-basic-pass", "s3cr3t-api-key", "s3cr3t-client-secret")
LOG_KEYS = {"t", "method", "path", "query", "auth", "status", "body"}


def expected_record(i):
    return {
        "id": i,
        "name": f"item-{i}",
        "amount": round(i * 1.25, 2),
        "updated_at": (BASE_TIME + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tags": [f"t{i % 3}", "x"],
        "owner": {"login": f"user{i % 5}", "id": i % 5},
        "active": i % 2 == 0,
        "note": None if i % 10 == 0 else f"n{i}",
    }


def expected_ids(n=1000, since_minute=None, until_minute=None, ids_mod=None):
    """Ids of the default dataset kept by the filters (record i is at minute i)."""
    ids = range(1, n + 1)
    if since_minute is not None:
        ids = [i for i in ids if i >= since_minute]
    if until_minute is not None:
        ids = [i for i in ids if i < until_minute]
    if ids_mod is not None:
        ids = [i for i in ids if i % ids_mod[0] == ids_mod[1]]
    return list(ids)


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Reply:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)


class ServerProcess:
    """One running rest_server.py with its own scratch directory."""

    def __init__(self, *args):
        self.dir = tempfile.TemporaryDirectory()
        self.port_file = os.path.join(self.dir.name, "port")
        self.log_path = os.path.join(self.dir.name, "requests.jsonl")
        self.proc = subprocess.Popen(
            [sys.executable, SERVER, "--port-file", self.port_file, "--log", self.log_path,
             *args])
        deadline = time.time() + 15
        while not os.path.exists(self.port_file):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("rest_server.py did not start")
            time.sleep(0.02)
        with open(self.port_file) as handle:
            self.port = int(handle.read())
        self.base = f"http://127.0.0.1:{self.port}"

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code

    def cleanup(self):
        self.stop()
        self.dir.cleanup()

    def url(self, path, **query):
        return self.base + path + ("?" + urlencode(query) if query else "")

    def request(self, url, method="GET", body=None, headers=None, timeout=10):
        """A request with urllib; HTTP errors are replies too."""
        if not url.startswith("http"):
            url = self.base + url
        data = None
        headers = dict(headers or {})
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return Reply(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            return Reply(error.code, error.headers, error.read())

    def get_json(self, url, **kwargs):
        reply = self.request(url, **kwargs)
        assert reply.status == 200, (url, reply.status, reply.body)
        assert reply.headers["Content-Type"] == "application/json"
        return reply.json()

    def log_entries(self):
        with open(self.log_path) as handle:
            return [json.loads(line) for line in handle]


shared = None


def setUpModule():
    global shared
    shared = ServerProcess("--token-ttl", "2")


def tearDownModule():
    with open(shared.log_path) as handle:
        log = handle.read()
    code = shared.stop()
    shared.dir.cleanup()
    assert code == 0, f"server exit status {code}"
    for secret in SECRETS:
        assert secret not in log, f"{secret} leaked into the request log"


def ids_of(records):
    return [record["id"] for record in records]


def parse_link_header(value):
    links = {}
    for part in value.split(","):
        url, _, params = part.strip().partition(";")
        rel = params.strip().removeprefix("rel=").strip('"')
        links[rel] = url.strip().strip("<>")
    return links


class DatasetTest(unittest.TestCase):
    def test_admin_records_match_the_formula(self):
        records = shared.get_json("/_admin/records")
        self.assertEqual(records, [expected_record(i) for i in range(1, 1001)])
        self.assertEqual(records[9]["amount"], 12.5)
        self.assertIn('"amount": 12.5,', shared.request("/_admin/records").body.decode())
        self.assertEqual(records[0]["updated_at"], "2024-01-01T00:01:00Z")

    def test_state(self):
        state = shared.get_json("/_admin/state")
        self.assertEqual(set(state), {"records", "tokens_issued", "requests"})
        self.assertEqual(state["records"], 1000)
        self.assertGreaterEqual(state["requests"], 1)

    def test_port_file_holds_only_the_port(self):
        with open(shared.port_file) as handle:
            self.assertRegex(handle.read(), r"^\d+$")


class PaginatorTest(unittest.TestCase):
    def walk_json_link(self, url, headers=None, max_pages=200):
        records, pages = [], 0
        while url is not None:
            body = shared.get_json(url, headers=headers)
            self.assertEqual(set(body), {"data", "links", "meta"})
            pages += 1
            self.assertEqual(body["meta"]["page"], pages)
            records += body["data"]
            url = body["links"]["next"]
            self.assertLess(pages, max_pages)
        return records, pages

    def test_json_link_full_walk(self):
        records, pages = self.walk_json_link(shared.url("/api/json_link/items"))
        self.assertEqual(records, [expected_record(i) for i in range(1, 1001)])
        self.assertEqual(pages, 20)

    def test_json_link_keeps_other_params_and_filters(self):
        url = shared.url("/api/json_link/items", per_page=7, since="2024-01-01T01:00:00Z",
                         until="2024-01-01T03:00:00Z", ids_mod="3,1")
        body = shared.get_json(url)
        next_url = urlsplit(body["links"]["next"])
        self.assertEqual(next_url.netloc, f"127.0.0.1:{shared.port}")
        self.assertEqual(parse_qs(next_url.query), {
            "per_page": ["7"], "since": ["2024-01-01T01:00:00Z"],
            "until": ["2024-01-01T03:00:00Z"], "ids_mod": ["3,1"], "page": ["2"]})
        records, _ = self.walk_json_link(url)
        self.assertEqual(ids_of(records), expected_ids(since_minute=60, until_minute=180,
                                                       ids_mod=(3, 1)))

    def test_json_link_edges(self):
        past = shared.get_json(shared.url("/api/json_link/items", page=99))
        self.assertEqual(past, {"data": [], "links": {"next": None}, "meta": {"page": 99}})
        self.assertEqual(shared.request(shared.url("/api/json_link/items", page=0)).status, 400)
        self.assertEqual(shared.request(shared.url("/api/json_link/items", per_page="x")).status,
                         400)
        empty = shared.get_json(shared.url("/api/json_link/items", since="2030-01-01"))
        self.assertEqual(empty["data"], [])
        self.assertIsNone(empty["links"]["next"])

    def test_header_link_full_walk(self):
        url, records, pages = shared.url("/api/header_link/items", per_page=64), [], 0
        while url:
            reply = shared.request(url)
            self.assertEqual(reply.status, 200)
            body = reply.json()
            self.assertIsInstance(body, list)
            records += body
            pages += 1
            links = parse_link_header(reply.headers["Link"])
            self.assertEqual(len(reply.headers.get_all("Link")), 1)
            self.assertIn("per_page=64", links["last"])
            self.assertTrue(links["last"].endswith("page=16"))
            self.assertTrue(links["first"].endswith("page=1"))
            self.assertEqual("prev" in links, pages > 1)
            url = links.get("next")
            if url:
                self.assertTrue(url.endswith(f"page={pages + 1}"))
        self.assertEqual(ids_of(records), expected_ids())
        self.assertEqual(pages, 16)

    def test_cursor_get_full_walk(self):
        records, cursor, pages = [], None, 0
        while True:
            query = {"per_page": 33} if cursor is None else {"per_page": 33, "cursor": cursor}
            body = shared.get_json(shared.url("/api/cursor/items", **query))
            self.assertEqual(set(body), {"items", "next_cursor"})
            records += body["items"]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
        self.assertEqual(ids_of(records), expected_ids())
        self.assertEqual(pages, 31)

    def test_cursor_post_full_walk_with_body_and_query_filters(self):
        url = shared.url("/api/cursor/items", ids_mod="2,0")
        records, body = [], {"per_page": 9,
                             "filter": {"since": "2024-01-01T02:00:00Z",
                                        "until": "2024-01-01T05:00:00+00:00"}}
        while True:
            page = shared.get_json(url, method="POST", body=body)
            records += page["items"]
            if page["next_cursor"] is None:
                break
            body = dict(body, cursor=page["next_cursor"])
        self.assertEqual(ids_of(records), expected_ids(since_minute=120, until_minute=300,
                                                       ids_mod=(2, 0)))
        # No body at all: first page, default page size.
        self.assertEqual(len(shared.get_json("/api/cursor/items", method="POST")["items"]), 50)

    def test_cursor_bad_input(self):
        self.assertEqual(shared.request(shared.url("/api/cursor/items", cursor="%%%")).status, 400)
        bad = base64.urlsafe_b64encode(b"nope").decode()
        self.assertEqual(shared.request(shared.url("/api/cursor/items", cursor=bad)).status, 400)
        for body in (b"{not json", b"[1, 2]"):
            reply = shared.request("/api/cursor/items", method="POST", body=body)
            self.assertEqual(reply.status, 400)
            self.assertIn("error", reply.json())
        reply = shared.request("/api/cursor/items", method="POST", body={"per_page": "ten"})
        self.assertEqual(reply.status, 400)

    def test_offset_full_walks(self):
        records, offset = [], 0
        while True:
            body = shared.get_json(shared.url("/api/offset/items", offset=offset, limit=120))
            self.assertEqual(set(body), {"total", "items"})
            self.assertEqual(body["total"], 1000)
            if not body["items"]:
                break
            records += body["items"]
            offset += 120
        self.assertEqual(ids_of(records), expected_ids())

        records, offset = [], 0
        while True:
            body = shared.get_json(shared.url("/api/offset/items", offset=offset, limit=75,
                                              shape="has_more"))
            self.assertEqual(set(body), {"has_more", "items"})
            records += body["items"]
            offset += 75
            if not body["has_more"]:
                break
        self.assertEqual(ids_of(records), expected_ids())
        filtered = shared.get_json(shared.url("/api/offset/items", until="2024-01-01T00:11:00"))
        self.assertEqual(filtered["total"], 10)
        self.assertEqual(shared.request(shared.url("/api/offset/items", shape="x")).status, 400)
        self.assertEqual(shared.request(shared.url("/api/offset/items", offset=-1)).status, 400)

    def test_page_number_full_walks(self):
        records, page = [], 1
        while True:
            body = shared.get_json(shared.url("/api/page_number/items", page=page,
                                              page_size=300))
            self.assertEqual(body["total_pages"], 4)
            records += body["items"]
            if page >= body["total_pages"]:
                break
            page += 1
        self.assertEqual(ids_of(records), expected_ids())

        records, page = [], 1
        while True:
            body = shared.get_json(shared.url("/api/page_number/items", page=page,
                                              shape="empty_end"))
            self.assertEqual(set(body), {"items"})
            if not body["items"]:
                break
            records += body["items"]
            page += 1
        self.assertEqual(ids_of(records), expected_ids())
        self.assertEqual(page, 21)
        self.assertEqual(shared.get_json(shared.url("/api/page_number/items", page=0)),
                         {"total_pages": 20, "items": []})
        self.assertEqual(shared.get_json(shared.url("/api/page_number/items", page=0,
                                                    shape="empty_end")), {"items": []})

    def test_single(self):
        self.assertEqual(ids_of(shared.get_json("/api/single/items")), expected_ids())
        self.assertEqual(ids_of(shared.get_json(shared.url("/api/single/items", ids_mod="100,7"))),
                         expected_ids(ids_mod=(100, 7)))


class FilterTest(unittest.TestCase):
    def ids(self, **query):
        return ids_of(shared.get_json(shared.url("/api/single/items", **query)))

    def test_timestamp_forms(self):
        self.assertEqual(self.ids(since="2024-01-01T16:30:00Z"), expected_ids(since_minute=990))
        self.assertEqual(self.ids(since="2024-01-01T16:30:00"), expected_ids(since_minute=990))
        self.assertEqual(self.ids(since="2024-01-01T18:30:00+02:00"),
                         expected_ids(since_minute=990))
        self.assertEqual(self.ids(since="2024-01-01T16:29:59.5Z"),
                         expected_ids(since_minute=990))
        self.assertEqual(self.ids(since="2024-01-01T16:30:00.000001+00:00"),
                         expected_ids(since_minute=991))
        self.assertEqual(self.ids(until="2024-01-01"), [])
        self.assertEqual(self.ids(until="2024-01-01T00:03:00Z"), [1, 2])
        # An unencoded "+00:00" arrives as a space.
        url = shared.base + "/api/single/items?until=2024-01-01T00:03:00+00:00"
        self.assertEqual(ids_of(shared.get_json(url)), [1, 2])

    def test_bad_filters(self):
        for query in ({"since": "yesterday"}, {"until": "2024-13-01"}, {"ids_mod": "3"},
                      {"ids_mod": "0,0"}, {"ids_mod": "3,3"}, {"ids_mod": "a,b"}):
            for path in ("/api/single/items", "/api/json_link/items", "/faults/429/items",
                         "/api/repos/repo-a/issues"):
                reply = shared.request(shared.url(path, **query))
                self.assertEqual(reply.status, 400, (path, query))
                self.assertIn("error", reply.json())


class AuthTest(unittest.TestCase):
    def walk(self, path, headers=None, **query):
        url, records = shared.url(path, per_page=200, **query), []
        while url:
            body = shared.get_json(url, headers=headers)
            records += body["data"]
            url = body["links"]["next"]
        self.assertEqual(ids_of(records), expected_ids())

    def assert_denied(self, path, headers=None, message="unauthorized", **query):
        reply = shared.request(shared.url(path, **query), headers=headers)
        self.assertEqual(reply.status, 401, (path, headers, query))
        self.assertEqual(reply.json(), {"error": message})
        self.assertTrue(reply.headers["WWW-Authenticate"])
        return reply

    def test_bearer(self):
        path = "/auth/bearer/items"
        self.walk(path, headers={"Authorization": "Bearer s3cr3t-bearer-token"})
        self.assert_denied(path)
        self.assert_denied(path, headers={"Authorization": "Bearer wrong"})
        self.assert_denied(path, headers={"Authorization": "s3cr3t-bearer-token"})

    def test_basic(self):
        path = "/auth/basic/items"
        self.walk(path, headers={"Authorization": basic("inlet-user", "s3cr3t-basic-pass")})
        self.assert_denied(path)
        self.assert_denied(path, headers={"Authorization": basic("inlet-user", "nope")})
        self.assert_denied(path, headers={"Authorization": "Basic !!!"})

    def test_api_key_header(self):
        path = "/auth/api_key_header/items"
        self.walk(path, headers={"X-API-Key": "s3cr3t-api-key"})
        self.assert_denied(path)
        self.assert_denied(path, headers={"X-API-Key": "nope"})
        self.assert_denied(path, api_key="s3cr3t-api-key")

    def test_api_key_query(self):
        path = "/auth/api_key_query/items"
        self.walk(path, api_key="s3cr3t-api-key")
        body = shared.get_json(shared.url(path, api_key="s3cr3t-api-key"))
        self.assertIn("api_key=s3cr3t-api-key", body["links"]["next"])
        self.assert_denied(path)
        self.assert_denied(path, api_key="nope")
        self.assert_denied(path, headers={"X-API-Key": "s3cr3t-api-key"})
        repos = shared.get_json(shared.url("/auth/api_key_query/repos", api_key="s3cr3t-api-key",
                                           per_page="2"))
        self.assertEqual([r["name"] for r in repos["data"]], ["repo-a", "repo-b"])
        self.assertIn("api_key=s3cr3t-api-key", repos["links"]["next"])
        self.assert_denied("/auth/api_key_query/repos")

    def token(self, **form):
        fields = {"grant_type": "client_credentials", "client_id": "inlet-client",
                  "client_secret": "s3cr3t-client-secret"}
        fields.update(form)
        fields = {k: v for k, v in fields.items() if v is not None}
        return shared.request("/oauth/token", method="POST", body=urlencode(fields).encode(),
                              headers={"Content-Type": "application/x-www-form-urlencoded"})

    def test_oauth(self):
        path = "/auth/oauth/items"
        issued_before = shared.get_json("/_admin/state")["tokens_issued"]
        reply = self.token(scope="read")
        self.assertEqual(reply.status, 200)
        grant = reply.json()
        self.assertEqual(set(grant), {"access_token", "token_type", "expires_in", "scope"})
        self.assertEqual((grant["token_type"], grant["expires_in"]), ("bearer", 2))
        auth = {"Authorization": "Bearer " + grant["access_token"]}
        self.assertEqual(shared.request(path, headers=auth).status, 200)

        # Client credentials as HTTP Basic instead of in the form.
        reply = shared.request(
            "/oauth/token", method="POST", body=b"grant_type=client_credentials",
            headers={"Authorization": basic("inlet-client", "s3cr3t-client-secret"),
                     "Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(reply.status, 200)
        self.assertNotIn("scope", reply.json())
        other = {"Authorization": "Bearer " + reply.json()["access_token"]}
        self.assertNotEqual(other, auth)

        self.assertEqual(self.token(client_secret="nope").status, 401)
        self.assertEqual(self.token(client_id=None, client_secret=None).status, 401)
        self.assertEqual(self.token(client_id="someone").status, 401)
        reply = self.token(grant_type="password")
        self.assertEqual((reply.status, reply.json()), (400, {"error": "unsupported_grant_type"}))
        self.assertEqual(shared.request("/oauth/token").status, 405)

        self.assert_denied(path)
        self.assert_denied(path, headers={"Authorization": "Bearer made-up"})
        time.sleep(2.1)
        reply = self.assert_denied(path, headers=auth, message="token expired")
        self.assertIn("invalid_token", reply.headers["WWW-Authenticate"])

        fresh = {"Authorization": "Bearer " + self.token().json()["access_token"]}
        self.assertEqual(shared.request(path, headers=fresh).status, 200)
        self.assertEqual(shared.get_json("/_admin/revoke_tokens"), {"revoked": 3})
        self.assert_denied(path, headers=fresh)
        fresh = {"Authorization": "Bearer " + self.token().json()["access_token"]}
        self.walk(path, headers=fresh)
        state = shared.get_json("/_admin/state")
        self.assertEqual(state["tokens_issued"] - issued_before, 4)


class ParentChildTest(unittest.TestCase):
    def walk(self, url):
        records = []
        while url:
            body = shared.get_json(url)
            records += body["data"]
            url = body["links"]["next"]
        return records

    def test_repos_and_issues(self):
        repos = self.walk(shared.url("/api/repos", per_page=3))
        self.assertEqual(repos, [{"id": k, "name": name, "owner": {"login": "org"}}
                                 for k, name in enumerate(
                                     ["repo-a", "repo-b", "repo-c", "repo-d"], start=1)])
        for repo in repos:
            k = repo["id"]
            issues = self.walk(shared.url(f"/api/repos/{repo['name']}/issues", per_page=4))
            self.assertEqual(ids_of(issues), list(range(k * 1000 + 1, k * 1000 + 5 * k + 1)))
            for issue in issues:
                self.assertEqual(set(issue), {"id", "repo", "title", "updated_at"})
                self.assertEqual(issue["repo"], repo["name"])
                minute = BASE_TIME + timedelta(minutes=issue["id"])
                self.assertEqual(issue["updated_at"], minute.strftime("%Y-%m-%dT%H:%M:%SZ"))
        since = (BASE_TIME + timedelta(minutes=4015)).strftime("%Y-%m-%dT%H:%M:%SZ")
        issues = self.walk(shared.url("/api/repos/repo-d/issues", since=since))
        self.assertEqual(ids_of(issues), list(range(4015, 4021)))
        reply = shared.request("/api/repos/repo-z/issues")
        self.assertEqual((reply.status, reply.json()), (404, {"error": "unknown repo"}))


class FaultTest(unittest.TestCase):
    def setUp(self):
        shared.get_json("/_admin/reset", method="POST")

    def test_429_seconds(self):
        url = shared.url("/faults/429/items", times=2, retry_after=3, per_page=10)
        for _ in range(2):
            reply = shared.request(url)
            self.assertEqual((reply.status, reply.headers["Retry-After"]), (429, "3"))
            self.assertEqual(reply.json(), {"error": "rate limited"})
        body = shared.get_json(url)
        self.assertEqual(ids_of(body["data"]), list(range(1, 11)))
        # Each page has its own counter; the next link is a different page.
        self.assertEqual(shared.request(body["links"]["next"]).status, 429)
        # Default: once, Retry-After 1.
        reply = shared.request(shared.url("/faults/429/items"))
        self.assertEqual((reply.status, reply.headers["Retry-After"]), (429, "1"))
        self.assertEqual(shared.request(shared.url("/faults/429/items")).status, 200)

    def test_429_http_date(self):
        reply = shared.request(shared.url("/faults/429/items", retry_after="date"))
        self.assertEqual(reply.status, 429)
        when = email.utils.parsedate_to_datetime(reply.headers["Retry-After"])
        ahead = when.timestamp() - time.time()
        self.assertTrue(1.0 <= ahead <= 3.1, ahead)

    def test_500_family(self):
        url = shared.url("/faults/500/items", times=4)
        self.assertEqual([shared.request(url).status for _ in range(5)], [500, 502, 503, 500, 200])
        url = shared.url("/faults/500/items", times=2, status=408)
        self.assertEqual([shared.request(url).status for _ in range(3)], [408, 408, 200])
        self.assertEqual(shared.request(shared.url("/faults/500/items", status=200)).status, 400)

    def test_hang(self):
        url = shared.url("/faults/hang/items", hang_secs=3, times=1)
        with self.assertRaises((socket.timeout, TimeoutError, urllib.error.URLError)):
            shared.request(url, timeout=0.3)
        started = time.time()
        self.assertEqual(len(shared.get_json(url)["data"]), 50)     # the second one: at once
        self.assertLess(time.time() - started, 2)

    def test_reset(self):
        url = "/faults/reset/items?times=2&page=3"
        for _ in range(2):
            conn = http.client.HTTPConnection("127.0.0.1", shared.port, timeout=5)
            with self.assertRaises((http.client.RemoteDisconnected, ConnectionResetError)):
                conn.request("GET", url)
                conn.getresponse()
            conn.close()
        body = shared.get_json(url)
        self.assertEqual(ids_of(body["data"]), list(range(101, 151)))

    def test_repeat(self):
        first = shared.get_json(shared.url("/faults/repeat/items"))
        self.assertTrue(first["links"]["next"].endswith("page=2"))
        second = shared.get_json(first["links"]["next"])
        self.assertEqual(second["links"]["next"], first["links"]["next"])
        third = shared.get_json(second["links"]["next"])
        self.assertEqual(third, second)

    def raw_get(self, path):
        """(status, content type, Content-Length, body) with http.client, body read raw."""
        conn = http.client.HTTPConnection("127.0.0.1", shared.port, timeout=5)
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        conn.close()
        return (response.status, response.getheader("Content-Type"),
                int(response.getheader("Content-Length")), body)

    def test_repeat_back_to(self):
        body = shared.get_json(shared.url("/faults/repeat/items", page="3", loop_at="3", back_to="1"))
        self.assertIn("page=1&", body["links"]["next"])
        body = shared.get_json(shared.url("/faults/repeat/items", page="2"))
        self.assertTrue(body["links"]["next"].endswith("page=2"))

    def test_cursor_omit_empty(self):
        body = shared.get_json(shared.url("/api/cursor/items", omit_empty="1", since="2100-01-01T00:00:00Z"))
        self.assertEqual(body, {})
        body = shared.get_json(shared.url("/api/cursor/items", omit_empty="1", per_page="1000000"))
        self.assertNotIn("next_cursor", body)
        self.assertTrue(body["items"])

    def test_malformed_json_link(self):
        base = "/faults/malformed/items?per_page=10&bad_page=3"
        status, _, _, body = self.raw_get(base + "&page=2")
        self.assertEqual(status, 200)
        self.assertTrue(json.loads(body)["links"]["next"].endswith("page=3"))

        status, ctype, _, body = self.raw_get(base + "&page=3")
        self.assertEqual((status, ctype, body),
                         (200, "application/json", b'{"data": [ {"id": 1,, }'))

        status, _, _, body = self.raw_get(base + "&page=3&kind=shape")
        self.assertIsInstance(json.loads(body)["data"], dict)

        status, _, _, body = self.raw_get(base + "&page=3&kind=error")
        self.assertEqual((status, json.loads(body)), (200, {"message": "temporarily unavailable"}))

        status, ctype, _, body = self.raw_get(base + "&page=3&kind=html")
        self.assertEqual((status, ctype), (200, "text/html; charset=utf-8"))
        self.assertTrue(body.startswith(b"<!DOCTYPE html>"))

        status, _, length, body = self.raw_get(base + "&page=3&kind=truncated")
        self.assertEqual(length, len(body))
        self.assertTrue(body.startswith(b'{"data": [{"id": 21,'))
        with self.assertRaises(ValueError):
            json.loads(body)

        conn = http.client.HTTPConnection("127.0.0.1", shared.port, timeout=5)
        conn.request("GET", base + "&page=3&kind=short")
        response = conn.getresponse()
        with self.assertRaises((http.client.IncompleteRead, ConnectionResetError)):
            response.read()
        conn.close()

        self.assertEqual(shared.request(base + "&page=3&kind=bogus").status, 400)
        # With times, only the first t requests of the page are broken.
        url = base + "&page=3&kind=syntax&times=1"
        self.assertEqual(self.raw_get(url)[3], b'{"data": [ {"id": 1,, }')
        self.assertEqual(ids_of(json.loads(self.raw_get(url)[3])["data"]), list(range(21, 31)))

    def test_malformed_offset(self):
        base = "/faults/malformed_offset/items?limit=10&bad_page=2"
        body = json.loads(self.raw_get(base + "&offset=0")[3])
        self.assertEqual((body["total"], ids_of(body["items"])), (1000, list(range(1, 11))))
        self.assertEqual(self.raw_get(base + "&offset=10")[3], b'{"data": [ {"id": 1,, }')
        shape = json.loads(self.raw_get(base + "&offset=10&kind=shape")[3])
        self.assertEqual(shape["total"], 1000)
        self.assertIsInstance(shape["items"], dict)
        self.assertEqual(self.raw_get(base + "&offset=10&kind=html")[1], "text/html; charset=utf-8")
        _, _, length, body = self.raw_get(base + "&offset=10&kind=truncated&shape=has_more")
        self.assertEqual(length, len(body))
        self.assertTrue(body.startswith(b'{"has_more": true, "items": [{"id": 11,'))
        self.assertEqual(json.loads(self.raw_get(base + "&offset=20")[3])["items"][0]["id"], 21)

    def test_malformed_cursor(self):
        base = "/faults/malformed_cursor/items?per_page=10&bad_page=2&kind=error&times=1"
        first = json.loads(self.raw_get(base)[3])
        self.assertEqual(ids_of(first["items"]), list(range(1, 11)))
        second = base + "&cursor=" + first["next_cursor"]
        self.assertEqual(json.loads(self.raw_get(second)[3]), {"message": "temporarily unavailable"})
        self.assertEqual(ids_of(json.loads(self.raw_get(second)[3])["items"]), list(range(11, 21)))

    def test_redirect_and_elsewhere(self):
        status, _, _, body = self.raw_get("/faults/redirect/items?code=307&to=http%3A%2F%2Fh%2Fx")
        self.assertEqual((status, body), (307, b""))
        self.assertEqual(shared.request("/faults/redirect/items?code=200&to=x").status, 400)
        body = json.loads(self.raw_get("/faults/elsewhere/items?per_page=10&elsewhere=http%3A%2F%2Fh%2Fitems")[3])
        self.assertEqual(body["links"]["next"], "http://h/items?page=2&per_page=10")
        self.assertEqual(ids_of(body["data"]), list(range(1, 11)))

    def test_badrecords(self):
        url, records = shared.url("/faults/badrecords/items", per_page=100), []
        while url:
            body = shared.get_json(url)
            records += body["data"]
            url = body["links"]["next"]
        self.assertEqual(len(records), 1000)
        strings = [r for r in records if isinstance(r, str)]
        objects = [r for r in records if isinstance(r, dict)]
        bad_id = [r for r in objects if r["id"] == "not-a-number"]
        bad_ts = [r for r in objects if r["updated_at"] == "yesterday"]
        both = [r for r in bad_id if r["updated_at"] == "yesterday"]
        good = [r for r in objects if r not in bad_id and r not in bad_ts]
        self.assertEqual((len(strings), len(bad_id), len(bad_ts), len(both), len(good)),
                         (25, 75, 35, 15, 880))
        self.assertEqual(strings[0], "garbage-40")
        self.assertEqual(good, [expected_record(i) for i in range(1, 1001)
                                if i % 10 and i % 25])
        self.assertEqual(bad_id[0]["name"], "item-10")

    def test_reset_clears_counters(self):
        url = shared.url("/faults/500/items", page=5)
        self.assertEqual(shared.request(url).status, 500)
        self.assertEqual(shared.request(url).status, 200)
        shared.get_json("/_admin/reset", method="POST")
        self.assertEqual(shared.request(url).status, 500)


class ProtocolTest(unittest.TestCase):
    def test_keep_alive_and_content_length(self):
        conn = http.client.HTTPConnection("127.0.0.1", shared.port, timeout=5)
        conn.connect()
        sock = conn.sock
        for page in (1, 2, 3):
            conn.request("GET", f"/api/json_link/items?page={page}")
            response = conn.getresponse()
            body = response.read()
            self.assertEqual(response.version, 11)
            self.assertEqual(int(response.getheader("Content-Length")), len(body))
            self.assertEqual(json.loads(body)["meta"]["page"], page)
        conn.request("POST", "/api/cursor/items", body=json.dumps({"per_page": 2}),
                     headers={"Content-Type": "application/json"})
        self.assertEqual(len(json.loads(conn.getresponse().read())["items"]), 2)
        conn.request("GET", "/nope")
        response = conn.getresponse()
        self.assertEqual((response.status, json.loads(response.read())),
                         (404, {"error": "not found"}))
        self.assertIs(conn.sock, sock)  # still the one connection
        conn.close()

    def test_chunked_request_body(self):
        conn = http.client.HTTPConnection("127.0.0.1", shared.port, timeout=5)
        conn.request("POST", "/api/cursor/items", body=iter([b'{"per_page"', b": 3}"]),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        self.assertEqual(len(json.loads(conn.getresponse().read())["items"]), 3)
        conn.close()

    def test_unknown_paths_and_methods(self):
        for path in ("/", "/api", "/api/json_link/items/", "/api/nope/items", "/auth/x/items"):
            reply = shared.request(path)
            self.assertEqual((reply.status, reply.json()), (404, {"error": "not found"}), path)
        reply = shared.request("/api/single/items", method="DELETE")
        self.assertEqual((reply.status, reply.headers["Allow"]), (405, "GET"))
        self.assertEqual(shared.request("/_admin/reset").status, 405)

    def raw(self, data):
        with socket.create_connection(("127.0.0.1", shared.port), timeout=5) as sock:
            sock.sendall(data)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)

    def test_garbage_never_kills_the_server(self):
        for line in (b"garbage", b"GET / HTTP/1.1 junk", b"GET /\x00 HTTP/1.1 x y"):
            reply = self.raw(line + b"\r\n\r\n")
            self.assertTrue(reply.startswith(b"HTTP/1.1 400"), reply)
            self.assertIn(b'{"error": "Bad request', reply)
        self.assertTrue(self.raw(b"GET / HTTP/9.9\r\n\r\n").startswith(b"HTTP/1.1 505"))
        reply = self.raw(b"POST /api/cursor/items HTTP/1.1\r\nContent-Length: x\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 400"))
        self.assertTrue(reply.endswith(b'{"error": "bad Content-Length"}'))
        reply = self.raw(b"GET /api/single/items?ids_mod=%ff%fe HTTP/1.1\r\nConnection: close"
                         b"\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 400"))
        self.assertEqual(shared.request("/_admin/records", method="POST", body=b"[").status, 400)
        self.assertEqual(shared.request("/_admin/records", method="POST",
                                        body={"add": -1}).status, 400)
        self.assertEqual(shared.request("/_admin/records", method="POST",
                                        body={"touch": [999999]}).status, 400)
        self.assertEqual(shared.request(shared.url("/faults/hang/items", hang_secs="x")).status,
                         400)
        self.assertEqual(len(shared.get_json("/_admin/records")), 1000)

    def test_concurrent_walks(self):
        results, errors = [], []

        def walk():
            try:
                url, ids = shared.url("/api/json_link/items", per_page=100), []
                while url:
                    body = shared.get_json(url)
                    ids += ids_of(body["data"])
                    url = body["links"]["next"]
                results.append(ids)
            except Exception as error:  # reported below
                errors.append(error)

        threads = [threading.Thread(target=walk) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(errors, [])
        self.assertEqual(results, [expected_ids()] * 8)


class AdminRecordsTest(unittest.TestCase):
    def setUp(self):
        self.server = ServerProcess("--records", "20", "--page-size", "7")
        self.addCleanup(self.server.cleanup)

    def test_add_touch_and_reset(self):
        server = self.server
        self.assertEqual(len(server.get_json("/api/json_link/items")["data"]), 7)
        reply = server.get_json("/_admin/records", method="POST", body={"add": 3})
        self.assertEqual(reply, {"added": [21, 22, 23], "records": 23})
        records = server.get_json("/_admin/records")
        self.assertEqual(records, [expected_record(i) for i in range(1, 24)])

        before = datetime.now(timezone.utc).replace(microsecond=0)
        reply = server.get_json("/_admin/records", method="POST",
                                body={"touch": [5, 2], "minutes": 10,
                                      "set": {"name": "renamed"}})
        self.assertEqual(reply, {"touched": [5, 2], "records": 23})
        records = server.get_json("/_admin/records")
        self.assertEqual(ids_of(records)[-2:], [2, 5])
        touched = records[-1]
        self.assertEqual(touched["name"], "renamed")
        when = datetime.strptime(touched["updated_at"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=timezone.utc)
        self.assertTrue(before + timedelta(minutes=10) <= when
                        <= before + timedelta(minutes=10, seconds=5))

        # An incremental read from the old high-water mark sees only what changed.
        changed = server.get_json(server.url("/api/single/items", since=touched["updated_at"]))
        self.assertEqual(ids_of(changed), [2, 5])
        server.get_json("/_admin/records", method="POST", body={"add": 1})
        after = server.get_json(server.url("/api/single/items", since=touched["updated_at"]))
        self.assertEqual(ids_of(after), [2, 5, 24])
        self.assertEqual(after[-1]["updated_at"],
                         (when + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))

        self.assertEqual(server.get_json("/_admin/state")["records"], 24)
        server.get_json("/_admin/reset", method="POST")
        self.assertEqual(server.get_json("/_admin/state"),
                         {"records": 24, "tokens_issued": 0, "requests": 2})
        server.get_json("/_admin/reset", method="POST", body={"dataset": True})
        self.assertEqual(server.get_json("/_admin/records"),
                         [expected_record(i) for i in range(1, 21)])


class LogTest(unittest.TestCase):
    def setUp(self):
        self.server = ServerProcess("--records", "30")
        self.addCleanup(self.server.cleanup)

    def test_log_lines(self):
        server = self.server
        started = time.time()
        server.request(server.url("/api/json_link/items", per_page=5, since="2024-01-01"))
        server.request("/auth/bearer/items",
                       headers={"Authorization": "Bearer s3cr3t-bearer-token"})
        server.request("/auth/basic/items",
                       headers={"Authorization": basic("inlet-user", "s3cr3t-basic-pass")})
        server.request("/auth/api_key_header/items", headers={"X-API-Key": "s3cr3t-api-key"})
        server.request(server.url("/auth/api_key_query/items", api_key="s3cr3t-api-key"))
        server.request("/auth/bearer/items", headers={"Authorization": "s3cr3t-bearer-token"})
        token = server.request(
            "/oauth/token", method="POST",
            body=b"grant_type=client_credentials&client_id=inlet-client"
                 b"&client_secret=s3cr3t-client-secret",
            headers={"Content-Type": "application/x-www-form-urlencoded"}).json()["access_token"]
        server.request("/oauth/token", method="POST",
                       body={"grant_type": "client_credentials", "client_id": "inlet-client",
                             "client_secret": "s3cr3t-client-secret"})
        server.request("/auth/oauth/items", headers={"Authorization": f"Bearer {token}"})
        server.request("/api/cursor/items?note=s3cr3t-api-key", method="POST",
                       body={"per_page": 2, "filter": {"since": "2024-01-01"}})
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        try:
            conn.request("GET", "/faults/reset/items")
            conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            pass
        conn.close()
        server.request("/missing")
        server.stop()

        with open(server.log_path) as handle:
            text = handle.read()
        for secret in SECRETS + (token,):
            self.assertNotIn(secret, text)
        entries = server.log_entries()
        self.assertEqual(len(entries), 12)
        for entry in entries:
            self.assertEqual(set(entry), LOG_KEYS)
            self.assertIsInstance(entry["t"], float)
            self.assertTrue(started - 1 <= entry["t"] <= time.time())
            self.assertIsInstance(entry["status"], int)
            self.assertIsInstance(entry["query"], dict)
        ts = [entry["t"] for entry in entries]
        self.assertEqual(ts, sorted(ts))
        summary = [(e["method"], e["path"], e["auth"], e["status"]) for e in entries]
        self.assertEqual(summary, [
            ("GET", "/api/json_link/items", None, 200),
            ("GET", "/auth/bearer/items", "bearer", 200),
            ("GET", "/auth/basic/items", "basic", 200),
            ("GET", "/auth/api_key_header/items", "api_key", 200),
            ("GET", "/auth/api_key_query/items", "api_key", 200),
            ("GET", "/auth/bearer/items", "other", 401),
            ("POST", "/oauth/token", None, 200),
            ("POST", "/oauth/token", None, 200),
            ("GET", "/auth/oauth/items", "bearer", 200),
            ("POST", "/api/cursor/items", None, 200),
            ("GET", "/faults/reset/items", None, 0),
            ("GET", "/missing", None, 404),
        ])
        self.assertEqual(entries[0]["query"], {"per_page": "5", "since": "2024-01-01"})
        self.assertIsNone(entries[0]["body"])
        self.assertEqual(entries[4]["query"], {"api_key": "<redacted>"})
        self.assertIsNone(entries[6]["body"])     # a form body is not JSON
        self.assertEqual(entries[7]["body"], {"grant_type": "client_credentials",
                                              "client_id": "inlet-client",
                                              "client_secret": "<redacted>"})
        self.assertEqual(entries[9]["query"], {"note": "<redacted>"})
        self.assertEqual(entries[9]["body"], {"per_page": 2, "filter": {"since": "2024-01-01"}})


class LifecycleTest(unittest.TestCase):
    def test_sigterm_and_sigint_exit_cleanly(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            server = ServerProcess("--records", "5")
            try:
                self.assertEqual(len(server.get_json("/api/single/items")), 5)
                self.assertEqual(server.stop(sig), 0)
                self.assertFalse(os.path.exists(server.port_file))
            finally:
                server.cleanup()

    def test_exits_when_its_parent_dies(self):
        with tempfile.TemporaryDirectory() as scratch:
            port_file = os.path.join(scratch, "port")
            # An intermediate python starts the server, waits until it listens, and exits.
            launcher = subprocess.run(
                [sys.executable, "-c",
                 "import os, subprocess, sys, time\n"
                 "p = subprocess.Popen(sys.argv[2:])\n"
                 "while not os.path.exists(sys.argv[1]): time.sleep(0.02)\n"
                 "print(p.pid)",
                 port_file, sys.executable, SERVER, "--port-file", port_file, "--log",
                 os.path.join(scratch, "log")],
                capture_output=True, text=True, check=True, timeout=15)
            pid = int(launcher.stdout)
            deadline = time.time() + 10
            while time.time() < deadline and process_alive(pid):
                time.sleep(0.1)
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
                self.fail("the orphaned server kept running")
            self.assertFalse(os.path.exists(port_file))    # it shut down cleanly


def process_alive(pid):
    """True while pid runs (a zombie nobody reaped yet counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


if __name__ == "__main__":
    unittest.main()
