"""Self-test of receiver.py (standard library only).

    python3 -m unittest tests/servers/test_receiver.py      (from the repository root)

Starts the receiver as a subprocess (a fresh one per test, as each counts its own POSTs) and
checks what it records and answers.
"""

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import unittest
import urllib.error
import urllib.request

RECEIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "receiver.py")


class Receiver:
    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, RECEIVER, "--port", "0", *args],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"receiver.py did not print its port: {line!r}")
        self.port = int(line)
        self.base = f"http://127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc.stdout.close()
        return code

    def request(self, path, method="GET", body=None, headers=None):
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    def received(self):
        status, headers, body = self.request("/received")
        assert status == 200 and headers["Content-Type"] == "application/json", (status, body)
        return json.loads(body)


class ReceiverTest(unittest.TestCase):
    def start(self, *args):
        receiver = Receiver(*args)
        self.addCleanup(lambda: self.assertEqual(receiver.stop(), 0))
        return receiver

    def test_records_json_and_text_posts(self):
        receiver = self.start()
        before = time.time()
        status, _, body = receiver.request("/lineage?x=1", "POST", {"eventType": "START"},
                                           {"Content-Type": "application/json", "X-Inlet-Sig": "abc"})
        self.assertEqual((status, json.loads(body)), (200, {"ok": True}))
        status, _, _ = receiver.request("/alerts", "POST", b"not json {", {"Content-Type": "text/plain"})
        self.assertEqual(status, 200)
        records = receiver.received()
        self.assertEqual(len(records), 2)
        first, second = records
        self.assertEqual(set(first), {"path", "headers", "body", "received_at", "answered"})
        self.assertEqual(first["path"], "/lineage?x=1")
        self.assertEqual(first["body"], {"eventType": "START"})
        self.assertEqual(first["headers"]["content-type"], "application/json")
        self.assertEqual(first["headers"]["x-inlet-sig"], "abc")
        self.assertTrue(all(name == name.lower() for name in first["headers"]))
        self.assertEqual(first["answered"], 200)
        self.assertGreaterEqual(first["received_at"], before - 1)
        self.assertLessEqual(first["received_at"], second["received_at"])
        self.assertEqual((second["path"], second["body"]), ("/alerts", "not json {"))

    def test_fail_first_then_ok(self):
        receiver = self.start("--fail-first", "2", "--status", "503")
        statuses = [receiver.request("/hook", "POST", {"n": n})[0] for n in range(4)]
        self.assertEqual(statuses, [503, 503, 200, 200])
        records = receiver.received()
        self.assertEqual([r["answered"] for r in records], [503, 503, 200, 200])
        self.assertEqual([r["body"]["n"] for r in records], [0, 1, 2, 3])

    def test_fail_first_defaults_to_500(self):
        receiver = self.start("--fail-first", "1")
        self.assertEqual([receiver.request("/", "POST", {})[0] for _ in range(2)], [500, 200])

    def test_chunked_body(self):
        receiver = self.start()
        conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=10)
        conn.request("POST", "/chunked", body=iter([b'{"a": ', b"[1, 2]}"]),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        self.assertEqual(conn.getresponse().status, 200)
        conn.close()
        self.assertEqual(receiver.received()[0]["body"], {"a": [1, 2]})

    def test_health_clear_and_unknown(self):
        receiver = self.start()
        status, _, body = receiver.request("/health")
        self.assertEqual((status, body), (200, b"ok"))
        self.assertEqual(receiver.request("/nope")[0], 404)
        receiver.request("/x", "POST", {"a": 1})
        self.assertEqual(len(receiver.received()), 1)
        self.assertEqual(receiver.request("/received", "DELETE")[0], 204)
        self.assertEqual(receiver.received(), [])
        # GETs are not recorded.
        self.assertEqual(receiver.received(), [])

    def test_concurrent_posts(self):
        import threading
        receiver = self.start()
        threads = [threading.Thread(target=receiver.request, args=("/c", "POST", {"i": i}))
                   for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(sorted(r["body"]["i"] for r in receiver.received()), list(range(20)))


if __name__ == "__main__":
    unittest.main()
