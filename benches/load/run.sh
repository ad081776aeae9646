#!/usr/bin/env bash
# keygate load harness: direct vs nginx vs HAProxy vs keygate, same N keys, one command.
#
#   benches/load/run.sh                     # KEYS=10000 ROUNDS=3 DURATION=5s CONNS=32
#   KEYS=10000 ROUNDS=1 benches/load/run.sh # quicker
#
# Environment: KEYS (10000), ROUNDS (3), DURATION (wrk -d, 5s), CONNS (32), THREADS (1),
# CASES ("keepalive close post": HTTP/1.1 keep-alive, a new connection per request, and a
# 1 MB POST body over keep-alive),
# LUA_KEYS (2000: distinct keys the load cycles through), TOTAL_TIMEOUT (seconds, 1800),
# KEYGATE_LOG (warn), OUT (benches/load/results.json).
# Everything listens on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

# Bound the whole run: re-exec under timeout once.
if [[ -z "${KG_LOAD_INNER:-}" ]]; then
  export KG_LOAD_INNER=1
  exec timeout -k 15 "${TOTAL_TIMEOUT:-1800}" "$0" "$@"
fi

KEYS="${KEYS:-10000}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5s}"
CONNS="${CONNS:-32}"
THREADS="${THREADS:-1}"
LUA_KEYS="${LUA_KEYS:-2000}"
CASES="${CASES:-keepalive close post}"
for case in $CASES; do
  [[ "$case" == keepalive || "$case" == close || "$case" == post ]] ||
    { echo "[load] unknown case $case (keepalive, close, post)" >&2; exit 2; }
done
OUT="${OUT:-$HERE/results.json}"
export KEYGATE_LOG="${KEYGATE_LOG:-warn}"

log() { echo "[load] $*" >&2; }
die() { echo "[load] FAIL: $*" >&2; exit 1; }
skip() { echo "[load] SKIP: $*" >&2; exit 0; }

