#!/usr/bin/env bash
# Instructions per request with usage counting on and off, under callgrind (deterministic, so
# unlike wall-clock numbers it does not move with the machine's other load): keygate runs under
# valgrind, its counters are zeroed after a warm-up, wrk sends keep-alive requests for DURATION,
# and the counters are dumped; Ir / requests is the cost per request, the whole process counted.
#
#   benches/load/usage_instructions.sh     KEYS [10000] LUA_KEYS [2000] DURATION [10s]
#                                          FLUSH [1h] KEYGATE_BIN [target/release/keygate]
#                                          QUOTA [none]
# QUOTA (e.g. "1000000000/month") puts that quota on every key of the "on" run too: usage
# counting and quotas together against neither.
# FLUSH is `[usage] flush_interval`: at the default 1h no flush falls in the measured window,
# so the numbers are the request path's own; a flush (a background task) is measured apart.
set -euo pipefail
if [[ -z "${KG_CG_INNER:-}" ]]; then
  export KG_CG_INNER=1
  exec timeout -k 10 "${TOTAL_TIMEOUT:-600}" "$0" "$@"
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
KEYS="${KEYS:-10000}" LUA_KEYS="${LUA_KEYS:-2000}" DURATION="${DURATION:-10s}" FLUSH="${FLUSH:-1h}"
BIN="${KEYGATE_BIN:-$ROOT/target/release/keygate}"
# shellcheck source=rig.sh
source "$HERE/rig.sh"
QUOTA="${QUOTA:-}"
if [[ -n "$QUOTA" ]]; then
  sed "/^\[\[keys\]\]\$/a quota = \"$QUOTA\"" "$WORK/keys/keygate-keys.toml" >"$WORK/keys/quota-keys.toml"
fi

for mode in on off; do
  port=$(free_port)
  enabled=true; [[ $mode == off ]] && enabled=false
  KEYS_FILE="$WORK/keys/keygate-keys.toml"
  [[ $mode == on && -n "$QUOTA" ]] && KEYS_FILE="$WORK/keys/quota-keys.toml"
  mkdir -p "$WORK/$mode"
  cat >"$WORK/$mode/keygate.toml" <<TOML
keys_file = "$KEYS_FILE"
[server]
listen = "127.0.0.1:$port"
[log]
access = "off"
[usage]
enabled = $enabled
flush_interval = "$FLUSH"
file = "$WORK/$mode/usage.json"
[[targets]]
name = "main"
upstream = "http://127.0.0.1:$UP"
TOML
  callgrind_per_request "usage=$mode" "$WORK/$mode" "$port"
done
