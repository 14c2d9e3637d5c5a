#!/usr/bin/env bash
# TLS cost beside HAProxy and nginx, same load, same run, one worker thread
# each, repetitions interleaved (A B C A B C ...):
#   https        wrk -t1 -c64 keep-alive over TLS: req/s, CPU us per request
#   https-close  one request per connection, wrk resuming the TLS session:
#                CPU us per (resumed) connection
#   fullhs       openssl s_time -new, a full handshake per connection:
#                CPU us per handshake
# Prints the medians and the tether/haproxy, tether/nginx ratios.
#   tools/bench-tls.sh [BUILD_DIR]   env: REPS=3 DURATION=10s FULLHS_SECS=10 CERT=ec|rsa
#                                         BENCH_DIR=../shared/bench RUN_DIR=/tmp/fc-bench
# Needs Debian's haproxy, nginx and wrk (and the openssl command line).
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(cd "${1:-build}" && pwd)
bench=${BENCH_DIR:-$(cd ../shared/bench && pwd)}
for tool in haproxy nginx wrk openssl curl; do
    command -v "$tool" >/dev/null || { echo "bench-tls: $tool not installed" >&2; exit 1; }
done
[[ -x $build/tetherd ]] || { echo "bench-tls: no $build/tetherd" >&2; exit 1; }
export RUN_DIR=${RUN_DIR:-/tmp/fc-bench}
export RESULTS_DIR=${RESULTS_DIR:-$RUN_DIR/results}
export REPS=${REPS:-3} DURATION=${DURATION:-10s} CERT=${CERT:-ec}
export TAG=${TAG:-tether-tls-$(date -u +%Y%m%dT%H%M%SZ)}
fullhs_secs=${FULLHS_SECS:-10}
tether=("$bench/tether.sh" "$build/tetherd" --tls)
mkdir -p "$RESULTS_DIR"

echo "# bench-tls TAG=$TAG REPS=$REPS DURATION=$DURATION FULLHS_SECS=$fullhs_secs CERT=$CERT"
echo "# $(uptime)"

# 1. keep-alive and resumed connections through run.sh, interleaved
TARGETS="custom haproxy nginx" MODES="https https-close" CUSTOM_NAME=tether \
    "$bench/matrix.sh" -- "${tether[@]}"

# 2. full handshakes, interleaved; only the rows written from here on count
fcsv=$RESULTS_DIR/fullhs.csv
first_row=$(( $( [[ -s $fcsv ]] && wc -l < "$fcsv" || echo 1 ) + 1 ))
for ((rep = 1; rep <= REPS; rep++)); do
    for t in tether haproxy nginx; do
        if [[ $t == tether ]]; then
            NAME=tether "$bench/fullhs.sh" custom "$fullhs_secs" -- "${tether[@]}" || echo "# fullhs failed: rep=$rep tether"
        else
            "$bench/fullhs.sh" "$t" "$fullhs_secs" || echo "# fullhs failed: rep=$rep $t"
        fi
        sleep 2
    done
done

echo
"$bench/report.sh" "$TAG" | tee /tmp/tether-bench-tls-report.md
python3 - "$RESULTS_DIR/results.csv" "$TAG" "$fcsv" "$first_row" <<'PY'
import csv, statistics, sys
res, tag, fcsv, first = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rows = [r for r in csv.DictReader(open(res)) if tag in r["tag"]]
noisy = [r for r in rows if r["noisy"] == "1"]
rows = [r for r in rows if r["noisy"] != "1"]
with open(fcsv) as f:
    lines = f.read().splitlines()
hs = list(csv.DictReader([lines[0]] + lines[first - 1:])) if lines else []
targets = ("tether", "haproxy", "nginx")

def med(vals):
    vals = [float(v) for v in vals if v not in ("", None)]
    return (statistics.median(vals), len(vals)) if vals else (None, 0)

def wrk_med(t, mode, field):
    """Median over the clean runs; over the noisy ones (marked) when there is no clean one."""
    m = med(r[field] for r in rows if r["target"] == t and r["mode"] == mode)
    if m[0] is None:
        m = med(r[field] for r in noisy if r["target"] == t and r["mode"] == mode)
        if m[0] is not None:
            return m + ("NOISY",)
    return m

table = {}  # (metric, target) -> (median, n[, "NOISY"])
for t in targets:
    table["https req/s", t] = wrk_med(t, "https", "rps")
    table["https CPU us/req", t] = wrk_med(t, "https", "proxy_cpu_us_per_req")
    table["https-close req/s (= conn/s)", t] = wrk_med(t, "https-close", "rps")
    table["https-close CPU us/conn (resumed)", t] = wrk_med(t, "https-close", "proxy_cpu_us_per_req")
    table["fullhs conn/s", t] = med(r["conn_per_s"] for r in hs if r["target"] == t)
    table["fullhs CPU us/handshake", t] = med(r["proxy_cpu_us_per_conn"] for r in hs if r["target"] == t)

print()
print("| metric (median) | tether | haproxy | nginx | tether/haproxy | tether/nginx |")
print("|---|---|---|---|---|---|")
for m in dict.fromkeys(k[0] for k in table):
    v = {t: table[m, t] for t in targets}
    cell = lambda x: "-" if x[0] is None else "%.0f (n=%d%s)" % (x[0], x[1], ", NOISY" if len(x) > 2 else "")
    ratio = lambda a, b: "-" if a[0] is None or not b[0] else "%.2f" % (a[0] / b[0])
    print("| %s | %s | %s | %s | %s | %s |" % (m, cell(v["tether"]), cell(v["haproxy"]), cell(v["nginx"]),
                                              ratio(v["tether"], v["haproxy"]), ratio(v["tether"], v["nginx"])))
print()
print("noisy wrk runs left out (other processes used CPU; matrix.sh re-ran them): %d%s" % (
    len(noisy), "".join("\n  %s %s %s other_cpu=%ss" % (r["date_utc"], r["target"], r["mode"], r["other_cpu_s"])
                        for r in noisy)))
errs = [(r["target"], r["mode"], r["non2xx"], r["sock_errors"]) for r in rows
        if (r["non2xx"] or "0") != "0" or (r["sock_errors"] or "0") != "0"]
if errs:
    print("runs with errors (target, mode, non2xx, socket errors):", errs)
PY
