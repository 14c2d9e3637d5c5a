#!/usr/bin/env bash
# Sets everything up, builds with warnings as errors, and runs every test
# suite (unit, fuzz corpus replay, integration). Ends with one summary line.
set -uo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh build -Dwerror=true -Dtests=true || exit 1
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
