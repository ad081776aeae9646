#!/usr/bin/env bash
# Load time and peak memory of `keygate check` on generated configs of N keys.
#
# Usage: benches/config_load.sh [N ...]            (default: 100000 1000000)
# Env:   RUNS=5      runs per size; the median is reported
#        TIMEOUT=900 seconds before one run is killed; a size that times out is not run again
#        KEEP=1      keep the generated files (printed temp dir) instead of deleting them
#        KEYGATE_BIN=path  measure this binary (e.g. an older build) instead of building one
#        SERVE=1     also start `keygate run` RUNS times per size and report, as medians, the
#                    time from launch (exec) to the first HTTP answer on the proxy port, and
#                    the resident memory (VmRSS) just after that answer and the peak (VmHWM),
#                    from /proc/PID/status: what a server costs to start and holds after the load
#
# Builds target/release/keygate, writes each config with benches/gen_config.py into a temp
# dir, runs `/usr/bin/time -v keygate check --config FILE` RUNS times and prints the median
# wall time and the median of "Maximum resident set size". `check` is the same load (read,
# parse, validate, build the snapshot and its hash table) that `keygate run` does at startup.
# SERVE=1 measures `keygate run` itself: the config is copied with `listen` set to a free port
# of 127.0.0.1, keygate is started by a small python3 poller (benches/first_answer.py) that
# tries that port every 5 ms (a bounded loop: TIMEOUT) with `GET /` carrying an unknown key
# until a status line comes back (403 key_invalid: the key table was looked up), then reads
# /proc/PID/status and stops keygate with SIGTERM.
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
cleanup() {
    if [ "${KEEP:-0}" != 1 ]; then rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${KEYGATE_BIN:-}" ]; then
    bin=$KEYGATE_BIN
else
    (cd "$root" && cargo build --release --quiet)
    bin="$root/target/release/keygate"
fi

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

# `keygate run` on a copy of $2 RUNS times: launch -> first answer, resident after it, peak.
serve() {
    local n=$1 out=$tmp/serve.$1 r line
    : >"$out"
    for ((r = 1; r <= RUNS; r++)); do
        if ! line=$(python3 "$root/benches/first_answer.py" --timeout "$TIMEOUT" "$bin" "$2"); then
            echo "serve $n: keygate run gave no answer" >&2
            return 0
        fi
        echo "$line" >>"$out"
    done
    # Lines: "seconds rss_MB peak_MB".
    printf 'serve %s: launch to first answer median %s s, resident after it %s MB, peak %s MB (all: %s)\n' \
        "$n" "$(cut -d' ' -f1 "$out" | median)" "$(cut -d' ' -f2 "$out" | median)" \
        "$(cut -d' ' -f3 "$out" | median)" "$(awk '{ printf "%s%s/%s/%s", (NR > 1 ? " " : ""), $1, $2, $3 }' "$out")"
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