# ---- tools ------------------------------------------------------------------------------
need_install=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need_install+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || need_install+=(haproxy)
command -v wrk >/dev/null 2>&1 || need_install+=(wrk)
if ((${#need_install[@]})); then
  log "installing ${need_install[*]}"
  if ! { apt-get update && apt-get install -y "${need_install[@]}"; } >&2; then
    skip "could not install ${need_install[*]} (need root and Debian/Ubuntu apt); install them and rerun"
  fi
fi
export PATH="$PATH:/usr/sbin:/sbin"
for t in nginx haproxy wrk curl python3 cargo; do
  command -v "$t" >/dev/null 2>&1 || skip "$t not found"
done

# ---- work dir and cleanup -----------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/keygate-load.XXXXXX")"
PIDS=()
cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [[ -n "${KEEP_WORK:-}" ]]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # port name
  local i
  for i in $(seq 1 200); do
    if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/"; then return 0; fi
    sleep 0.05
  done
  die "$2 did not start listening on 127.0.0.1:$1 (logs in $WORK)"
}

# ---- build and keys -------------------------------------------------------------------------
log "cargo build --release"
(cd "$ROOT" && cargo build --release --quiet) >&2 || die "cargo build --release failed"
KEYGATE="$ROOT/target/release/keygate"
[[ -x "$KEYGATE" ]] || die "$KEYGATE not built"

log "generating $KEYS keys"
python3 "$HERE/gen_keys.py" "$KEYS" "$WORK" --lua-keys "$LUA_KEYS"
GOOD="$(head -n1 "$WORK/secrets.txt")"
BAD="kg_this_key_is_not_in_any_table_0000000000000"

UP_PORT=$(free_port); NGX_PORT=$(free_port); HAP_PORT=$(free_port); KG_PORT=$(free_port)
ROOT_USER=""; [[ $EUID -eq 0 ]] && ROOT_USER="user root;"

# ---- upstream: nginx return 200 -----------------------------------------------------------
mkdir -p "$WORK/up" "$WORK/ngx"
cat >"$WORK/up/nginx.conf" <<CONF
$ROOT_USER
worker_processes 1;
pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/up/body; proxy_temp_path $WORK/up/proxy;
  fastcgi_temp_path $WORK/up/fcgi; uwsgi_temp_path $WORK/up/uwsgi; scgi_temp_path $WORK/up/scgi;
  keepalive_requests 1000000;
  client_max_body_size 2m;
  server {
    listen 127.0.0.1:$UP_PORT;
    location / { return 200 "ok"; }
  }
}
CONF
nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" -t 2>"$WORK/up/t.log" || { cat "$WORK/up/t.log" >&2; die "upstream nginx -t"; }
nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" -g 'daemon off;' 2>>"$WORK/up/error.log" &
PIDS+=($!); UP_PID=$!
wait_port "$UP_PORT" "upstream nginx"

# ---- gate: nginx with a map ---------------------------------------------------------------
HASH_MAX=$((KEYS * 2)); ((HASH_MAX < 1024)) && HASH_MAX=1024
cat >"$WORK/ngx/nginx.conf" <<CONF
$ROOT_USER
worker_processes auto;
pid $WORK/ngx/nginx.pid;
error_log $WORK/ngx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/ngx/body; proxy_temp_path $WORK/ngx/proxy;
  fastcgi_temp_path $WORK/ngx/fcgi; uwsgi_temp_path $WORK/ngx/uwsgi; scgi_temp_path $WORK/ngx/scgi;
  keepalive_requests 1000000;
  client_max_body_size 2m;
  client_body_buffer_size 2m;  # 1 MB POST bodies buffered in memory, not in temp files
  map_hash_max_size $HASH_MAX;
  map_hash_bucket_size 512;
  map \$http_x_api_key \$key_ok {
    default 0;
    include $WORK/nginx-map.conf;
  }
  upstream backend {
    server 127.0.0.1:$UP_PORT;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$NGX_PORT;
    location / {
      if (\$key_ok = 0) { return 403; }
      proxy_set_header X-API-Key "";
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://backend;
    }
  }
}
CONF
nginx -p "$WORK/ngx" -c "$WORK/ngx/nginx.conf" -t 2>"$WORK/ngx/t.log" || { cat "$WORK/ngx/t.log" >&2; die "gate nginx -t"; }
if grep -qi "hash" "$WORK/ngx/t.log"; then cat "$WORK/ngx/t.log" >&2; die "nginx warns about its map hash sizes"; fi
nginx -p "$WORK/ngx" -c "$WORK/ngx/nginx.conf" -g 'daemon off;' 2>>"$WORK/ngx/error.log" &
PIDS+=($!); NGX_PID=$!
wait_port "$NGX_PORT" "nginx gate"
if grep -qi "hash" "$WORK/ngx/error.log"; then cat "$WORK/ngx/error.log" >&2; die "nginx warns about its map hash sizes"; fi

# ---- gate: HAProxy with a map file --------------------------------------------------------
cat >"$WORK/haproxy.cfg" <<CONF
global
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend gate
  bind 127.0.0.1:$HAP_PORT
  http-request deny deny_status 403 unless { req.hdr(x-api-key),map($WORK/haproxy.map) -m found }
  http-request del-header x-api-key
  default_backend up
backend up
  http-reuse always
  server s1 127.0.0.1:$UP_PORT maxconn 1000
CONF
haproxy -c -f "$WORK/haproxy.cfg" >"$WORK/haproxy-check.log" 2>&1 || { cat "$WORK/haproxy-check.log" >&2; die "haproxy -c"; }
haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
PIDS+=($!); HAP_PID=$!
wait_port "$HAP_PORT" "haproxy gate"

# ---- gate: keygate ------------------------------------------------------------------------
cat >"$WORK/keygate.toml" <<CONF
[server]
listen = "127.0.0.1:$KG_PORT"
failed_auth_limit = "1000000/second"

[[targets]]
name = "up"
upstream = "http://127.0.0.1:$UP_PORT"

