#!/usr/bin/env python3
"""One measured run of dlt_rest.py against stub_server.py (standard library only).

    python3 benches/rest/run_dlt.py [--records 100000] [--venv .venv-bench] [--max-table-nesting 0]

The stub is a separate process whose CPU is not counted. dlt_rest.py runs as a
child; its CPU (user+sys) comes from wait4(), so it covers the normalize worker
processes dlt forks too. Peak RSS is given two ways: the largest single process
(ru_maxrss, what /usr/bin/time -v reports) and the largest sum over the whole
process tree, sampled from /proc every 50 ms (differs only with NORMALIZE__WORKERS>1).
dlt settings pass through the environment, e.g. NORMALIZE__WORKERS=2.
Prints one JSON line.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

here = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument("--records", type=int, default=100_000)
ap.add_argument("--venv", default=os.path.join(here, "..", "..", ".venv-bench"))
args, passthrough = ap.parse_known_args()  # the rest goes to dlt_rest.py, e.g. --max-table-nesting 0


def tree_rss_kib(root):
    """Sum of VmRSS over root and all its descendants."""
    children, rss = {}, {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/status") as f:
                st = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        children.setdefault(int(st["PPid"]), []).append(int(p))
        rss[int(p)] = int(st.get("VmRSS", "0 kB").split()[0])
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total


with tempfile.TemporaryDirectory(prefix="dlt-rest-bench.") as tmp:
    stub = subprocess.Popen(
        [sys.executable, os.path.join(here, "stub_server.py"), "--records", str(args.records)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = stub.stdout.readline()  # "listening http://127.0.0.1:PORT" once all pages are rendered
        if not line.startswith("listening"):
            sys.exit(f"stub failed to start: {line!r}")
        base = line.split()[1]
        cmd = [os.path.join(args.venv, "bin", "python"), os.path.join(here, "dlt_rest.py"),
               "--base-url", base, "--out", os.path.join(tmp, "out"), "--work", os.path.join(tmp, "work"), *passthrough]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        peak = [0]

        def sample():
            while proc.returncode is None:
                peak[0] = max(peak[0], tree_rss_kib(proc.pid))
                time.sleep(0.05)

        threading.Thread(target=sample, daemon=True).start()
        out = proc.stdout.read()
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
    finally:
        stub.terminate()
        stub.wait()
    if proc.returncode != 0:
        sys.exit(f"dlt_rest.py failed ({proc.returncode}): {out}")
    res = json.loads(out.strip().splitlines()[-1])
    res.update(
        records=args.records,
        records_per_s=round(res["rows"] / res["elapsed_s"]),
        process_wall_s=round(wall, 2),  # includes interpreter start, imports, read-back
        cpu_s=round(ru.ru_utime + ru.ru_stime, 2),
        user_s=round(ru.ru_utime, 2),
        sys_s=round(ru.ru_stime, 2),
        peak_rss_mib=round(ru.ru_maxrss / 1024, 1),
        peak_tree_rss_mib=round(peak[0] / 1024, 1),
        env={k: v for k, v in os.environ.items() if "__" in k and k.split("__")[0] in
             ("NORMALIZE", "EXTRACT", "LOAD", "DATA_WRITER", "SOURCES")},
    )
    print(json.dumps(res))
