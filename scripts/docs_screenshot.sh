#!/usr/bin/env bash
# serve-local's /docs rendered by headless Chromium with the network off, as a screenshot.
#
#   scripts/docs_screenshot.sh [MODEL_DIR] [OUT.png]      (default: a tiny random model; docs/img/serve-docs.png)
#
# Needs Debian's headless Chromium (`apt-get install chromium-headless-shell`, or `chromium`) and hadskip[serve]
# (hadskip[train,export] too without MODEL_DIR). The server and the browser run in a new network namespace that
# has only loopback (`unshare -n`, as root); the browser is also told to resolve no name and to send anything
# not on loopback to a dead proxy. So the page can only load what the server itself serves: the script fails if
# the network is reachable, if the server does not come up, or if the page did not render the operations list.
set -euo pipefail

MODEL=${1:-}
OUT=$(realpath -m "${2:-docs/img/serve-docs.png}")
PY=${PY:-python3}
HADSKIP=${HADSKIP:-hadskip}
BROWSER=${BROWSER:-$(command -v chromium-headless-shell || command -v chromium || true)}
PORT=${PORT:-18080}
[ -n "$BROWSER" ] || { echo "error: no headless Chromium (apt-get install chromium-headless-shell)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "$MODEL" ]; then  # a tiny random BERT, exported (the tests' model)
  "$PY" -c "import sys; from hadskip.testing import tiny_run; tiny_run(sys.argv[1])" "$work/run"
  "$HADSKIP" export "$work/run" --out "$work/model" > /dev/null
  MODEL=$work/model
fi
mkdir -p "$(dirname "$OUT")"

if [ "${DOCS_SCREENSHOT_NETNS:-}" != 1 ]; then  # re-run this script inside a namespace with only loopback
  exec unshare --net env DOCS_SCREENSHOT_NETNS=1 PY="$PY" HADSKIP="$HADSKIP" BROWSER="$BROWSER" PORT="$PORT" \
    bash "$0" "$(realpath "$MODEL")" "$OUT"
fi
ip link set lo up
if curl -sS -m 5 -o /dev/null https://cdn.jsdelivr.net/ 2> /dev/null || \
   curl -sS -m 5 -o /dev/null http://1.1.1.1/ 2> /dev/null; then
  echo "error: the network is reachable; refusing to take the screenshot" >&2
  exit 1
fi

"$HADSKIP" serve-local "$MODEL" --host 127.0.0.1 --port "$PORT" > "$work/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2> /dev/null || true; wait "$server" 2> /dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break
  kill -0 "$server" 2> /dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.5
done
curl -sf "http://127.0.0.1:$PORT/health" > /dev/null || { echo "error: the server did not start" >&2; exit 1; }

flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --disable-extensions
       --disable-background-networking --disable-component-update --disable-sync
       --proxy-server=http://127.0.0.1:9 --host-resolver-rules="MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
       --window-size=1000,760 --virtual-time-budget=10000 --user-data-dir="$work/profile")
url="http://127.0.0.1:$PORT/docs"
"$BROWSER" "${flags[@]}" --dump-dom "$url" > "$work/dom.html" 2> "$work/browser.log"
if ! grep -q 'opblock-summary-path' "$work/dom.html" || ! grep -q '/predict' "$work/dom.html"; then
  echo "error: /docs did not render its operations; the page's console said:" >&2
  grep CONSOLE "$work/browser.log" >&2 || true
  exit 1
fi
"$BROWSER" "${flags[@]}" --screenshot="$OUT" "$url" 2>> "$work/browser.log"
echo "$(grep -o 'opblock-summary-path[^>]*data-path="[^"]*"' "$work/dom.html" | sed 's/.*data-path=//' | tr '\n' ' ')"
echo "wrote $OUT"
