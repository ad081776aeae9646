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
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 1200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

python3 "$HERE/gen_keys.py" "$KEYS" "$WORK/keys" --lua-keys "$LUA_KEYS" >/dev/null
UP=$(free_port)
mkdir -p "$WORK/up"
cat >"$WORK/up/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/up; proxy_temp_path $WORK/up; fastcgi_temp_path $WORK/up;
  uwsgi_temp_path $WORK/up; scgi_temp_path $WORK/up;
  server { listen 127.0.0.1:$UP; location / { return 200 "ok\n"; } }
}
CONF
nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
wait_port "$UP"

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
  KEYGATE_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/$mode/cg.%p" \
    "$BIN" run --config "$WORK/$mode/keygate.toml" 2>"$WORK/$mode/log" &
  pid=$!
  PIDS+=($pid)
  wait_port "$port"
  wrk -t1 -c8 -d3s -s "$WORK/keys/keys.lua" "http://127.0.0.1:$port/" >/dev/null
  callgrind_control --zero "$pid" >/dev/null
  out=$(wrk -t1 -c8 -d"$DURATION" --timeout 10s -s "$WORK/keys/keys.lua" "http://127.0.0.1:$port/")
  callgrind_control --dump="measured" "$pid" >/dev/null
  sleep 1
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  last=$(ls -t "$WORK/$mode"/cg.* | head -1)
  ir=$(awk '/^summary:|^totals:/ {print $2; exit}' "$last")
  [[ -n "${CG_KEEP:-}" ]] && cp "$last" "$CG_KEEP.$mode"
  echo "access_log=$mode requests=$reqs instructions=$ir per_request=$(python3 -c "print(round($ir / $reqs))")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
