"""Helpers of inlet-optimize-bench (Python `deltalake`, pyarrow and DuckDB).

    table.py make PATH FILES ROWS   # a Delta table of FILES files of ROWS rows, one commit
    table.py compact PATH           # delta-rs' own compaction: DeltaTable(PATH).optimize.compact()
    table.py count PATH             # files in the latest version, rows, and a checksum
    table.py query PATH             # seconds DuckDB's delta_scan takes over a scan query (best of 3)
"""

import json
import os
import sys
import time


def make(path, files, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import convert_to_deltalake

    os.makedirs(path, exist_ok=True)
    statuses = ["new", "paid", "shipped", "delivered", "cancelled"]
    for f in range(files):
        first = f * rows
        ids = pa.array(range(first, first + rows), pa.int64())
        amounts = pa.array([((i * 7919) % 100000) / 100.0 for i in range(first, first + rows)], pa.float64())
        status = pa.array([statuses[i % 5] for i in range(first, first + rows)], pa.string())
        note = pa.array([f"order {i} note" for i in range(first, first + rows)], pa.string())
        table = pa.table({"order_id": ids, "amount": amounts, "status": status, "note": note})
        pq.write_table(table, os.path.join(path, f"part-{f:05d}.parquet"), compression="snappy")
    convert_to_deltalake(path)


def compact(path):
    from deltalake import ColumnProperties, DeltaTable, WriterProperties

    # The encoding inlet writes (engine/src/table/encoding.rs, data_writer_properties): snappy,
    # 256k-row groups, 64 KiB dictionaries, chunk statistics. Left alone, delta-rs writes ZSTD.
    properties = WriterProperties(
        compression="SNAPPY",
        max_row_group_size=262144,
        dictionary_page_size_limit=65536,
        default_column_properties=ColumnProperties(statistics_enabled="CHUNK"),
    )
    metrics = DeltaTable(path).optimize.compact(writer_properties=properties)
    print(json.dumps({"files_removed": metrics["numFilesRemoved"], "files_added": metrics["numFilesAdded"]}))


def count(path):
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    import pyarrow.parquet as pq

    table = DeltaTable(path)
    data = table.to_pyarrow_table(columns=["order_id"])
    codecs = sorted({
        pq.ParquetFile(uri.removeprefix("file://")).metadata.row_group(0).column(0).compression
        for uri in table.file_uris()
    })
    print(json.dumps({
        "version": table.version(),
        "files": len(table.file_uris()),
        "rows": data.num_rows,
        "distinct": pc.count_distinct(data["order_id"]).as_py(),
        "sum": pc.sum(data["order_id"]).as_py(),
        "codecs": codecs,
    }))


def query(path):
    import duckdb
    import duckdb_ext

    con = duckdb.connect()
    # The delta extension from PyPI (duckdb-ext-delta): no download from duckdb.org.
    con.execute("SET extension_directory = ?", [os.path.join(list(duckdb_ext.__path__)[0], "extensions")])
    con.execute("LOAD delta")
    sql = f"SELECT status, count(*), sum(amount), max(note) FROM delta_scan('{path}') GROUP BY status"
    best = None
    for _ in range(3):
        began = time.perf_counter()
        con.execute(sql).fetchall()
        took = time.perf_counter() - began
        best = took if best is None else min(best, took)
    print(json.dumps({"seconds": best}))


if __name__ == "__main__":
    command, path = sys.argv[1], sys.argv[2]
    if command == "make":
        make(path, int(sys.argv[3]), int(sys.argv[4]))
    elif command == "compact":
        compact(path)
    elif command == "count":
        count(path)
    elif command == "query":
        query(path)
    else:
        sys.exit(f"unknown command {command}")
