#!/usr/bin/env bash
# Instructions per request with the access log off and on (issue 18), under callgrind
# (deterministic, unlike wall-clock figures on a shared machine): keygate runs under valgrind,
# its counters are zeroed after a warm-up, wrk sends keep-alive requests for DURATION, and the
# counters are dumped; Ir / requests is the cost per request, every thread of the process counted
# (the access log's writer or flusher thread included). Usage counting is off in every mode, so
# the difference between modes is the log's own.
#
#   benches/load/access_log_instructions.sh   KEYS [10000] LUA_KEYS [2000] DURATION [10s]
#                                             MODES ["off json"] KEYGATE_BIN [target/release/keygate]
# MODES: off (access = "off"), json (a file, JSON lines), text (a file, format = "text").
set -euo pipefail
if [[ -z "${KG_CG_INNER:-}" ]]; then
  export KG_CG_INNER=1
  exec timeout -k 10 "${TOTAL_TIMEOUT:-900}" "$0" "$@"
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
KEYS="${KEYS:-10000}" LUA_KEYS="${LUA_KEYS:-2000}" DURATION="${DURATION:-10s}" MODES="${MODES:-off json}"
BIN="${KEYGATE_BIN:-$ROOT/target/release/keygate}"
# shellcheck source=rig.sh
source "$HERE/rig.sh"

for mode in $MODES; do
  port=$(free_port)
  case $mode in
    off) log='access = "off"' ;;
    json) log="access = \"$WORK/$mode/access.log\"" ;;
    text) log="access = \"$WORK/$mode/access.log\"
format = \"text\"" ;;
    *) echo "unknown mode $mode (off, json, text)" >&2; exit 2 ;;
  esac
  mkdir -p "$WORK/$mode"
  cat >"$WORK/$mode/keygate.toml" <<TOML
keys_file = "$WORK/keys/keygate-keys.toml"
[server]
listen = "127.0.0.1:$port"
[log]
$log
[usage]
enabled = false
[[targets]]
name = "main"
upstream = "http://127.0.0.1:$UP"
TOML
  callgrind_per_request "access_log=$mode" "$WORK/$mode" "$port"
done