CONF
cat "$WORK/keygate-keys.toml" >>"$WORK/keygate.toml"
KG_T0=$(date +%s.%N)
"$KEYGATE" run --config "$WORK/keygate.toml" >"$WORK/keygate.log" 2>&1 &
PIDS+=($!); KG_PID=$!
wait_port "$KG_PORT" "keygate"
KG_START_S=$(python3 -c "import time; print(round(time.time() - $KG_T0, 3))")
log "keygate loaded $KEYS keys and listened after ${KG_START_S}s"

# ---- correctness before load --------------------------------------------------------------
check() { # name port key expected
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "X-API-Key: $3" "http://127.0.0.1:$2/") || true
  [[ "$code" == "$4" ]] || die "$1 answered $code (expected $4) for key ${3:0:12}...; a misconfigured gate cannot be measured"
}
check direct "$UP_PORT" "$GOOD" 200
for g in "nginx $NGX_PORT" "haproxy $HAP_PORT" "keygate $KG_PORT"; do
  set -- $g
  check "$1" "$2" "$GOOD" 200
  check "$1" "$2" "$BAD" 403
  check "$1" "$2" "$(sed -n '$p' "$WORK/secrets.txt")" 200
done
log "all gates answer 200 to a valid key and 403 to a wrong one"

# ---- measurement --------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
gate_pids() { # name -> pids of the gate's processes
  case "$1" in
    direct) echo "" ;;
    nginx) echo "$NGX_PID $(pgrep -P "$NGX_PID" | tr '\n' ' ')" ;;
    haproxy) echo "$HAP_PID $(pgrep -P "$HAP_PID" | tr '\n' ' ')" ;;
    keygate) echo "$KG_PID" ;;
  esac
}
cpu_ticks() { local t=0 p s; for p in "$@"; do
  s=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || continue
  set -- $s; t=$((t + ${12} + ${13})); done; echo "$t"; }
# After ") " the fields start at field 3 (state), so utime (14) is ${12} and stime (15) ${13}.
rss_kb() { local t=0 p r; for p in "$@"; do
  r=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null) || continue
  t=$((t + ${r:-0})); done; echo "$t"; }

port_of() { case "$1" in direct) echo "$UP_PORT" ;; nginx) echo "$NGX_PORT" ;; haproxy) echo "$HAP_PORT" ;; keygate) echo "$KG_PORT" ;; esac; }

read -r LOAD1 _ </proc/loadavg
if python3 -c "import sys; sys.exit(0 if float('$LOAD1') > 0.5 else 1)"; then
  log "warning: load average $LOAD1 before the run: other work shares these cores, figures will be noisy"
fi
RAW="$WORK/raw.tsv"
: >"$RAW"
# Warm-up: a short run through each so first-connection costs are not in round 1.
for c in direct nginx haproxy keygate; do
  wrk -t1 -c4 -d1s -s "$WORK/keys.lua" "http://127.0.0.1:$(port_of "$c")/" >/dev/null 2>&1 || true
done
lua_of() { case "$1" in close) echo "$WORK/keys-close.lua" ;; post) echo "$WORK/keys-post.lua" ;; *) echo "$WORK/keys.lua" ;; esac; }
for r in $(seq 1 "$ROUNDS"); do
  for case in $CASES; do
    for c in direct nginx haproxy keygate; do
      pids=$(gate_pids "$c")
      t0=$(cpu_ticks $pids)
      out="$WORK/wrk-$case-$c-$r.txt"
      wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --timeout 5s --latency -s "$(lua_of "$case")" \
        "http://127.0.0.1:$(port_of "$c")/" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed against $c"; }
      t1=$(cpu_ticks $pids)
      rss=$(rss_kb $pids)
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$case" "$c" "$r" "$((t1 - t0))" "$CLK_TCK" "$rss" "$out" >>"$RAW"
      log "round $r/$ROUNDS $case $c: $(grep -m1 'Requests/sec' "$out" | tr -s ' ')"
    done
  done
done

python3 "$HERE/report.py" "$RAW" "$OUT" \
  --keys "$KEYS" --conns "$CONNS" --threads "$THREADS" --duration "$DURATION" --rounds "$ROUNDS" \
  --lua-keys "$LUA_KEYS" --cases "$CASES" --keygate-start-s "$KG_START_S"
