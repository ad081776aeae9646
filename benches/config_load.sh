#!/usr/bin/env bash
# Load time and peak memory of `keygate check` on generated configs of N keys.
#
# Usage: benches/config_load.sh [N ...]            (default: 100000 1000000)
# Env:   RUNS=5      runs per size; the median is reported
#        TIMEOUT=900 seconds before one run is killed; a size that times out is not run again
#        KEEP=1      keep the generated files (printed temp dir) instead of deleting them
#        SERVE=1     also start `keygate run` once per size (on 127.0.0.1:0) and report its
#                    resident memory once it listens: what a server holds after the load
#
# Builds target/release/keygate, writes each config with benches/gen_config.py into a temp
# dir, runs `/usr/bin/time -v keygate check --config FILE` RUNS times and prints the median
# wall time and the median of "Maximum resident set size". `check` is the same load (read,
# parse, validate, build the snapshot and its hash table) that `keygate run` does at startup.
# Everything stays local; nothing is downloaded. Needs python3 and GNU time
# (apt-get install -y time).
set -euo pipefail

RUNS=${RUNS:-5}
TIMEOUT=${TIMEOUT:-900}
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(100000 1000000)

root=$(cd "$(dirname "$0")/.." && pwd)
[ -x /usr/bin/time ] || { echo "needs GNU time: apt-get install -y time" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/keygate-load.XXXXXX")
[ "${KEEP:-0}" = 1 ] && echo "keeping files in $tmp"
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
    if [ "${KEEP:-0}" != 1 ]; then rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

(cd "$root" && cargo build --release --quiet)
bin="$root/target/release/keygate"

# Median of the numbers on stdin, one per line.
median() {
    sort -g | awk '{v[NR] = $1} END {
        if (NR == 0) { print "n/a"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# "Elapsed (wall clock) time (h:mm:ss or m:ss): 1:02.03" -> seconds.
wall_seconds() {
    awk -F': ' '/Elapsed \(wall clock\)/ {
        n = split($NF, p, ":"); s = 0
        for (i = 1; i <= n; i++) s = s * 60 + p[i]
        print s }' "$1"
}

# `keygate run` on a copy of $2 listening on port 0: prints VmRSS and VmHWM once it listens.
serve() {
    local n=$1 cfg=$tmp/serve$1.toml log=$tmp/serve.log waited=0
    sed 's/^listen = .*/listen = "127.0.0.1:0"/' "$2" >"$cfg"
    : >"$log"
    KEYGATE_LOG=info "$bin" run --config "$cfg" >/dev/null 2>"$log" &
    pid=$!
    until grep -q "keygate listening" "$log"; do
        if ! kill -0 "$pid" 2>/dev/null || [ "$waited" -ge "$((TIMEOUT * 10))" ]; then
            echo "serve $n: keygate run did not start listening:" >&2
            tail -3 "$log" >&2
            kill "$pid" 2>/dev/null || true
            pid=""
            return 0
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    awk -v n="$n" '/^VmRSS/ { r = $2 } /^VmHWM/ { h = $2 }
        END { printf "serve %s: keygate run resident after load %.1f MB (peak %.1f MB)\n", n, r / 1024, h / 1024 }' \
        "/proc/$pid/status"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=""
    rm -f "$cfg"
}

printf '%-9s %9s %8s %6s %12s %14s %s\n' keys file_MB gen_s runs median_s median_RSS_MB "all runs (s / MB)"
for n in "${sizes[@]}"; do
    cfg="$tmp/keys$n.toml"
    t0=$(date +%s.%N)
    python3 "$root/benches/gen_config.py" "$n" --out "$cfg"
    gen=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    size=$(awk -v b="$(stat -c %s "$cfg")" 'BEGIN { printf "%.1f", b / 1048576 }')
    : >"$tmp/wall" && : >"$tmp/rss" && runs=""
    for ((r = 1; r <= RUNS; r++)); do
        out="$tmp/time.$n.$r"
        # timeout signals its whole process group, so keygate dies with time(1) on a timeout.
        if ! timeout -k 10 "$TIMEOUT" /usr/bin/time -v -o "$out" \
            "$bin" check --config "$cfg" >/dev/null 2>"$tmp/stderr"; then
            if [ ! -s "$out" ]; then
                runs="$runs timed-out(>${TIMEOUT}s)"
                break
            fi
            echo "keygate check failed on $cfg:" >&2
            head -5 "$tmp/stderr" >&2
            exit 1
        fi
        w=$(wall_seconds "$out")
        m=$(awk -F': ' '/Maximum resident set size/ { printf "%.1f", $NF / 1024 }' "$out")
        echo "$w" >>"$tmp/wall" && echo "$m" >>"$tmp/rss"
        runs="$runs $w/$m"
    done
    printf '%-9s %9s %8s %6s %12s %14s %s\n' "$n" "$size" "$gen" "$(wc -l <"$tmp/wall")" \
        "$(median <"$tmp/wall")" "$(median <"$tmp/rss")" "${runs# }"
    [ "${SERVE:-0}" = 1 ] && serve "$n" "$cfg"
    rm -f "$cfg"
done
