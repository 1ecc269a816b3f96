"""The engines other than inlet that read inlet's tables in the tests, started once per
test run by scripts/test.sh and shared by every test over HTTP on a loopback port.

- DuckDB (`delta_scan`, the delta extension built on delta-kernel-rs);
- Apache Spark with Delta Lake (`spark.read.format("delta")`, one local session);
- Trino (its `delta_lake` connector over a file metastore; each table registered with
  `system.register_table` and dropped from the metastore after it is read);
- ClickHouse through chDB (`deltaLakeLocal` with `allow_delta_kernel_rs = 0`: its own C++
  reader, not delta-kernel). That reader reads a table with deletion vectors wrongly (it
  loses the files that have one), so a table whose protocol has the `deletionVectors`
  feature is read with `allow_delta_kernel_rs = 1`, chDB's delta-kernel reader.

POST /read  {"path": P, "version": V or null, "reference": PARQUET, "engines": [...]}
  Each engine's rows of the table at P (at version V), and the rows of PARQUET (what
  inlet itself reported, written by `inlet query --output parquet`), every row as a JSON
  object of canonical values (see `canonical`), sorted:
  {"reference": [...], "engines": {"spark": {"rows": [...]} or {"error": "..."}, ...}}.
  A table of more than WHOLE_ROWS_LIMIT rows is compared by a summary every engine
  computes (`"summary": true`): rows, and per column non-nulls, minimum and maximum.
POST /sql   {"engine": "spark" | "trino", "sql": S, "tables": {"name": P}}
  Rows of S, the tables registered first: Spark as temporary views of those names (and
  `delta.`P`` works too), Trino in schema `delta.inlet` under a name S gives as `{name}`.
GET /ready  200 once every engine has started.

Trino reads `timestamp` as `timestamp(3) with time zone`: its timestamps are compared with
the reference's rounded to milliseconds, which the response says (`"millis": true`).

A path may be `s3://bucket/key` on the S3 test server scripts/test.sh starts (moto, named by
the standard AWS environment: AWS_ENDPOINT_URL and the keys): DuckDB through httpfs, Spark
through hadoop-aws (s3a), Trino through its native S3 file system (configured by start.sh),
chDB through `deltaLake(url, key, secret)`.
"""

import datetime
import decimal
import json
import math
import os
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The S3 test server, when there is one.
S3_ENDPOINT = os.environ.get("AWS_ENDPOINT_URL", "")
S3_KEY = os.environ.get("AWS_ACCESS_KEY_ID", "")
S3_SECRET = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
S3_REGION = os.environ.get("AWS_REGION", "us-east-1")


def on_s3(path):
    return path.startswith("s3://")


def commit_texts(path, after=-1):
    """The JSON commits of the Delta table at `path` (local or on the S3 test server) past
    version `after`, in version order."""
    def version(name):
        stem = name.rsplit("/", 1)[-1][: -len(".json")]
        return int(stem) if stem.isdigit() else -1

    if on_s3(path):
        import boto3

        bucket, _, prefix = path[len("s3://") :].partition("/")
        client = boto3.client(
            "s3",
            endpoint_url=S3_ENDPOINT,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_SECRET,
            region_name=S3_REGION,
        )
        log = prefix.rstrip("/") + "/_delta_log/"
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=log):
            keys.extend(o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".json"))
        for key in sorted(k for k in keys if version(k) > after):
            yield client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        return
    log = os.path.join(path, "_delta_log")
    for name in sorted(n for n in os.listdir(log) if n.endswith(".json") and version(n) > after):
        with open(os.path.join(log, name)) as f:
            yield f.read()


