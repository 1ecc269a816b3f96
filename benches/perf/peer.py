"""The peer of inlet-perf-bench: the same four jobs done with the Python `deltalake`
(delta-rs), pyarrow reading the inputs, and DuckDB for the untimed checks.

    peer.py w1  --landing DIR --table PATH      # every CSV of DIR appended to a new table, one commit
    peer.py w1j --landing DIR --table PATH      # the same from NDJSON
    peer.py w2  --table PATH --changes CSV      # merge a change batch into an orders table by order_id
    peer.py w3  --table PATH --snapshot CSV     # SCD2 of the next day's customers snapshot
    peer.py digest --table PATH --columns a,b   # rows, current rows and an order-free digest of the columns
    peer.py versions                            # the versions of deltalake, pyarrow and DuckDB

Types are inlet's hints: order_id and customer_id int64, timestamps timestamp[us, UTC],
amount decimal128(18, 2), the rest strings (an empty CSV field is NULL, as inlet reads it).
Every write gets inlet's table-wide encoding (engine/src/table/encoding.rs,
data_writer_properties): Snappy, 256k-row groups, 64 KiB dictionary pages, chunk statistics.
inlet's choices per column (no dictionary for nearly unique columns, delta encoding for
ascending integers) are not given to the peer: they are part of what inlet is measured on,
and delta encoding cannot be set through the Python deltalake.
"""

import argparse
import json
import os
import sys

import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")
ORDERS = pa.schema([
    ("order_id", pa.int64()),
    ("customer_id", pa.int64()),
    ("order_ts", TIMESTAMP),
    ("amount", pa.decimal128(18, 2)),
    ("currency", pa.string()),
    ("status", pa.string()),
    ("country", pa.string()),
    ("note", pa.string()),
])
CUSTOMERS = pa.schema([
    ("customer_id", pa.int64()),
    ("tier", pa.string()),
    ("city", pa.string()),
    ("email", pa.string()),
    ("segment", pa.string()),
    ("snapshot_at", TIMESTAMP),
])
# The SCD2 table's tracked columns (every non-key column but the sequence, as inlet tracks them).
TRACKED = ["tier", "city", "email", "segment"]
# inlet's target file size (engine/src/table.rs, TARGET_FILE_SIZE_BYTES).
TARGET_FILE_SIZE = 128 * 1024 * 1024


def writer_properties():
    from deltalake import ColumnProperties, WriterProperties

    return WriterProperties(
        compression="SNAPPY",
        max_row_group_size=262144,
        dictionary_page_size_limit=65536,
        default_column_properties=ColumnProperties(statistics_enabled="CHUNK"),
    )


def open_csv(path, schema):
    from pyarrow import csv

    return csv.open_csv(
        path,
        read_options=csv.ReadOptions(block_size=4 << 20),
        convert_options=csv.ConvertOptions(
            column_types={field.name: field.type for field in schema},
            include_columns=schema.names,
            # Only an empty field is NULL ("n/a" is a note, not a NULL).
            null_values=[""],
            strings_can_be_null=True,
        ),
    )


def read_csv(path, schema):
    return open_csv(path, schema).read_all().cast(schema)


def landing_files(landing, extension):
    return sorted(
        os.path.join(landing, name)
        for name in os.listdir(landing)
        if name.endswith(extension) and not name.startswith(".")
    )


def csv_batches(files, counted):
    for path in files:
        for batch in open_csv(path, ORDERS):
            counted[0] += batch.num_rows
            yield batch


def ndjson_batches(files, counted):
    import pyarrow.compute as pc
    from pyarrow import json as pjson

    # amount is a JSON string ("12.34"): read as text, cast to the decimal, as inlet's hint does.
    as_text = pa.schema([
        field.with_type(pa.string()) if field.name == "amount" else field for field in ORDERS
    ])
    options = pjson.ParseOptions(explicit_schema=as_text, unexpected_field_behavior="error")
    amount = ORDERS.get_field_index("amount")
    for path in files:
        for batch in pjson.open_json(path, read_options=pjson.ReadOptions(block_size=4 << 20), parse_options=options):
            columns = list(batch.columns)
            columns[amount] = pc.cast(columns[amount], ORDERS.field("amount").type)
            counted[0] += batch.num_rows
            yield pa.RecordBatch.from_arrays(columns, schema=ORDERS)


def w1(landing, table, ndjson):
    """Every file of `landing` into a new table in one commit, streamed batch by batch."""
    from deltalake import write_deltalake

    counted = [0]
    if ndjson:
        batches = ndjson_batches(landing_files(landing, ".ndjson"), counted)
    else:
        batches = csv_batches(landing_files(landing, ".csv"), counted)
    reader = pa.RecordBatchReader.from_batches(ORDERS, batches)
    write_deltalake(
        table,
        reader,
        mode="append",
        writer_properties=writer_properties(),
        target_file_size=TARGET_FILE_SIZE,
    )
    print(json.dumps({"rows": counted[0]}))


def w2(table, changes):
    """The change batch merged by order_id: a later order_ts updates, a new order inserts."""
    from deltalake import DeltaTable

    source = read_csv(changes, ORDERS)
    metrics = (
        DeltaTable(table)
        .merge(
            source,
            predicate="t.order_id = s.order_id",
            source_alias="s",
            target_alias="t",
            writer_properties=writer_properties(),
        )
        .when_matched_update_all(predicate="s.order_ts > t.order_ts")
        .when_not_matched_insert_all()
        .execute()
    )
    print(json.dumps({
        "source_rows": source.num_rows,
        "inserted": metrics.get("num_target_rows_inserted"),
        "updated": metrics.get("num_target_rows_updated"),
        "files_added": metrics.get("num_target_files_added"),
        "files_removed": metrics.get("num_target_files_removed"),
    }))


