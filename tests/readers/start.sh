# Sourced by scripts/test.sh: starts the engines other than inlet that read every table the
# end-to-end tests write, once per test run, and exports INLET_READERS (the reader service,
# tests/readers/server.py). Idempotent installs, cached outside the work tree:
#   - pyspark, chDB and the Trino client into the tests' virtualenv ($venv);
#   - Delta Lake's Spark jars from Maven Central through Spark's own resolver (Ivy cache in
#     ~/.cache/inlet/ivy);
#   - the Trino server tarball from Maven Central (mvn dependency:get, into ~/.m2), unpacked
#     to ~/.cache/inlet/trino with only the delta_lake connector kept. Trino runs on the
#     Temurin 25 JDK in /usr/lib/jvm, as a single-node coordinator on a free loopback port
#     with a file metastore in a temporary directory.
# Call start_readers from `if`: every step checks itself and says why it failed.
# stop_readers (from the caller's cleanup) stops what started.

readers_pyspark="4.1.0"
# Spark's Delta jars, and hadoop-aws (the Hadoop of pyspark 4.1.0's jars) for tables on S3.
readers_delta_package="io.delta:delta-spark_4.1_2.13:4.1.0,org.apache.hadoop:hadoop-aws:3.4.2"
readers_trino_version="476"
readers_cache="$HOME/.cache/inlet"

