#!/usr/bin/env bash
# Runs every test of inlet. Installs what the tests need first, idempotently:
#   - a Python virtualenv (.venv, ignored by git) with DuckDB and its Delta and httpfs
#     extensions, the independent reader every end-to-end test checks its tables with, and
#     moto, the S3 + SQS server the S3 tests run against (started here, stopped on exit);
#   - json-server from npm (tests/servers/json-server/install.sh, cached under
#     ~/.cache/inlet), the third-party REST server. The scripted REST test server
#     (tests/servers/rest_server.py, standard library only) is started by each test.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -- kill`).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${INLET_TARGET_DIR:-$HOME/.cache/inlet-target}}"
venv="${INLET_VENV:-$PWD/.venv}"

if ! "$venv/bin/python" -c 'import duckdb, duckdb_ext, pytz, moto, boto3' >/dev/null 2>&1 \
  || ! [ -x "$venv/bin/moto_server" ]; then
  echo "test.sh: installing DuckDB (with its Delta and httpfs extensions) and moto into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "duckdb==1.4.4" "duckdb-ext-delta==1.4.4.20260205" \
    "duckdb-ext-httpfs==1.4.4.20260205" pytz "moto[server]==5.2.5" boto3
fi
export INLET_PYTHON="$venv/bin/python"

# An S3-compatible server with SQS (moto) on a free loopback port, for the S3 tests; the
# AWS settings go through the standard environment, as in production.
moto_log="$(mktemp)"
port="$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$moto_log" 2>&1 &
moto_pid=$!
cleanup() { kill "$moto_pid" 2>/dev/null || true; rm -f "$moto_log" "${log:-}"; }
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

# json-server from npm (pinned, into a cache outside the work tree): a REST server nobody here
# wrote, that one REST pipeline runs against.
# Without it (npm down) the rest still runs, and its test fails saying why.
INLET_JSON_SERVER="$(tests/servers/json-server/install.sh)" || {
  echo "test.sh: json-server could not be installed; its test will fail" >&2
  INLET_JSON_SERVER=""
}
export INLET_JSON_SERVER

# The scripted REST server's own tests: the server the REST tests trust is right.
"$venv/bin/python" -m unittest --quiet tests/servers/test_rest_server.py

# The end-to-end tests drive the real binary.
cargo build --workspace --bins

# Run everything, then close with one total over all test binaries.
log="$(mktemp)"
status=0
cargo test --workspace "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
