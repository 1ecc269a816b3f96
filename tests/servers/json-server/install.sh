#!/usr/bin/env bash
# Installs json-server (the third-party REST server the REST API source's tests run
# against) from npm into a cache directory outside the work tree, unless the pinned
# version is already there, and prints the path of its executable on stdout.
#
#   tests/servers/json-server/install.sh            # -> $INLET_CACHE/json-server/node_modules/.bin/json-server
#   JSON_SERVER_DIR=/some/dir tests/servers/json-server/install.sh
#
# 0.17.4 is pinned: it is npm's `latest` tag, runs on Node >= 12, pages with RFC 8288
# `Link` headers (`_page`/`_limit`, plus `X-Total-Count`), keeps numeric ids as numbers,
# filters with `field_gte=` (string comparison, so ISO-8601 UTC timestamps work), and has
# --read-only. The 1.0 betas that run on Node 20 (beta.0-3) turn ids into strings and
# compare `_gte` only on numbers; later betas require Node >= 22.12.
# Needs node and npm on PATH; all messages go to stderr.
set -euo pipefail

version="0.17.4"
dir="${JSON_SERVER_DIR:-${INLET_CACHE:-$HOME/.cache/inlet}/json-server}"
bin="$dir/node_modules/.bin/json-server"
pkg="$dir/node_modules/json-server/package.json"

installed() {
  [ -x "$bin" ] && [ -f "$pkg" ] \
    && [ "$(node -e 'process.stdout.write(require(process.argv[1]).version)' "$pkg" 2>/dev/null)" = "$version" ]
}

if ! installed; then
  for tool in node npm; do
    command -v "$tool" >/dev/null || { echo "json-server install.sh: $tool not found on PATH" >&2; exit 1; }
  done
  echo "json-server install.sh: installing json-server@$version into $dir" >&2
  mkdir -p "$dir"
  npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "json-server@$version" >&2
  installed || { echo "json-server install.sh: json-server@$version missing from $dir after npm install" >&2; exit 1; }
fi

echo "$bin"
