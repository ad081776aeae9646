#!/usr/bin/env bash
# Two keygate builds side by side: throughput, p99 and CPU per request of binary A and binary B,
# each on the same config behind the same nginx upstream, in interleaved rounds (A, B, B, A,
# A, B, ...: neither always goes first), for each case: keep-alive (wrk, one connection per wrk
# connection), close (a new connection per request) and h2c (the harness's loadgen, 4
# connections of 8 streams: LOADGEN_BIN, default target/release/examples/loadgen). For a lever of the request path, where
# this 2-core machine's noise is as large as the effect: quote the medians and the ratio.
#
#   benches/load/bin_ab.sh A_BIN B_BIN   CASES ["keepalive close"; or h2c]  ROUNDS [6]  DURATION [5s]
#                                        CONNS [32]  KEYS [10000]  LUA_KEYS [1000]
# Prints one line per run, then per case the medians (CPU and its user-space part per request)
# and B ÷ A. Everything listens on
# 127.0.0.1; every process it starts is stopped on exit; the whole script is bounded by
# TOTAL_TIMEOUT [1500 s].
set -euo pipefail
if [[ -z "${KG_AB_INNER:-}" ]]; then
  export KG_AB_INNER=1
  exec timeout -k 10 "${TOTAL_TIMEOUT:-1500}" "$0" "$@"
fi
[[ $# -eq 2 ]] || { echo "usage: $0 A_BIN B_BIN" >&2; exit 2; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KEYS="${KEYS:-10000}" LUA_KEYS="${LUA_KEYS:-1000}" ROUNDS="${ROUNDS:-6}"
DURATION="${DURATION:-5s}" CONNS="${CONNS:-32}" CASES="${CASES:-keepalive close}"
declare -A BIN=([A]="$(realpath "$1")" [B]="$(realpath "$2")")
LOADGEN="${LOADGEN_BIN:-$HERE/../../target/release/examples/loadgen}"
# shellcheck source=rig.sh
source "$HERE/rig.sh"

for side in A B; do
  start_keygate "$side" "${BIN[$side]}"
done

TICK=$(getconf CLK_TCK)
# wrk's p99 in ms, from its --latency table.
p99_ms() {
  awk '$1 == "99%" { v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
    print (u == "us" ? v / 1000 : u == "s" ? v * 1000 : v) }' <<<"$1"
}
declare -A RPS CPU USR P99
for r in $(seq 1 "$ROUNDS"); do
  order="A B"; (( r % 2 == 0 )) && order="B A"
  for c in $CASES; do
    lua="$WORK/keys/keys.lua"; [[ $c == close ]] && lua="$WORK/keys/keys-close.lua"
    for side in $order; do
      before=$(cpu_ticks "${PID[$side]}") ubefore=$(user_ticks "${PID[$side]}")
      if [[ $c == h2c ]]; then
        out=$("$LOADGEN" --url "http://127.0.0.1:${PORT[$side]}/" --proto h2c --keys "$WORK/keys/load-keys.txt" \
          --connections 4 --streams 8 --duration "$DURATION")
        after=$(cpu_ticks "${PID[$side]}") uafter=$(user_ticks "${PID[$side]}")
        read -r reqs rps p99 non2xx < <(python3 -c 'import json,sys
d = json.loads(sys.argv[1])
print(d["requests"], d["rps"], d["latency_ms"]["p99"], d["non_2xx"] or "")' "$out")
      else
        out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --timeout 5s --latency -s "$lua" "http://127.0.0.1:${PORT[$side]}/")
        after=$(cpu_ticks "${PID[$side]}") uafter=$(user_ticks "${PID[$side]}")
        reqs=$(awk '/requests in/ {print $1}' <<<"$out")
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
        p99=$(p99_ms "$out")
      fi
      [[ -z "$non2xx" ]] || { echo "$side $c: $non2xx non-2xx answers" >&2; exit 1; }
      us=$(python3 -c "print(round(($after - $before) / $TICK * 1e6 / $reqs, 2))")
      uus=$(python3 -c "print(round(($uafter - $ubefore) / $TICK * 1e6 / $reqs, 2))")
      echo "round $r $c $side req/s=$rps p99_ms=$p99 cpu_us/req=$us user_us/req=$uus"
      RPS[$c$side]+="$rps "; CPU[$c$side]+="$us "; USR[$c$side]+="$uus "; P99[$c$side]+="$p99 "
    done
  done
done
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" $1; }
for c in $CASES; do
  for side in A B; do
    echo "median $c $side req/s=$(median "${RPS[$c$side]}") p99_ms=$(median "${P99[$c$side]}") cpu_us/req=$(median "${CPU[$c$side]}") user_us/req=$(median "${USR[$c$side]}")"
  done
  python3 - "${RPS[${c}A]}" "${RPS[${c}B]}" "$c" <<'PY'
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]
b = [float(x) for x in sys.argv[2].split()]
# Per round, B over A (the two ran back to back), then the median of those.
per_round = sorted(y / x for x, y in zip(a, b))
print(f"ratio {sys.argv[3]} B/A median-of-medians={statistics.median(b) / statistics.median(a):.3f} "
      f"per-round median={statistics.median(per_round):.3f} range={per_round[0]:.3f}-{per_round[-1]:.3f}")
PY
done
