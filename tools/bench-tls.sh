#!/usr/bin/env bash
# TLS cost beside HAProxy and nginx, same load, same run, one worker thread
# each, repetitions interleaved (A B C A B C ...):
#   https        wrk -t1 -c64 keep-alive over TLS: req/s, CPU us per request
#   https-close  one request per connection, wrk resuming the TLS session:
#                CPU us per (resumed) connection
#   fullhs       openssl s_time -new, a full handshake per connection:
#                CPU us per handshake
# Prints what each side negotiates, the medians and the tether/haproxy,
# tether/nginx ratios.
#   tools/bench-tls.sh [BUILD_DIR]   env: REPS=3 DURATION=10s FULLHS_SECS=10 CERT=ec|rsa
#                                         BENCH_DIR=../shared/bench RUN_DIR=/tmp/fc-bench
#                                         PROTO=default|tls13|tls12 TLS_PORT=8443
# PROTO compares like with like: the harness's nginx (1.22) speaks TLS 1.2
# only, and TLS 1.3 resumption does an ECDHE exchange that TLS 1.2 ticket
# resumption does not. tls13 runs a copy of the harness whose nginx enables
# TLSv1.3; tls12 caps every client at TLS 1.2: wrk, s_client and curl
# through an OPENSSL_CONF of its own, s_time (which overrides that) with
# -tls1_2 in a copy of fullhs.sh. default runs the harness as it is.
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
proto=${PROTO:-default}
export TAG=${TAG:-tether-tls-$proto-$(date -u +%Y%m%dT%H%M%SZ)}
fullhs_secs=${FULLHS_SECS:-10}
tls_port=${TLS_PORT:-8443} # the harness's TLS port, for the negotiation probe
mkdir -p "$RESULTS_DIR"
# A copy of the harness to change, used from here on (its folder stays read-only).
copy_harness() {
    copy=$RUN_DIR/$1
    rm -rf "$copy" && mkdir -p "$copy" && cp -r "$bench"/. "$copy"/
    bench=$copy
    export BENCH_DIR=$copy
}
case $proto in
default) ;;
tls13)
    # nginx 1.22 enables TLSv1.3 only when told: the copy gets the line.
    copy_harness bench-tls13
    sed -i 's#^\( *\)ssl_certificate_key .*;#&\n\1ssl_protocols TLSv1.2 TLSv1.3;#' "$copy/conf/nginx-lb.conf.in"
    grep -q 'ssl_protocols TLSv1.2 TLSv1.3;' "$copy/conf/nginx-lb.conf.in" ||
        { echo "bench-tls: cannot enable TLSv1.3 in the nginx config" >&2; exit 1; } ;;
tls12)
    # openssl s_time sets its own version bounds, which override the
    # OPENSSL_CONF below: its copy of fullhs.sh asks for TLS 1.2 outright.
    copy_harness bench-tls12
    sed -i 's#openssl s_time -connect#openssl s_time -tls1_2 -connect#' "$copy/fullhs.sh"
    grep -q 's_time -tls1_2 -connect' "$copy/fullhs.sh" ||
        { echo "bench-tls: cannot make fullhs.sh ask for TLS 1.2" >&2; exit 1; }
    printf '%s\n' 'openssl_conf = openssl_init' '[openssl_init]' 'ssl_conf = ssl_sect' '[ssl_sect]' \
        'system_default = system_default_sect' '[system_default_sect]' 'MaxProtocol = TLSv1.2' \
        > "$RUN_DIR/tls12.cnf"
    export OPENSSL_CONF=$RUN_DIR/tls12.cnf ;;
*) echo "bench-tls: PROTO must be default, tls13 or tls12" >&2; exit 1 ;;
esac
tether=("$bench/tether.sh" "$build/tetherd" --tls)

echo "# bench-tls TAG=$TAG REPS=$REPS DURATION=$DURATION FULLHS_SECS=$fullhs_secs CERT=$CERT PROTO=$proto"
echo "# $(uptime)"

# 0. what each side negotiates with openssl s_client: a full handshake, then
#    a resumption of its session (a request and its response first, so that
#    a TLS 1.3 ticket has arrived)
negotiated() {
    local sess=$RUN_DIR/bench-tls.sess full resumed req='GET / HTTP/1.0\r\n\r\n'
    full=$(printf "$req" | openssl s_client -connect "127.0.0.1:$tls_port" -ign_eof -sess_out "$sess" 2>/dev/null)
    resumed=$(printf "$req" | openssl s_client -connect "127.0.0.1:$tls_port" -ign_eof -sess_in "$sess" 2>/dev/null)
    rm -f "$sess"
    printf '%s: %s, %s; resumption: %s, %s\n' "$1" \
        "$(sed -n 's/^New, \(.*\), Cipher is /\1 /p' <<< "$full" | head -1)" \
        "$(sed -n 's/^Server Temp Key: //p' <<< "$full" | head -1)" \
        "$(grep -o -m1 '^\(Reused\|New\), [^,]*' <<< "$resumed")" \
        "$(sed -n 's/^Server Temp Key: //p' <<< "$resumed" | head -1 | grep . || echo 'no key exchange')"
}
for t in tether haproxy nginx; do
    (
        set +e # lib.sh's helpers expect it (stop_pid's wait returns the signal)
        source "$bench/lib.sh"
        prepare_run_dir && ports_free_or_die
        trap stop_all_started EXIT
        start_backends single >/dev/null 2>&1
        if [[ $t == tether ]]; then start_proxy custom "${tether[@]}"; else start_proxy "$t"; fi
        negotiated "$t"
    ) || echo "$t: negotiation probe failed"
done

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
