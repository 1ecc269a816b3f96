#!/usr/bin/env python3
"""dlt side of the PostgreSQL bench: dlt's sql_database source -> filesystem destination, Delta.

    .venv-bench/bin/python benches/pg/dlt_sql.py \
        --url postgresql://postgres@127.0.0.1:5432/bench --table orders \
        --out /tmp/dlt-out --work /tmp/dlt-work [--backend pyarrow|connectorx]

Reads the whole table with dlt's `sql_table` (the given backend, `chunk_size` rows a
chunk, full load, append) and writes it to a Delta table at <out>/pg_bench/orders.

Ends with one JSON line on stdout: rows read back from the Delta table with the deltalake
package, and the seconds of extract, normalize and load.

dlt settings are its defaults unless given as dlt environment variables by the caller.
"""
import argparse
import json
import os
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--url", required=True)
ap.add_argument("--table", default="orders")
ap.add_argument("--out", required=True)
ap.add_argument("--work", required=True)
ap.add_argument("--backend", default="pyarrow")
ap.add_argument("--chunk-size", type=int, default=100_000)
args = ap.parse_args()

work = os.path.abspath(args.work)
os.makedirs(work, exist_ok=True)
os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"
os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
os.environ["DLT_DATA_DIR"] = os.path.join(work, "data")
os.environ["DLT_PROJECT_DIR"] = work

import dlt  # noqa: E402
from dlt.sources.sql_database import sql_table  # noqa: E402
from deltalake import DeltaTable  # noqa: E402

out = os.path.abspath(args.out)
pipeline = dlt.pipeline(
    pipeline_name="pg_bench",
    pipelines_dir=os.path.join(work, "pipelines"),
    destination=dlt.destinations.filesystem(bucket_url=out),
    dataset_name="pg_bench",
)
source = sql_table(credentials=args.url, table=args.table, backend=args.backend, chunk_size=args.chunk_size)

# The three stages that pipeline.run() chains, called one by one to time each.
stages, load_info = {}, None
t0 = time.perf_counter()
for name, step in (
    ("extract", lambda: pipeline.extract(source, table_format="delta")),
    ("normalize", pipeline.normalize),
    ("load", pipeline.load),
):
    ts = time.perf_counter()
    load_info = step()
    stages[f"{name}_s"] = round(time.perf_counter() - ts, 3)
elapsed = time.perf_counter() - t0
load_info.raise_on_failed_jobs()

path = os.path.join(out, "pg_bench", args.table)
rows = DeltaTable(path).to_pyarrow_dataset().count_rows() if os.path.isdir(path) else None
result = {"tool": "dlt", "dlt": dlt.__version__, "backend": args.backend, "rows": rows, "elapsed_s": round(elapsed, 3), **stages}
print(json.dumps(result), flush=True)
sys.exit(0 if rows else 1)
