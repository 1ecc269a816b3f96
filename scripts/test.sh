#!/usr/bin/env bash
# Runs every test of inlet. Installs what the tests need first, idempotently:
#   - a Python virtualenv (.venv, ignored by git) with DuckDB and its Delta extension,
#     the independent reader every end-to-end test checks its tables with.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -- kill`).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${INLET_TARGET_DIR:-$HOME/.cache/inlet-target}}"
venv="${INLET_VENV:-$PWD/.venv}"

if ! "$venv/bin/python" -c 'import duckdb, duckdb_ext, pytz' >/dev/null 2>&1; then
  echo "test.sh: installing DuckDB and its Delta extension into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "duckdb==1.4.4" "duckdb-ext-delta==1.4.4.20260205" pytz
fi
export INLET_PYTHON="$venv/bin/python"
# Tests that need a service fail instead of skipping when it is missing.
export INLET_REQUIRE_SERVICES=1

# The end-to-end tests drive the real binary.
cargo build --workspace --bins

# Run everything, then close with one total over all test binaries.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