def has_deletion_vectors(path):
    """Whether the table's latest protocol action has the `deletionVectors` reader feature:
    from its last checkpoint (local tables; Parquet or a v2 JSON checkpoint) and the JSON
    commits after it. A checkpoint it cannot read is an error, not a guess."""
    features, after = [], -1
    last = os.path.join(path, "_delta_log", "_last_checkpoint")
    if not on_s3(path) and os.path.exists(last):
        with open(last) as f:
            after = json.load(f)["version"]
        log = os.path.join(path, "_delta_log")
        prefix = f"{after:020}.checkpoint"
        names = [n for n in os.listdir(log) if n.startswith(prefix)]
        for name in names:
            if name.endswith(".json"):
                with open(os.path.join(log, name)) as f:
                    for line in f:
                        action = json.loads(line) if line.strip() else {}
                        if "protocol" in action:
                            features = action["protocol"].get("readerFeatures") or []
            elif name.endswith(".parquet"):
                import duckdb

                row = duckdb.connect().execute(
                    "SELECT to_json(protocol) FROM read_parquet(?) WHERE protocol IS NOT NULL",
                    [os.path.join(log, name)],
                ).fetchone()
                if row:
                    features = json.loads(row[0]).get("readerFeatures") or []
    for text in commit_texts(path, after):
        for line in text.splitlines():
            action = json.loads(line) if line.strip() else {}
            if "protocol" in action:
                features = action["protocol"].get("readerFeatures") or []
    return "deletionVectors" in features


def canonical(value, millis=False, float32=False):
    """One value as every engine can give it: text, numbers as text, UTC timestamps in ISO
    8601 with microseconds (milliseconds for Trino), nested values as JSON. A 32-bit float
    is printed to its 7 significant digits (some engines widen it to a double first)."""
    if value is None:
        return None
    if float32 and isinstance(value, (float, int)) and not isinstance(value, bool):
        return "%.7g" % value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return repr(value)
    if isinstance(value, decimal.Decimal):
        return format(value.normalize(), "f") if value != 0 else "0"
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        if millis:
            # Trino rounds to milliseconds, half up.
            value += datetime.timedelta(microseconds=500)
            value = value.replace(microsecond=value.microsecond // 1000 * 1000)
        return value.strftime("%Y-%m-%dT%H:%M:%S.%f")
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if hasattr(value, "asDict"):  # a Spark Row (struct)
        value = value.asDict(recursive=False)
    names = getattr(value, "_names", None)  # a Trino ROW
    if names is not None and isinstance(value, tuple):
        value = dict(zip(names, value))
    if isinstance(value, dict):
        return json.dumps({str(k): canonical(v, millis) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))})
    if isinstance(value, (list, tuple)):
        return json.dumps([canonical(v, millis) for v in value])
    return str(value)


def rows_of(columns, rows, millis=False, float32=()):
    names = [c.lower() for c in columns]
    if len(set(names)) != len(names):
        raise ValueError(f"columns that differ only in case: {columns}")
    out = []
    for row in rows:
        record = {n: canonical(v, millis, n in float32) for n, v in zip(names, row)}
        out.append(json.dumps(record, sort_keys=True))
    out.sort()
    return out


class DuckDB:
    name = "duckdb"

    def __init__(self):
        import duckdb
        import duckdb_ext

        self.lock = threading.Lock()
        self.con = duckdb.connect()
        self.con.execute("SET extension_directory = ?", [os.path.join(list(duckdb_ext.__path__)[0], "extensions")])
        self.con.execute("LOAD delta")
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute("SET enable_progress_bar = false")
        if S3_ENDPOINT:
            self.con.execute("LOAD httpfs")
            host = S3_ENDPOINT.split("://", 1)[1]
            ssl = str(S3_ENDPOINT.startswith("https")).lower()
            self.con.execute(
                f"CREATE SECRET inlet_s3 (TYPE s3, KEY_ID '{S3_KEY}', SECRET '{S3_SECRET}', REGION '{S3_REGION}', "
                f"ENDPOINT '{host}', URL_STYLE 'path', USE_SSL {ssl})"
            )

    def query(self, sql):
        with self.lock:
            cursor = self.con.cursor()
            result = cursor.execute(sql)
            columns = [d[0] for d in result.description]
            return columns, result.fetchall()

    def read(self, path, version):
        if version is not None:
            raise Unsupported("time travel (DuckDB's delta_scan reads the latest version)")
        return self.query(f"SELECT * FROM delta_scan('{path}')")

    def parquet(self, path):
        return self.query(f"SELECT * FROM read_parquet('{path}')")

    def select(self, path, version, columns):
        if version is not None:
            raise Unsupported("time travel (DuckDB's delta_scan reads the latest version)")
        return self.query(f"SELECT {summary_list(columns, quote_double)} FROM delta_scan('{path}')")


