#!/usr/bin/env python3
"""Writes a seeded json-server database: one collection, `tickets`, of N records.

Each record:
  {"id": i, "subject": "...", "priority": "low|normal|high",
   "updated_at": "2024-01-01T00:00:00Z" (UTC, strictly increasing with id),
   "requester": {"name": "...", "email": "..."}, "tags": [...]}

The output depends only on --records and --seed, so tests can compute what they expect
with expected() instead of reading the file back. The default record count is odd so that
with any even page size the last page is partial.

Usage: make_db.py [--records N] [--seed S] [--out db.json]   (--out - writes to stdout)
"""

import argparse
import datetime as dt
import json
import random
import sys

START = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
PRIORITIES = ("low", "normal", "high")
WORDS = ("printer", "login", "invoice", "refund", "password", "export", "billing",
         "timeout", "upload", "report", "crash", "email", "sync", "license", "vpn")
FIRST = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken",
         "Radia", "Leslie", "Margaret", "Dennis")
LAST = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen",
        "Thompson", "Perlman", "Lamport", "Hamilton", "Ritchie")
TAGS = ("urgent", "vip", "bug", "question", "billing", "hardware", "software", "network")


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def expected(records=237, seed=42):
    """The tickets, as a list of dicts, in id order."""
    rng = random.Random(seed)
    t = START
    tickets = []
    for i in range(1, records + 1):
        t += dt.timedelta(seconds=rng.randint(1, 3600))
        first, last = rng.choice(FIRST), rng.choice(LAST)
        tickets.append({
            "id": i,
            "subject": f"{rng.choice(WORDS).capitalize()} {rng.choice(WORDS)} issue #{i}",
            "priority": rng.choice(PRIORITIES),
            "updated_at": iso(t),
            "requester": {
                "name": f"{first} {last}",
                "email": f"{first.lower()}.{last.lower()}{i}@example.com",
            },
            "tags": rng.sample(TAGS, rng.randint(0, 3)),
        })
    return tickets


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=237)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default="db.json", help="path, or - for stdout")
    args = ap.parse_args(argv)
    if args.records < 0:
        ap.error("--records must be >= 0")
    text = json.dumps({"tickets": expected(args.records, args.seed)}, indent=2) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
