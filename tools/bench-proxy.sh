#!/usr/bin/env bash
# Proxy throughput beside HAProxy (and optionally nginx), same load, same run:
# wrk -t1 -c64 through each proxy to four nginx backends, requests drawn from
# 10,000 session ids, one worker thread each, repetitions interleaved
# (A B A B ...). Prints the median table and tether/anchor ratios.
#   tools/bench-proxy.sh [BUILD_DIR]      env: REPS=3 MODES=http TARGETS="custom haproxy"
#                                              DURATION=10s BENCH_DIR=../shared/bench
# Needs Debian's haproxy, nginx and wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(cd "${1:-build}" && pwd)
bench=${BENCH_DIR:-$(cd ../shared/bench && pwd)}
export REPS=${REPS:-3} MODES=${MODES:-http} TARGETS=${TARGETS:-"custom haproxy"}
export DURATION=${DURATION:-10s} TAG=${TAG:-tether-$(date -u +%Y%m%dT%H%M%SZ)}
# The harness checks both the plain and the TLS port of every target.
CUSTOM_NAME=tether "$bench/matrix.sh" -- "$bench/tether.sh" "$build/tetherd" --tls
"$bench/report.sh" "$TAG" | tee /tmp/tether-bench-report.md
csv=${RESULTS_DIR:-${RUN_DIR:-/tmp/fc-bench}/results}/results.csv
python3 - "$csv" "$TAG" <<'PY'
import csv, statistics, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if sys.argv[2] in r["tag"] and r["noisy"] != "1"]
by = {}
for r in rows:
    by.setdefault((r["target"], r["mode"]), []).append(r)
def med(target, mode, field):
    v = [float(r[field]) for r in by.get((target, mode), []) if r[field]]
    return statistics.median(v) if v else None
for mode in sorted({m for _, m in by}):
    t = {f: med("tether", mode, f) for f in ("rps", "p99_ms", "proxy_cpu_us_per_req")}
    for anchor in sorted({a for a, m in by if m == mode and a != "tether"}):
        a = {f: med(anchor, mode, f) for f in t}
        if None in t.values() or None in a.values():
            continue
        print(f"{mode}: tether/{anchor}: req/s {t['rps']/a['rps']:.2f}  "
              f"p99 {t['p99_ms']/a['p99_ms']:.2f}  CPU/req {t['proxy_cpu_us_per_req']/a['proxy_cpu_us_per_req']:.2f}")
PY