class Unsupported(Exception):
    """What an engine cannot do, named."""


class Spark:
    name = "spark"

    def __init__(self, ivy_dir, delta_package):
        from pyspark.sql import SparkSession

        self.lock = threading.Lock()
        self.spark = (
            SparkSession.builder.master("local[1]")
            .appName("inlet-readers")
            .config("spark.jars.packages", delta_package)
            .config("spark.jars.ivy", ivy_dir)
            .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
            .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.shuffle.partitions", "1")
            .config("spark.databricks.delta.snapshotPartitions", "1")
            .config("spark.driver.memory", "3g")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            # s3:// read through hadoop-aws's s3a client, from the S3 test server.
            .config("spark.hadoop.fs.s3.impl", "org.apache.hadoop.fs.s3a.S3AFileSystem")
            .config("spark.hadoop.fs.s3a.endpoint", S3_ENDPOINT or "http://127.0.0.1:1")
            .config("spark.hadoop.fs.s3a.endpoint.region", S3_REGION)
            .config("spark.hadoop.fs.s3a.path.style.access", "true")
            .config("spark.hadoop.fs.s3a.connection.ssl.enabled", str(S3_ENDPOINT.startswith("https")).lower())
            .config("spark.hadoop.fs.s3a.access.key", S3_KEY)
            .config("spark.hadoop.fs.s3a.secret.key", S3_SECRET)
            .config("spark.hadoop.fs.s3a.aws.credentials.provider", "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider")
            .config("spark.hadoop.fs.s3a.attempts.maximum", "2")
            .config("spark.hadoop.fs.s3a.retry.limit", "2")
            .getOrCreate()
        )
        self.spark.sparkContext.setLogLevel("ERROR")

    def read(self, path, version):
        with self.lock:
            reader = self.spark.read.format("delta")
            if version is not None:
                reader = reader.option("versionAsOf", version)
            frame = reader.load(path)
            return frame.columns, [tuple(r) for r in frame.collect()]

    def select(self, path, version, columns):
        with self.lock:
            at = f" VERSION AS OF {int(version)}" if version is not None else ""
            frame = self.spark.sql(f"SELECT {summary_list(columns, quote_back)} FROM delta.`{path}`{at}")
            return frame.columns, [tuple(r) for r in frame.collect()]

    def sql(self, sql, tables):
        with self.lock:
            for name, path in tables.items():
                self.spark.read.format("delta").load(path).createOrReplaceTempView(name)
            frame = self.spark.sql(sql)
            return frame.columns, [tuple(r) for r in frame.collect()]


class Trino:
    name = "trino"

    def __init__(self, port):
        import trino

        self.lock = threading.Lock()
        self.con = trino.dbapi.connect(host="127.0.0.1", port=port, user="inlet", catalog="delta", schema="inlet")
        self.count = 0

    def execute(self, sql):
        cursor = self.con.cursor()
        cursor.execute(sql)
        rows = cursor.fetchall()
        return [d[0] for d in (cursor.description or [])], rows

    def registered(self, path):
        self.count += 1
        name = f"t{self.count}"
        location = path if on_s3(path) else f"local://{path}"
        self.execute(
            f"CALL delta.system.register_table(schema_name => 'inlet', table_name => '{name}', table_location => '{location}')"
        )
        return name

    def unregister(self, name):
        self.execute(f"CALL delta.system.unregister_table(schema_name => 'inlet', table_name => '{name}')")

    def read(self, path, version):
        with self.lock:
            name = self.registered(path)
            try:
                suffix = f" FOR VERSION AS OF {int(version)}" if version is not None else ""
                return self.execute(f"SELECT * FROM delta.inlet.{name}{suffix}")
            finally:
                self.unregister(name)

    def select(self, path, version, columns):
        with self.lock:
            name = self.registered(path)
            try:
                suffix = f" FOR VERSION AS OF {int(version)}" if version is not None else ""
                return self.execute(f"SELECT {summary_list(columns, quote_double)} FROM delta.inlet.{name}{suffix}")
            finally:
                self.unregister(name)

    def sql(self, sql, tables):
        with self.lock:
            names = {}
            try:
                for alias, path in tables.items():
                    names[alias] = self.registered(path)
                for alias, name in names.items():
                    sql = sql.replace("{" + alias + "}", name)
                return self.execute(sql)
            finally:
                for name in names.values():
                    self.unregister(name)


