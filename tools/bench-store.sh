#!/usr/bin/env bash
# What the Redis sidecar costs: requests/s through tetherd (one worker) with state.store: memory
# and with state.store: redis, side by side in one run, on the harness in ../shared/bench (wrk -t1
# -c64, four nginx backends), repetitions interleaved (memory redis memory redis ...), two loads:
#   recurring  ids drawn from the harness' 10,000 session ids (the foundation benchmark's load):
#              after the warm-up every session is known, Redis only sees writes behind
#   fresh      a session id never seen before on every request: every request is a claim in Redis
# Each redis run starts its own redis-server on a free 127.0.0.1 port, empty, as a child of the
# command the harness starts, so its CPU is counted with tetherd's. Prints the median table and
# the redis/memory ratios.
#   tools/bench-store.sh [BUILD_DIR]      env: REPS=3 DURATION=6s WARMUP=2s LOADS="recurring fresh"
#                                              BENCH_DIR=../shared/bench RUN_DIR=/tmp/fc-bench-store
# The harness' ports (8080, 8443, 9001-9004, 9443) are the machine's: each run waits until they
# have been free for PORTS_QUIET seconds (20), and a run whose proxy was not ours is run again.
# Needs Debian's nginx, wrk and redis-server.
set -euo pipefail

# --serve TETHERD memory|redis: the command the harness runs as its proxy under test.
if [[ ${1:-} == --serve ]]; then
    bin=$2 store=$3
    dir=$(mktemp -d /tmp/bench-store-serve-XXXXXX)
    redis_pid="" tether_pid=""
    stop() {
        if [[ -n $tether_pid ]]; then
            kill -TERM "$tether_pid" 2>/dev/null || true
            wait "$tether_pid" || true
        fi
        if [[ -n $redis_pid ]]; then
            kill -TERM "$redis_pid" 2>/dev/null || true
            wait "$redis_pid" || true
        fi
        rm -rf "$dir"
    }
    trap 'stop; exit 0' TERM INT
    state="{ store: memory }"
    if [[ $store == redis ]]; then
        port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
            --logfile "$dir/redis.log" &
        redis_pid=$!
        for ((i = 0; i < 100; i++)); do
            [[ $(redis-cli -p "$port" ping 2>/dev/null) == PONG ]] && break
            sleep 0.05
        done
        state="{ store: redis, redis: { address: 127.0.0.1:$port } }"
    fi
    {
        echo "workers: 1"
        echo "listen:"
        echo "  - address: 127.0.0.1:8080"
        echo "  - address: 127.0.0.1:8443"
        echo "    tls:"
        echo "      certificates:"
        echo "        - { cert: ${BENCH_CERT:?}, key: ${BENCH_KEY:?} }"
        echo "log: { access: off }"
        echo "state: $state"
        echo "health: { path: /, interval: 1s, fall: 2, rise: 2 }"
        echo "backends:"
        i=0
        for b in ${BENCH_BACKENDS//,/ }; do
            i=$((i + 1))
            echo "  - { name: b$i, address: $b }"
        done
    } >"$dir/tether.yaml"
    "$bin" -c "$dir/tether.yaml" &
    tether_pid=$!
    wait "$tether_pid" || true
    tether_pid=""
    stop
    exit 0
fi

cd "$(dirname "$0")/.."
self=$(pwd)/tools/bench-store.sh
build=$(cd "${1:-build}" && pwd)
bench=${BENCH_DIR:-$(cd ../shared/bench && pwd)}
REPS=${REPS:-3} DURATION=${DURATION:-6s} LOADS=${LOADS:-"recurring fresh"}
export WARMUP=${WARMUP:-2s} RUN_DIR=${RUN_DIR:-/tmp/fc-bench-store}
csv=${RESULTS_DIR:-$RUN_DIR/results}/results.csv
TAG=${TAG:-store-$(date -u +%Y%m%dT%H%M%SZ)}
work=$(mktemp -d /tmp/bench-store-XXXXXX)
trap 'rm -rf "$work"' EXIT

# The harness always runs wrk/sessions.lua: the fresh load runs a copy whose script never repeats an id.
cp -r "$bench" "$work/fresh"
chmod -R u+w "$work/fresh"
cat >"$work/fresh/wrk/sessions.lua" <<'LUA'
-- wrk script: every request carries a session id never sent before (a random prefix per wrk
-- process, then a counter), so every request starts a new session. done() prints the FCBENCH
-- line the harness reads.
local prefix, n = "", 0

function init(args)
   local f = io.open("/dev/urandom", "rb")
   prefix = (f:read(8):gsub(".", function(c) return string.format("%02x", c:byte()) end))
   f:close()
end

function request()
   n = n + 1
   local h = {}
   for k, v in pairs(wrk.headers) do h[k] = v end
   h["x-fc-session-id"] = prefix .. "-" .. n
   return wrk.format("GET", "/", h)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "FCBENCH requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d mean_us=%.1f "
      .. "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d bytes=%d\n",
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
      latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout, summary.bytes))