free_port() {
  "$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_readers() {
  if ! "$venv/bin/python" -c "import sys, pyspark, chdb, trino; sys.exit(pyspark.__version__ != '$readers_pyspark')" \
    >/dev/null 2>&1; then
    echo "test.sh: installing pyspark, chDB and the Trino client into $venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "pyspark==$readers_pyspark" "chdb==4.4.0" \
      "trino==0.340.0" >&2 || { echo "test.sh: pip could not install the readers (PyPI)" >&2; return 1; }
  fi
  local java25=/usr/lib/jvm/temurin-25-jdk-amd64
  [ -x "$java25/bin/java" ] || { echo "test.sh: Trino needs Java 25, not found in $java25" >&2; return 1; }
  command -v java >/dev/null || { echo "test.sh: Spark needs Java 17 on PATH" >&2; return 1; }
  local trino_home="$readers_cache/trino/trino-server-$readers_trino_version"
  if ! [ -x "$trino_home/bin/launcher" ]; then
    echo "test.sh: fetching the Trino server $readers_trino_version from Maven Central" >&2
    if ! command -v mvn >/dev/null; then
      local sudo=""
      [ "$(id -u)" -eq 0 ] || sudo=sudo
      { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven; } >&2 \
        || { echo "test.sh: no mvn to fetch Trino with (apt-get install maven failed)" >&2; return 1; }
    fi
    mvn -q dependency:get -Dartifact="io.trino:trino-server:$readers_trino_version:tar.gz" -Dtransitive=false >&2 \
      || { echo "test.sh: Maven Central did not give io.trino:trino-server:$readers_trino_version" >&2; return 1; }
    local tarball="$HOME/.m2/repository/io/trino/trino-server/$readers_trino_version/trino-server-$readers_trino_version.tar.gz"
    rm -rf "$trino_home.partial" && mkdir -p "$trino_home.partial"
    tar xzf "$tarball" -C "$trino_home.partial" --strip-components=1 \
      || { echo "test.sh: could not unpack $tarball" >&2; return 1; }
    # Only the Delta Lake connector: every plugin is loaded at start.
    find "$trino_home.partial/plugin" -mindepth 1 -maxdepth 1 ! -name delta-lake -exec rm -rf {} +
    rm -rf "$trino_home"
    mv "$trino_home.partial" "$trino_home"
  fi
  readers_dir="$(mktemp -d)"
  local trino_port readers_port
  trino_port="$(free_port)" && readers_port="$(free_port)" || return 1
  mkdir -p "$readers_dir/etc/catalog" "$readers_dir/data" "$readers_dir/metastore"
  printf 'node.environment=test\nnode.id=inlet-test\nnode.data-dir=%s/data\n' "$readers_dir" >"$readers_dir/etc/node.properties"
  printf -- '-server\n-Xmx2g\n-XX:+UseSerialGC\n-XX:+ExitOnOutOfMemoryError\n-Djdk.attach.allowAttachSelf=true\n' \
    >"$readers_dir/etc/jvm.config"
  printf 'coordinator=true\nnode-scheduler.include-coordinator=true\nhttp-server.http.port=%s\ndiscovery.uri=http://127.0.0.1:%s\nquery.max-memory=1GB\nquery.max-memory-per-node=1GB\n' \
    "$trino_port" "$trino_port" >"$readers_dir/etc/config.properties"
  printf 'io.trino=WARN\n' >"$readers_dir/etc/log.properties"
  printf 'connector.name=delta_lake\nhive.metastore=file\nhive.metastore.catalog.dir=local://%s/metastore\nfs.native-local.enabled=true\nlocal.location=/\ndelta.register-table-procedure.enabled=true\n' \
    "$readers_dir" >"$readers_dir/etc/catalog/delta.properties"
  # Tables on the S3 test server, through Trino's native S3 file system.
  if [ -n "${AWS_ENDPOINT_URL:-}" ]; then
    printf 'fs.native-s3.enabled=true\ns3.endpoint=%s\ns3.region=%s\ns3.path-style-access=true\ns3.aws-access-key=%s\ns3.aws-secret-key=%s\n' \
      "$AWS_ENDPOINT_URL" "${AWS_REGION:-us-east-1}" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" \
      >>"$readers_dir/etc/catalog/delta.properties"
  fi
  JAVA_HOME="$java25" PATH="$java25/bin:$PATH" "$trino_home/bin/launcher" run --etc-dir "$readers_dir/etc" \
    --data-dir "$readers_dir/data" >"$readers_dir/trino.log" 2>&1 &
  trino_pid=$!
  local waited=0
  until "$venv/bin/python" -c "import json, urllib.request, sys; sys.exit(json.load(urllib.request.urlopen('http://127.0.0.1:$trino_port/v1/info', timeout=1))['starting'])" 2>/dev/null; do
    if ! kill -0 "$trino_pid" 2>/dev/null || [ "$waited" -ge 180 ]; then
      echo "test.sh: Trino did not start:" >&2; tail -n 20 "$readers_dir/trino.log" >&2; stop_readers; return 1
    fi
    sleep 1; waited=$((waited + 1))
  done
  mkdir -p "$readers_cache/ivy"
  # UTC, so Spark's and chDB's timestamps come back as stored.
  TZ=UTC "$venv/bin/python" tests/readers/server.py "$readers_port" "$trino_port" "$readers_cache/ivy" \
    "$readers_delta_package" >"$readers_dir/readers.log" 2>&1 &
  readers_pid=$!
  waited=0
  until "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$readers_port/ready', timeout=1)" 2>/dev/null; do
    if ! kill -0 "$readers_pid" 2>/dev/null || [ "$waited" -ge 300 ]; then
      echo "test.sh: the reader service did not start (Spark's Delta jars come from Maven Central):" >&2
      tail -n 20 "$readers_dir/readers.log" >&2; stop_readers; return 1
    fi
    sleep 1; waited=$((waited + 1))
  done
  INLET_READERS="127.0.0.1:$readers_port"
  echo "test.sh: readers (DuckDB, Spark, Trino, ClickHouse) at $INLET_READERS after ${waited}s" >&2
}

# Never fails (it runs in the caller's EXIT trap, where `set -e` still holds).
stop_readers() {
  local pid
  for pid in "${readers_pid:-}" "${trino_pid:-}"; do
    if [ -n "$pid" ]; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  readers_pid="" trino_pid=""
  if [ -n "${readers_dir:-}" ]; then rm -rf "$readers_dir" || true; fi
  return 0
}
