#!/usr/bin/env bash
# Sets everything up, then runs four fnpool instances (127.0.0.1:9001-9004)
# and tetherd on conf/tether.yaml in the foreground. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh build
pidfile=$(mktemp /tmp/fnpool-XXXXXX.pids)
rm -f "$pidfile"
build/tools/fnpool -n 4 -p 9001 -f "$pidfile" &
pool=$!
trap 'kill $pool 2>/dev/null; wait $pool 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$pidfile" ] && break; sleep 0.05; done
[ -s "$pidfile" ] || { echo "demo: fnpool did not start" >&2; exit 1; }
cat <<MSG

tether is starting on 127.0.0.1:8080 in front of fn-1..fn-4. Try:

    curl -s -H 'x-fc-session-id: chat-42' http://127.0.0.1:8080/

(run it twice: the same instance answers and its counter goes up)

MSG
build/tetherd -c conf/tether.yaml