class ClickHouse:
    name = "clickhouse"

    def __init__(self):
        import chdb

        # chDB reads local files only under its user files path, the working directory.
        os.chdir("/")
        self.lock = threading.Lock()
        self.con = chdb.connect(":memory:")

    def read(self, path, version, binary=()):
        # Binary columns come back as String: as hex, as the other engines' bytes print.
        replace = ", ".join(f"lower(hex({quote_back(c)})) AS {quote_back(c)}" for c in binary)
        return self.run(path, version, f"* REPLACE ({replace})" if replace else "*")

    def select(self, path, version, columns):
        return self.run(path, version, summary_list(columns, quote_back))

    def run(self, path, version, select):
        if version is not None:
            raise Unsupported("time travel (deltaLakeLocal reads the latest version)")
        kernel = 1 if has_deletion_vectors(path) else 0
        if on_s3(path):
            # Its S3 reader, at the test server's address (path style).
            url = S3_ENDPOINT.rstrip("/") + "/" + path[len("s3://") :].rstrip("/") + "/"
            source = f"deltaLake('{url}', '{S3_KEY}', '{S3_SECRET}')"
        else:
            source = f"deltaLakeLocal('{path}')"
        with self.lock:
            result = self.con.query(
                f"SELECT {select} FROM {source} SETTINGS allow_delta_kernel_rs = {kernel}, "
                "session_timezone = 'UTC', output_format_json_quote_denormals = 1, "
                "output_format_json_quote_decimals = 1, output_format_json_quote_64bit_integers = 1",
                "JSONCompact",
            )
            data = json.loads(result.bytes(), parse_float=decimal.Decimal)
            columns = [m["name"] for m in data["meta"]]
            types = [m["type"] for m in data["meta"]]
            return columns, [tuple(typed(v, t) for v, t in zip(row, types)) for row in data["data"]]


def typed(value, ch_type):
    """A value of chDB's JSON output as the Python value the other engines give."""
    if value is None:
        return None
    inner = ch_type
    while inner.startswith(("Nullable(", "LowCardinality(")):
        inner = inner[inner.index("(") + 1 : -1]
    if inner.startswith("DateTime64") or inner.startswith("DateTime"):
        text = value.replace(" ", "T")
        return datetime.datetime.fromisoformat(text)
    if inner.startswith("Date"):
        return datetime.date.fromisoformat(value)
    if inner.startswith("Decimal"):
        return decimal.Decimal(str(value))
    if inner.startswith(("Int", "UInt")):
        return int(value)
    if inner.startswith("Float"):
        return float(value)
    if inner == "Bool":
        return bool(value)
    if inner.startswith("Array"):
        element = inner[len("Array(") : -1]
        return [typed(v, element) for v in value]
    return value


# Tables with more rows than this are compared by a summary every engine computes itself
# (rows, and per column the non-null count, minimum and maximum) instead of row by row:
# a million rows through Spark's Python bridge would take minutes per table.
WHOLE_ROWS_LIMIT = 20_000


def quote_double(name):
    return '"' + name.replace('"', '""') + '"'


def quote_back(name):
    return "`" + name.replace("`", "``") + "`"


