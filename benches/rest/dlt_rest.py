#!/usr/bin/env python3
"""dlt side of the REST bench: dlt's rest_api source -> filesystem destination, Delta table format.

    .venv-bench/bin/python benches/rest/dlt_rest.py \
        --base-url http://127.0.0.1:PORT --out /tmp/dlt-out --work /tmp/dlt-work

Reads GET <base>/items?page=1, follows the absolute "next" link of each page
(json_link paginator), takes the records under "data", and appends them to a
Delta table at <out>/rest_bench/items. By dlt's default, nested objects become
columns (address__city, address__zip) and lists become child tables
(items__tags, linked by _dlt_parent_id); --max-table-nesting 0 keeps both as
JSON text columns of items instead.

Ends with one JSON line on stdout: rows read back from the Delta tables with
the deltalake package, and the seconds spent in extract, normalize and load
(imports, setup and the read-back are not timed).

dlt settings are its defaults unless given as dlt environment variables by the
caller, e.g. NORMALIZE__WORKERS=2 or DATA_WRITER__FILE_MAX_ITEMS=100000.
"""
import argparse
import json
import os
import resource
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--base-url", required=True, help="server root, e.g. http://127.0.0.1:8080")
ap.add_argument("--out", required=True, help="directory the Delta tables are written under")
ap.add_argument("--work", required=True, help="scratch dir for dlt's pipeline state; wiped per run by the caller")
ap.add_argument("--max-table-nesting", type=int, default=None,
                help="dlt's max_table_nesting; 0 keeps address and tags as JSON columns of items "
                     "(no flattening, no child table). Default: dlt's own (flatten dicts, lists to child tables)")
args = ap.parse_args()

work = os.path.abspath(args.work)
os.makedirs(work, exist_ok=True)
# All of this must be set before dlt is imported.
os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"  # no anonymous usage reporting (the only network call dlt makes)
os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
os.environ["DLT_DATA_DIR"] = os.path.join(work, "data")  # instead of ~/.dlt: pipelines/, global state
os.environ["DLT_PROJECT_DIR"] = work  # no .dlt/config.toml picked up from the cwd

import dlt  # noqa: E402
from dlt.sources.rest_api import RESTAPIConfig, rest_api_source  # noqa: E402
from deltalake import DeltaTable  # noqa: E402

config: RESTAPIConfig = {
    "client": {
        "base_url": args.base_url.rstrip("/") + "/",
        "paginator": {"type": "json_link", "next_url_path": "next"},
    },
    "resource_defaults": {"primary_key": "id", "write_disposition": "append"},
    "resources": [
        {
            "name": "items",
            "endpoint": {"path": "items", "params": {"page": 1}, "data_selector": "data"},
        }
    ],
}

out = os.path.abspath(args.out)
pipeline = dlt.pipeline(
    pipeline_name="rest_bench",
    pipelines_dir=os.path.join(work, "pipelines"),
    destination=dlt.destinations.filesystem(bucket_url=out),
    dataset_name="rest_bench",
    progress="log" if os.environ.get("DLT_BENCH_PROGRESS") else None,
)

# The three stages that pipeline.run() chains, called one by one to time each.
# Also notes this process's peak RSS so far after each stage (normalize workers, if any, not included).
source = rest_api_source(config, max_table_nesting=args.max_table_nesting)
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
    stages[f"rss_mib_after_{name}"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
elapsed = time.perf_counter() - t0
load_info.raise_on_failed_jobs()


def delta_rows(table):
    path = os.path.join(out, "rest_bench", table)
    return DeltaTable(path).to_pyarrow_dataset().count_rows() if os.path.isdir(path) else None


result = {
    "tool": "dlt",
    "dlt": dlt.__version__,
    "rows": delta_rows("items"),
    "tags_rows": delta_rows("items__tags"),
    "max_table_nesting": args.max_table_nesting,
    "elapsed_s": round(elapsed, 3),
    **stages,
}
print(json.dumps(result), flush=True)
sys.exit(0 if result["rows"] else 1)
