#!/usr/bin/env bash
# Opens URL in headless Chromium: writes a screenshot of it to OUT_PNG (a 1400x1000 window) and
# prints the page's DOM, once its scripts have run, on stdout.
#
#   tests/observe/browse.sh URL OUT_PNG
#
# Chromium is $INLET_CHROMIUM (exported by scripts/test.sh, which installs Debian's chromium),
# else `chromium` on PATH. Two runs (screenshot, then DOM), each with its own throw-away
# profile so runs never share state, no sandbox (the tests may run as root, where Chromium's
# sandbox refuses to start), no GPU (there is none), a virtual-time budget so timers and
# fetches of the page settle before the capture, and a hard timeout so a hung browser cannot
# hang a test. Chromium's own chatter goes to stderr.
set -euo pipefail

if [ "$#" -ne 2 ]; then
  echo "usage: $0 URL OUT_PNG" >&2
  exit 2
fi
url="$1"
out="$2"

chromium="${INLET_CHROMIUM:-}"
if [ -n "$chromium" ] && ! [ -x "$chromium" ]; then
  echo "browse.sh: INLET_CHROMIUM=$chromium is not an executable" >&2
  exit 1
fi
[ -n "$chromium" ] || chromium="$(command -v chromium || true)"
if [ -z "$chromium" ]; then
  echo "browse.sh: no Chromium (INLET_CHROMIUM is empty and no chromium on PATH);" \
    "scripts/test.sh installs it with apt-get install chromium, which must have failed" >&2
  exit 1
fi

profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
out_abs="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
rm -f "$out_abs"

run() {
  # HOME too: Chromium writes caches and crash dumps under it whatever the profile dir.
  HOME="$profile" timeout --kill-after=5 60 "$chromium" --headless --no-sandbox --disable-gpu \
    --disable-dev-shm-usage --no-first-run --no-default-browser-check --disable-extensions \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --mute-audio --window-size=1400,1000 --virtual-time-budget=5000 \
    --user-data-dir="$profile/$1" "${@:2}" "$url"
}

run shot --screenshot="$out_abs" >&2 || { echo "browse.sh: chromium failed taking the screenshot of $url" >&2; exit 1; }
if ! [ -s "$out_abs" ]; then
  echo "browse.sh: chromium wrote no screenshot of $url to $out" >&2
  exit 1
fi
run dom --dump-dom || { echo "browse.sh: chromium failed dumping the DOM of $url" >&2; exit 1; }