def summary_list(columns, quote):
    """`count(*)`, then per column `count(c)`; `min(c)`, `max(c)` for the ones that have an
    order; `sum(c)` for integers and decimals, and `count(DISTINCT c)` for integers
    (`columns`: (name, DuckDB type))."""
    parts = ["count(*)"]
    for name, kind in columns:
        q = quote(name)
        parts.append(f"count({q})")
        # Nested values, bytes and 32-bit floats (some engines widen them) by count only.
        if kind.startswith(("STRUCT", "MAP", "UNION", "BLOB", "FLOAT")) or kind.endswith("]"):
            continue
        parts.extend([f"min({q})", f"max({q})"])
        if kind.startswith(("BIGINT", "INTEGER", "SMALLINT", "TINYINT", "DECIMAL")):
            parts.append(f"sum({q})")
            # Distinct integers (keys): cheap enough for every engine's memory here.
            if not kind.startswith("DECIMAL"):
                parts.append(f"count(DISTINCT {q})")
    return ", ".join(parts)


class Readers:
    def __init__(self, engines):
        self.engines = {e.name: e for e in engines}
        self.duckdb = self.engines["duckdb"]

    def read(self, request):
        path = request["path"]
        version = request.get("version")
        response = {"engines": {}}
        reference = request["reference"]
        (count,), = self.duckdb.query(f"SELECT count(*) FROM read_parquet('{reference}')")[1]
        summary = None
        described = self.duckdb.query(f"DESCRIBE SELECT * FROM read_parquet('{reference}')")[1]
        binary = [name for name, kind, *_ in described if kind == "BLOB"]
        float32 = {name.lower() for name, kind, *_ in described if kind == "FLOAT"}
        if count > WHOLE_ROWS_LIMIT:
            summary = [(name, kind) for name, kind, *_ in described]
            columns, rows = self.duckdb.query(f"SELECT {summary_list(summary, quote_double)} FROM read_parquet('{reference}')")
            response["summary"] = True
        else:
            columns, rows = self.duckdb.parquet(reference)
        positional = [f"c{i}" for i in range(len(columns))] if summary else columns
        float32 = set() if summary else float32
        response["reference"] = rows_of(positional, rows, float32=float32)
        response["reference_millis"] = rows_of(positional, rows, millis=True, float32=float32)
        for name in request.get("engines") or list(self.engines):
            engine = self.engines[name]
            try:
                if summary:
                    columns, rows = engine.select(path, version, summary)
                    columns = positional
                elif name == "clickhouse":
                    columns, rows = engine.read(path, version, binary)
                else:
                    columns, rows = engine.read(path, version)
                millis = name == "trino"
                response["engines"][name] = {"rows": rows_of(columns, rows, millis, float32), "millis": millis}
            except Unsupported as e:
                response["engines"][name] = {"unsupported": str(e)}
            except Exception as e:  # the engine's own error, named to the test
                response["engines"][name] = {"error": f"{type(e).__name__}: {e}"}
        return response

    def sql(self, request):
        engine = self.engines[request["engine"]]
        try:
            columns, rows = engine.sql(request["sql"], request.get("tables") or {})
        except Exception as e:
            return {"error": f"{type(e).__name__}: {e}"}
        return {"columns": columns, "rows": [[canonical(v) for v in row] for row in rows]}


def main():
    port = int(sys.argv[1])
    trino_port = int(sys.argv[2])
    ivy_dir = sys.argv[3]
    delta_package = sys.argv[4]
    engines = [DuckDB(), ClickHouse(), Trino(trino_port), Spark(ivy_dir, delta_package)]
    readers = Readers(engines)
    trino = readers.engines["trino"]
    trino.execute("CREATE SCHEMA IF NOT EXISTS delta.inlet")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.reply(200 if self.path == "/ready" else 404, {"ready": True})

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            try:
                if self.path == "/read":
                    self.reply(200, readers.read(request))
                elif self.path == "/sql":
                    self.reply(200, readers.sql(request))
                else:
                    self.reply(404, {"error": "no such endpoint"})
            except Exception as e:
                self.reply(500, {"error": f"{type(e).__name__}: {e}"})

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"readers: listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