end
LUA

ports_free() { ! ss -Hltn | awk '{print $4}' | grep -qE ':(8080|8443|900[1-4]|9443)$'; }
wait_ports() { # until free for PORTS_QUIET seconds in a row, PORT_WAIT seconds at most
    local waited free=0
    for ((waited = 0; waited < ${PORT_WAIT:-600}; waited++)); do
        if ports_free; then
            ((++free >= ${PORTS_QUIET:-20})) && return 0
        else
            ((free == 0 && waited == 0)) && echo "# the harness' ports are in use: waiting"
            free=0
        fi
        sleep 1
    done
    return 1
}
# The last run measured our tetherd: it lived through the run (CPU and RSS were counted).
last_run_ours() { tail -1 "$csv" | awk -F, -v n="$1" '{ exit !($2 == n && $18 + 0 > 0 && $21 + 0 > 0) }'; }

echo "# bench-store TAG=$TAG REPS=$REPS LOADS=[$LOADS] DURATION=$DURATION WARMUP=$WARMUP"
for ((rep = 1; rep <= REPS; rep++)); do
    for load in $LOADS; do
        dir=$bench
        [[ $load == fresh ]] && dir=$work/fresh
        for store in memory redis; do
            for try in 1 2 3; do
                wait_ports || { echo "# the harness' ports stayed in use: giving up"; exit 1; }
                BENCH_DIR=$dir NAME=tether-$store TAG=$TAG-$load "$dir/run.sh" custom http \
                    "$DURATION" -- "$self" --serve "$build/tetherd" "$store" &&
                    last_run_ours "tether-$store" && break
                echo "# run failed or measured another proxy: rep=$rep load=$load store=$store"
                sleep 2
            done
            sleep 2
        done
    done
done

python3 - "$csv" "$TAG" "$LOADS" <<'PY'
import csv, statistics, sys
path, tag, loads = sys.argv[1], sys.argv[2], sys.argv[3].split()
# A run whose proxy died (another one answered on its port) counted no CPU: left out.
rows = [r for r in csv.DictReader(open(path)) if r["tag"].startswith(tag + "-")
        and float(r["proxy_cpu_s"] or 0) > 0 and float(r["proxy_peak_rss_kb"] or 0) > 0]
def med(name, load, field):
    v = [float(r[field]) for r in rows
         if r["target"] == name and r["tag"] == tag + "-" + load and r[field]]
    return (statistics.median(v), len(v)) if v else (None, 0)
print("| load | store | n | req/s | p99 ms | CPU us/req (tetherd + redis) | noisy runs |")
print("|---|---|---|---|---|---|---|")
for load in loads:
    for store in ("memory", "redis"):
        name = "tether-" + store
        rps, n = med(name, load, "rps")
        p99, _ = med(name, load, "p99_ms")
        cpu, _ = med(name, load, "proxy_cpu_us_per_req")
        noisy = sum(1 for r in rows if r["target"] == name and r["tag"] == tag + "-" + load
                    and r["noisy"] == "1")
        if rps is not None:
            print(f"| {load} | {store} | {n} | {rps:.0f} | {p99:.2f} | {cpu:.1f} | {noisy} |")
for load in loads:
    m, _ = med("tether-memory", load, "rps")
    r, _ = med("tether-redis", load, "rps")
    if m and r:
        print(f"{load}: redis/memory req/s {r / m:.2f}")
PY