def row_hash_sql(alias):
    """inlet's `_row_hash` as a DataFusion expression over `alias`: SHA-256 over
    `name=length:value` and a unit separator per tracked column, by name; 16 bytes in hex."""
    parts = []
    for name in sorted(TRACKED):
        column = f"{alias}.{name}"
        parts.append(
            f"CASE WHEN {column} IS NULL THEN '' ELSE "
            f"concat('{name}=', CAST(octet_length({column}) AS VARCHAR), ':', {column}, chr(31)) END"
        )
    return f"substr(encode(sha256(concat({', '.join(parts)})), 'hex'), 1, 32)"


def w3(table, snapshot):
    """SCD2 of a whole snapshot in one merge (the staged-updates union): the snapshot keyed
    by customer_id closes the current row of a key whose tracked columns changed, and inserts
    new keys; the changed rows again, with a NULL merge key, insert the new versions; a
    current row whose key the snapshot lacks is closed as of the snapshot."""
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    target = DeltaTable(table)
    source = read_csv(snapshot, CUSTOMERS)
    # The current rows' tracked columns, to find the keys whose values changed.
    current = target.to_pyarrow_dataset().to_table(
        columns=["customer_id", *TRACKED], filter=pc.field("_is_current")
    )
    joined = source.join(current, "customer_id", join_type="inner", right_suffix="__t")
    differs = None
    for name in TRACKED:
        left, right = joined[name], joined[f"{name}__t"]
        one = pc.or_kleene(
            pc.fill_null(pc.not_equal(left, right), False),
            pc.xor(pc.is_null(left), pc.is_null(right)),
        )
        differs = one if differs is None else pc.or_(differs, one)
    changed = joined.filter(differs).select(CUSTOMERS.names).cast(CUSTOMERS)
    staged = pa.concat_tables([
        source.append_column("merge_key", source["customer_id"]),
        changed.append_column("merge_key", pa.nulls(changed.num_rows, pa.int64())),
    ])
    closed_at = pc.max(source["snapshot_at"]).value
    closed_at_sql = f"arrow_cast({closed_at}, 'Timestamp(Microsecond, Some(\"UTC\"))')"
    # Each comparison parenthesised: without, the predicate parser reads `a IS DISTINCT FROM
    # b OR c ...` as `a IS DISTINCT FROM (b OR c ...)`.
    differs_sql = " OR ".join(f"(t.{name} IS DISTINCT FROM s.{name})" for name in TRACKED)
    insert = {name: f"s.{name}" for name in CUSTOMERS.names}
    insert.update({
        "_valid_from": "s.snapshot_at",
        "_valid_to": "NULL",
        "_is_current": "true",
        "_row_hash": row_hash_sql("s"),
    })
    metrics = (
        target.merge(
            staged,
            predicate="t.customer_id = s.merge_key AND t._is_current",
            source_alias="s",
            target_alias="t",
            writer_properties=writer_properties(),
        )
        .when_matched_update({"_valid_to": "s.snapshot_at", "_is_current": "false"}, predicate=differs_sql)
        .when_not_matched_insert(insert)
        .when_not_matched_by_source_update({"_valid_to": closed_at_sql, "_is_current": "false"}, predicate="t._is_current")
        .execute()
    )
    print(json.dumps({
        "source_rows": source.num_rows,
        "changed": changed.num_rows,
        "inserted": metrics.get("num_target_rows_inserted"),
        "updated": metrics.get("num_target_rows_updated"),
        "files_added": metrics.get("num_target_files_added"),
        "files_removed": metrics.get("num_target_files_removed"),
    }))


def digest(table, columns):
    """Rows of the latest version, current rows (with `_is_current`) and the sum of a hash
    of `columns` per row: equal for two tables holding the same rows, in any files. DuckDB's
    `delta_scan` (delta-kernel) reads the table, so deletion vectors apply."""
    import duckdb
    import duckdb_ext
    from deltalake import DeltaTable

    dt = DeltaTable(table)
    names = [field.name for field in dt.schema().fields]
    current = "count(*) FILTER (WHERE _is_current)" if "_is_current" in names else "NULL"
    quoted = ", ".join(f'"{name}"' for name in columns)
    con = duckdb.connect()
    con.execute("SET extension_directory = ?", [os.path.join(list(duckdb_ext.__path__)[0], "extensions")])
    con.execute("LOAD delta")
    con.execute("SET TimeZone = 'UTC'")
    rows, current_rows, total = con.execute(
        f"SELECT count(*), {current}, sum(hash({quoted}))::VARCHAR FROM delta_scan(?)", [os.path.abspath(table)]
    ).fetchone()
    print(json.dumps({"version": dt.version(), "rows": rows, "current": current_rows, "digest": total}))


def versions():
    import deltalake
    import duckdb

    print(json.dumps({"deltalake": deltalake.__version__, "pyarrow": pa.__version__, "duckdb": duckdb.__version__}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["w1", "w1j", "w2", "w3", "digest", "versions"])
    parser.add_argument("--landing")
    parser.add_argument("--table")
    parser.add_argument("--changes")
    parser.add_argument("--snapshot")
    parser.add_argument("--columns")
    args = parser.parse_args()
    if args.command in ("w1", "w1j"):
        w1(args.landing, args.table, ndjson=args.command == "w1j")
    elif args.command == "w2":
        w2(args.table, args.changes)
    elif args.command == "w3":
        w3(args.table, args.snapshot)
    elif args.command == "digest":
        digest(args.table, args.columns.split(","))
    else:
        versions()


if __name__ == "__main__":
    sys.exit(main())
