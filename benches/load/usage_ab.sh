#!/usr/bin/env bash
# What usage counting costs: keep-alive throughput and CPU per request of one keygate release
# binary run twice side by side, `[usage]` on and `enabled = false`, in interleaved rounds
# (on, off, on, off, ...), behind the same nginx upstream, with the load harness's keys.
#
#   benches/load/usage_ab.sh       KEYS [10000]  LUA_KEYS [2000]  ROUNDS [3]  DURATION [5s]
#                                  CONNS [32]    KEYGATE_BIN [target/release/keygate]
# Prints one line per run and the medians. Everything listens on 127.0.0.1; every process it
# starts is stopped on exit; the whole script is bounded by TOTAL_TIMEOUT [600 s].
set -euo pipefail
if [[ -z "${KG_AB_INNER:-}" ]]; then
  export KG_AB_INNER=1
  exec timeout -k 10 "${TOTAL_TIMEOUT:-600}" "$0" "$@"
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
KEYS="${KEYS:-10000}" LUA_KEYS="${LUA_KEYS:-2000}" ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5s}" CONNS="${CONNS:-32}"
BIN="${KEYGATE_BIN:-$ROOT/target/release/keygate}"
# shellcheck source=rig.sh
source "$HERE/rig.sh"

for mode in on off; do
  enabled=true; [[ $mode == off ]] && enabled=false
  start_keygate "$mode" "$BIN" "[usage]
enabled = $enabled
file = \"$WORK/$mode/usage.json\""
done

TICK=$(getconf CLK_TCK)
declare -A RPS CPU
for r in $(seq 1 "$ROUNDS"); do
  for mode in on off; do
    before=$(cpu_ticks "${PID[$mode]}")
    out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --timeout 5s -s "$WORK/keys/keys.lua" "http://127.0.0.1:${PORT[$mode]}/")
    after=$(cpu_ticks "${PID[$mode]}")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
    [[ -z "$non2xx" ]] || { echo "$mode: $non2xx non-2xx answers" >&2; exit 1; }
    us=$(python3 -c "print(round(($after - $before) / $TICK * 1e6 / $reqs, 2))")
    echo "round $r usage=$mode req/s=$rps cpu_us/req=$us"
    RPS[$mode]+="$rps "; CPU[$mode]+="$us "
  done
done
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" $1; }
for mode in on off; do
  echo "median usage=$mode req/s=$(median "${RPS[$mode]}") cpu_us/req=$(median "${CPU[$mode]}")"
done
# The counts are real: the "on" instance's file has them after its shutdown flush.
kill -TERM "${PID[on]}"; wait "${PID[on]}" 2>/dev/null || true
python3 - "$WORK/on/usage.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
print("usage=on counted", sum(r["requests"] for d in doc["days"].values() for r in d.values()), "requests")
PY
