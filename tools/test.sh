#!/usr/bin/env bash
# Sets everything up, builds with warnings as errors, and runs every test
# suite (unit, fuzz corpus replay, integration). Ends with one summary line.
set -uo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh build -Dwerror=true -Dtests=true || exit 1
# Test-only: promtool (in Debian's prometheus package) checks /metrics. The
# Prometheus server in that package is kept from starting on install.
if ! command -v promtool >/dev/null; then
    echo "test: installing prometheus (for promtool)"
    export DEBIAN_FRONTEND=noninteractive
    rcd=/usr/sbin/policy-rc.d made=
    if [ ! -e "$rcd" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$rcd" && chmod 755 "$rcd" && made=1
    fi
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } ||
        echo "test: promtool unavailable; the metrics test uses its own parser only"
    [ -z "$made" ] || rm -f "$rcd"
fi
meson test -C build --print-errorlogs --num-processes 1 "$@"
rc=$?
log=build/meson-logs/testlog.json
if [ -f "$log" ]; then
    python3 - "$log" <<'PY'
import json, sys
passed = failed = skipped = 0
for line in open(sys.argv[1]):
    r = json.loads(line).get("result")
    if r in ("OK", "EXPECTEDFAIL"):
        passed += 1
    elif r == "SKIP":
        skipped += 1
    else:
        failed += 1
print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
PY
fi
exit $rc
