# Sourced by the small single-gate benches (usage_ab.sh, bin_ab.sh, usage_instructions.sh,
# access_log_instructions.sh): a work dir removed on exit with every process in PIDS (work.sh),
# free ports, KEYS keys (LUA_KEYS of them in the load) in $WORK/keys, and the upstream: one nginx
# worker answering 200 "ok" on 127.0.0.1:$UP; `start_keygate` and `cpu_ticks` for the A/B
# benches. Needs HERE (benches/load), KEYS and LUA_KEYS.
# shellcheck source=work.sh
source "$HERE/work.sh"
# Below the ephemeral range, so no outgoing connection takes it before its gate binds it.
free_port() { python3 "$HERE/free_port.py" "$WORK/ports-used"; }

python3 "$HERE/gen_keys.py" "$KEYS" "$WORK/keys" --lua-keys "$LUA_KEYS" >/dev/null

UP=$(free_port)
mkdir -p "$WORK/up"
cat >"$WORK/up/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/up; proxy_temp_path $WORK/up; fastcgi_temp_path $WORK/up;
  uwsgi_temp_path $WORK/up; scgi_temp_path $WORK/up;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "ok\n"; } }
}
CONF
nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
wait_port "$UP"

# callgrind_per_request LABEL DIR PORT: `keygate run` on DIR/keygate.toml (listening on PORT)
# under callgrind; after a 3 s warm-up its counters are zeroed, wrk sends keep-alive requests
# for DURATION, the counters are dumped, and "LABEL requests=N instructions=I per_request=I/N"
# is printed (the whole process, every thread). CG_KEEP=PATH keeps the dump as PATH.MODE.
callgrind_per_request() {
  local label=$1 dir=$2 port=$3 pid out reqs last ir
  KEYGATE_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$dir/cg.%p" \
    "$BIN" run --config "$dir/keygate.toml" 2>"$dir/log" &
  pid=$!
  PIDS+=($pid)
  wait_port "$port"
  wrk -t1 -c8 -d3s -s "$WORK/keys/keys.lua" "http://127.0.0.1:$port/" >/dev/null
  callgrind_control --zero "$pid" >/dev/null
  out=$(wrk -t1 -c8 -d"$DURATION" --timeout 10s -s "$WORK/keys/keys.lua" "http://127.0.0.1:$port/")
  callgrind_control --dump="measured" "$pid" >/dev/null
  sleep 1
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  # The dump after the zeroing: the newest file.
  last=$(ls -t "$dir"/cg.* | head -1)
  ir=$(awk '/^summary:|^totals:/ {print $2; exit}' "$last")
  [[ -n "${CG_KEEP:-}" ]] && cp "$last" "$CG_KEEP.${label#*=}"
  echo "$label requests=$reqs instructions=$ir per_request=$(python3 -c "print(round($ir / $reqs))")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# start_keygate NAME BIN [TOML]: BIN (`keygate run`) in $WORK/NAME on the rig's keys and
# upstream, access log off, TOML added before the target; listening on ${PORT[NAME]}, its pid
# ${PID[NAME]} (and in PIDS), warmed up with 1 s of wrk.
declare -gA PORT PID
start_keygate() {
  local name=$1 bin=$2 extra=${3:-}
  PORT[$name]=$(free_port)
  mkdir -p "$WORK/$name"
  cat >"$WORK/$name/keygate.toml" <<TOML
keys_file = "$WORK/keys/keygate-keys.toml"
[server]
listen = "127.0.0.1:${PORT[$name]}"
[log]
access = "off"
$extra
[[targets]]
name = "main"
upstream = "http://127.0.0.1:$UP"
TOML
  KEYGATE_LOG=warn "$bin" run --config "$WORK/$name/keygate.toml" 2>"$WORK/$name/log" &
  PID[$name]=$!
  PIDS+=($!)
  wait_port "${PORT[$name]}"
  wrk -t1 -c4 -d1s -s "$WORK/keys/keys.lua" "http://127.0.0.1:${PORT[$name]}/" >/dev/null
}

# cpu_ticks PID: the process's user + system time so far, in clock ticks (getconf CLK_TCK).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# user_ticks PID: the user-space part of it (issue 18 bounds user space per request).
user_ticks() { awk '{print $14}' "/proc/$1/stat"; }
