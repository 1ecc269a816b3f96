#!/usr/bin/env bash
# Runs every test of inlet. Installs what the tests need first, idempotently:
#   - a Python virtualenv (.venv, ignored by git) with DuckDB and its Delta and httpfs
#     extensions, the independent reader every end-to-end test checks its tables with, and
#     moto, the S3 + SQS server the S3 tests run against (started here, stopped on exit), and
#     the official OpenLineage client, whose event model checks the lineage events inlet emits
#     (tests/observe/openlineage_check.py);
#   - json-server from npm (tests/servers/json-server/install.sh, cached under
#     ~/.cache/inlet), the third-party REST server. The scripted REST test server
#     (tests/servers/rest_server.py, standard library only) is started by each test;
#   - Chromium (apt-get install chromium, when none is on PATH), the headless browser that
#     looks at the dashboard of `inlet serve` (tests/observe/browse.sh);
#   - PostgreSQL server binaries (apt-get install postgresql, when no
#     /usr/lib/postgresql/*/bin/pg_ctl exists): a throw-away cluster with logical replication
#     is started on a free loopback port for the PostgreSQL tests and deleted on exit;
#   - the other engines every table the end-to-end tests write is read by: Spark with Delta
#     Lake, Trino and ClickHouse (chDB) beside DuckDB, behind one reader service started
#     once (tests/readers/start.sh: pyspark, chDB and Trino's client from PyPI, Delta's jars
#     and the Trino server from Maven Central, all cached under ~/.cache/inlet).
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -- kill`).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${INLET_TARGET_DIR:-$HOME/.cache/inlet-target}}"
venv="${INLET_VENV:-$PWD/.venv}"

# The import check covers every package, so a venv made before one was added gets it too.
if ! "$venv/bin/python" -c 'import duckdb, duckdb_ext, pytz, moto, boto3, openlineage.client' >/dev/null 2>&1 \
  || ! [ -x "$venv/bin/moto_server" ]; then
  echo "test.sh: installing DuckDB (with its Delta and httpfs extensions), moto and the OpenLineage client into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "duckdb==1.4.4" "duckdb-ext-delta==1.4.4.20260205" \
    "duckdb-ext-httpfs==1.4.4.20260205" pytz "moto[server]==5.2.5" boto3 "openlineage-python==1.54.0"
fi
export INLET_PYTHON="$venv/bin/python"

# An S3-compatible server with SQS (moto) on a free loopback port, for the S3 tests; the
# AWS settings go through the standard environment, as in production.
moto_log="$(mktemp)"
port="$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$moto_log" 2>&1 &
moto_pid=$!
# Also stops the PostgreSQL cluster below, if it got as far as having a directory (its
# variables are unset until then).
cleanup() {
  kill "$moto_pid" 2>/dev/null || true
  rm -f "$moto_log" "${log:-}"
  if [ -n "${pg_dir:-}" ]; then
    as_postgres "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$pg_dir"
  fi
  if declare -F stop_readers >/dev/null; then stop_readers || true; fi
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  if "$venv/bin/python" -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
    break
  fi
  sleep 0.2
done
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
  AWS_DEFAULT_REGION=us-east-1 AWS_ACCESS_KEY_ID=inlet-test AWS_SECRET_ACCESS_KEY=inlet-test
export INLET_S3_ENDPOINT="$AWS_ENDPOINT_URL"
# Tests that need a service fail instead of skipping when it is missing.
export INLET_REQUIRE_SERVICES=1

# zstd, which unpacks the delta-kernel golden tables (../shared/conformance/kernel-golden).
if ! command -v zstd >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "test.sh: installing zstd (apt-get install zstd)" >&2
  { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zstd; } >&2 \
    || echo "test.sh: apt-get install zstd failed; the conformance test will say so" >&2
fi

# Chromium (Debian's package: the browser builds that tools download themselves cannot be
# fetched here), which tests/observe/browse.sh runs headless to screenshot the dashboard of
# `inlet serve` and read its DOM. Without it (apt down) the rest still runs, and the dashboard
# tests fail saying INLET_CHROMIUM is empty.
if ! command -v chromium >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "test.sh: installing Chromium (apt-get install chromium)" >&2
  { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >&2 \
    || echo "test.sh: apt-get install chromium failed; the dashboard tests will say so" >&2
fi
INLET_CHROMIUM="$(command -v chromium || true)"
export INLET_CHROMIUM

# A throw-away PostgreSQL cluster for the PostgreSQL source tests: wal_level=logical and
# room for many slots and walsenders (tests run in parallel, each with its own database and
# slot), fsync off (nothing here has to survive a crash of the machine), no WAL kept beyond
# what slots pin (so a test can see a slot hold WAL back), its socket in its own directory
# (no clash with a system cluster on /var/run/postgresql). The server binaries are used from
# /usr/lib/postgresql/<newest>/bin: Debian's wrappers on PATH pick versions and clusters
# themselves. Without it (apt down, start failed) the rest still runs, and the PostgreSQL
# tests fail saying why.
# PostgreSQL refuses to run as root, so as root its programs run as the `postgres` user
# (from /, which that user can always enter).
as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}
# Called from `if`, where `set -e` does not apply: every step checks itself and says why.
start_postgres() {
  local pg_ctl sudo=""
  # The newest version's (sort -V: 9.6 before 15); the bare pattern when there is none.
  newest_pg_ctl() { printf '%s\n' /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -n 1; }
  pg_ctl="$(newest_pg_ctl)"
  if ! [ -x "$pg_ctl" ]; then
    echo "test.sh: installing PostgreSQL (apt-get install postgresql)" >&2
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >&2 \
      || { echo "test.sh: apt-get install postgresql failed" >&2; return 1; }
    pg_ctl="$(newest_pg_ctl)"
  fi
  [ -x "$pg_ctl" ] || { echo "test.sh: no PostgreSQL server binaries under /usr/lib/postgresql" >&2; return 1; }
  pg_bin="$(dirname "$pg_ctl")"
  pg_dir="$(mktemp -d)" || return 1
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$pg_dir" || { echo "test.sh: no postgres user to run PostgreSQL as" >&2; return 1; }
  fi
  pg_port="$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')" \
    || return 1
  # UTF-8 whatever the locale of this shell, so non-ASCII text round-trips.
  as_postgres "$pg_bin/initdb" -A trust -U postgres -E UTF8 --locale=C -D "$pg_dir/data" >"$pg_dir/initdb.log" 2>&1 \
    || { echo "test.sh: initdb failed:" >&2; tail -n 20 "$pg_dir/initdb.log" >&2; return 1; }
  as_postgres "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -o "-c wal_level=logical \
    -c max_replication_slots=20 -c max_wal_senders=20 -c port=$pg_port -c listen_addresses=127.0.0.1 -c fsync=off \
    -c unix_socket_directories=$pg_dir -c max_connections=200 -c wal_keep_size=0" start >/dev/null \
    || { echo "test.sh: PostgreSQL did not start:" >&2; tail -n 20 "$pg_dir/server.log" >&2; return 1; }
  "$pg_bin/psql" -X -q -d "postgres://postgres@127.0.0.1:$pg_port/postgres" -c 'SELECT 1' >/dev/null \
    || { echo "test.sh: PostgreSQL started but does not answer on 127.0.0.1:$pg_port" >&2; return 1; }
}
if start_postgres; then
  INLET_PG_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
else
  echo "test.sh: no PostgreSQL; the PostgreSQL tests will fail" >&2
  INLET_PG_URL=""
fi
INLET_PG_BIN="${pg_bin:-}"
export INLET_PG_URL INLET_PG_BIN

# The readers. Without them (a registry down) the rest still runs, and every end-to-end test
# that wrote a table fails saying the reader service is missing.
# shellcheck source=tests/readers/start.sh
. tests/readers/start.sh
if start_readers; then
  export INLET_READERS
else
  echo "test.sh: no reader service; the end-to-end tests will fail" >&2
  export INLET_READERS=""
fi

# json-server from npm (pinned, into a cache outside the work tree): a REST server nobody here
# wrote, that one REST pipeline runs against.
# Without it (npm down) the rest still runs, and its test fails saying why.
INLET_JSON_SERVER="$(tests/servers/json-server/install.sh)" || {
  echo "test.sh: json-server could not be installed; its test will fail" >&2
  INLET_JSON_SERVER=""
}
export INLET_JSON_SERVER

# The test servers' and checkers' own tests: what the end-to-end tests trust is right (the
# scripted REST server, the receiver of webhook alerts and OpenLineage events, the OpenLineage
# event checker).
"$venv/bin/python" -m unittest --quiet tests/servers/test_rest_server.py tests/servers/test_receiver.py \
  tests/observe/test_openlineage_check.py

# The end-to-end tests drive the real binary.
cargo build --workspace --bins

# Run everything, then close with one total over all test binaries.
log="$(mktemp)"
status=0
cargo test --workspace "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
