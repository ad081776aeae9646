#!/usr/bin/env bash
# keygate load harness: direct vs nginx vs HAProxy vs keygate, same N keys, one command;
# keygate alone vs keygate with its rate limits shared through Redis ([cluster]); and forward-auth:
# keygate's [verify] listener alone, and nginx auth_request -> keygate -> upstream against
# nginx's own map gate.
#
#   benches/load/run.sh                          # the standard run (see docs/performance.md)
#   KEYS=10000 ROUNDS=1 benches/load/run.sh      # quicker: one table size, one round
#   SMOKE=1 benches/load/run.sh                  # every code path in ~40 s: 1 s runs, tiny tables
#   LOGS=both CASES=keepalive benches/load/run.sh   # each gate with its access log off, then on
#
# Environment (defaults in brackets; SMOKE=1 changes the ones marked *):
#   KEYS*        table sizes, each measured with every gate restarted ["10000 1000000"]
#   CASES        ["keepalive close h2c post rate cluster fwdauth"]: HTTP/1.1 keep-alive (wrk), a
#                new connection per request (wrk), h2c at saturation (loadgen), a 1 MB POST body
#                over keep-alive (wrk), a constant rate over HTTP/1.1 keep-alive (loadgen),
#                cluster: the keep-alive load through three keygates whose keys all have a
#                rate_limit too high to refuse (CLUSTER_RATE): local (no [cluster]), strict and
#                local-sync ([cluster] on a redis-server of its own); and fwdauth: the keep-alive
#                load (wrk) through direct, the nginx map gate, nginx-authreq (nginx auth_request
#                -> keygate's [verify] listener -> upstream, the recipe of docs/forward-auth.md),
#                keygate (proxy) and verify (wrk straight at the [verify] listener: the decision
#                alone, nothing forwarded); cluster and fwdauth at the first table size only
#   BIG_CASES*   the cases run at the table sizes after the first [= CASES without cluster and
#                fwdauth]
#   CLUSTER_RATE ["100000000/second"] the rate_limit every key gets in the cluster case
#   CLUSTER_TIMEOUT* [unset: keygate's default; SMOKE: 2s] the cluster case's [cluster] timeout
#   ROUNDS* [3]  DURATION* [5s]  CONNS [32]  THREADS [1] (wrk -t, loadgen --threads)
#   H2_CONNS [4] H2_STREAMS [8]  h2c: connections x concurrent streams (32 in flight, like CONNS)
#   RATE         constant rate in req/s [unset: RATE_FRACTION of nginx's keep-alive throughput,
#                the median of the same table size's keepalive case]  RATE_FRACTION [0.5]
#   RATE_MAX*    cap on the derived rate [none]
#   LUA_KEYS* [2000]  distinct keys the load cycles through, spread over the whole table
#   WARMUP* [1s] a short wrk run through each config before the first round (0: none)
#   KEYGATE_BIN, LOADGEN_BIN  prebuilt binaries [unset: cargo build --release (SMOKE: debug)]
#   KEY_CACHE [target/load-keys]  generated key sets, reused by N and generator ("" = no cache)
#   TOTAL_TIMEOUT* [2400 s] bound on the whole script   KEEP_WORK=1 keeps configs and logs
#   NO_INSTALL=1 skips (exit 0) instead of apt-get installing nginx-light, haproxy, wrk; a
#                missing redis-server only leaves the cluster case out
#   LOGS* [0]    0: every gate with its access log off; 1: the logs variant only, every gate
#                (nginx, HAProxy, keygate; not the upstream) writing one access log line per
#                request to a file in the work dir: nginx `access_log FILE kg buffer=64k
#                flush=1s` (a JSON log_format with keygate's fields), HAProxy `log stdout` with a
#                log-format of those fields, its stdout appended to a file, keygate
#                `[log] access = FILE` (JSON); both: each table size runs its cases with logs off,
#                then again with the gates restarted with logs on. The logs variant's cases are
#                reported as CASE+logs (keepalive+logs, ...). After every logs run each gate's
#                file must hold one line per request (give or take those in flight), or the run
#                fails (HAProxy's, which drops lines under load, is only warned about); the
#                files are emptied after each check. SMOKE: both.
#   LOGS_CASES*  the cases the logs variant runs [= CASES and BIG_CASES; SMOKE: keepalive]
#   KG_ACCESS_LOG=1 (older switch) keygate alone writes its access log to a file, in the plain
#                variant; the nginx and HAProxy gates log nothing
#   KEYGATE_LOG [warn]  OUT [benches/load/results.json; SMOKE: benches/load/results-smoke.json]
# Everything listens on 127.0.0.1 only; every process started here is stopped on exit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

SMOKE="${SMOKE:-}"
[[ "$SMOKE" == 0 ]] && SMOKE=""
if [[ -n "$SMOKE" ]]; then
  : "${KEYS:=100 1000}" "${BIG_CASES:=keepalive}" "${ROUNDS:=1}" "${DURATION:=1s}"
  : "${LUA_KEYS:=100}" "${WARMUP:=0}" "${RATE_MAX:=1000}" "${TOTAL_TIMEOUT:=300}"
  # The smoke run checks that every path works, on a machine busy with the rest of the tests:
  # a Redis answer late by 50 ms there is load, not a finding (the 503s would fail the check).
  : "${CLUSTER_TIMEOUT:=2s}"
  : "${LOGS:=both}" "${LOGS_CASES:=keepalive}"
  : "${OUT:=$HERE/results-smoke.json}"
fi

# Bound the whole run: re-exec under timeout once.
if [[ -z "${KG_LOAD_INNER:-}" ]]; then
  export KG_LOAD_INNER=1
  exec timeout -k 15 "${TOTAL_TIMEOUT:-2400}" "$0" "$@"
fi

KEYS="${KEYS:-10000 1000000}"
CASES="${CASES:-keepalive close h2c post rate cluster fwdauth}"
without_case() { # case cases...: the cases but that one
  local drop=$1 c out=""; shift
  for c in "$@"; do [[ $c == "$drop" ]] || out+="${out:+ }$c"; done
  echo "$out"
}
NOT_CLUSTER=$(without_case cluster $CASES)  # cluster and fwdauth run at the first size only
BIG_CASES="${BIG_CASES-$(without_case fwdauth $NOT_CLUSTER)}"
CLUSTER_RATE="${CLUSTER_RATE:-100000000/second}"
CLUSTER_TIMEOUT="${CLUSTER_TIMEOUT:-}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5s}"
CONNS="${CONNS:-32}"
THREADS="${THREADS:-1}"
H2_CONNS="${H2_CONNS:-4}"
H2_STREAMS="${H2_STREAMS:-8}"
RATE="${RATE:-}"
RATE_FRACTION="${RATE_FRACTION:-0.5}"
RATE_MAX="${RATE_MAX:-}"
LUA_KEYS="${LUA_KEYS:-2000}"
WARMUP="${WARMUP:-1s}"
KEY_CACHE="${KEY_CACHE-$ROOT/target/load-keys}"
OUT="${OUT:-$HERE/results.json}"
LOGS="${LOGS:-0}"
case "$LOGS" in
  0 | "") VARIANTS="plain" ;;
  1) VARIANTS="logs" ;;
  both) VARIANTS="plain logs" ;;
  *) echo "[load] LOGS must be 0, 1 or both, got $LOGS" >&2; exit 2 ;;
esac
LOGS_CASES="${LOGS_CASES-$CASES $BIG_CASES}"
export KEYGATE_LOG="${KEYGATE_LOG:-warn}"
ALL_CASES="keepalive close h2c post rate cluster fwdauth"
for case in $CASES $BIG_CASES $LOGS_CASES; do
  [[ " $ALL_CASES " == *" $case "* ]] || { echo "[load] unknown case $case ($ALL_CASES)" >&2; exit 2; }
done
for n in $KEYS; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "[load] KEYS must be positive integers, got $n" >&2; exit 2; }
done
[[ -n "$KEYS" && -n "$CASES" ]] || { echo "[load] KEYS and CASES must not be empty" >&2; exit 2; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "[load] ROUNDS must be a positive integer" >&2; exit 2; }

log() { echo "[load] $*" >&2; }
die() { echo "[load] FAIL: $*" >&2; exit 1; }
skip() { echo "[load] SKIP: $*" >&2; exit 0; }

# ---- tools ------------------------------------------------------------------------------
need_install=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need_install+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || need_install+=(haproxy)
command -v wrk >/dev/null 2>&1 || need_install+=(wrk)
if [[ " $CASES " == *" cluster "* ]] && ! command -v redis-server >/dev/null 2>&1; then
  if [[ -n "${NO_INSTALL:-}" ]]; then
    log "redis-server not installed (NO_INSTALL is set): leaving the cluster case out"
    CASES=$(without_case cluster $CASES)
    [[ -n "$CASES" ]] || skip "redis-server not installed (NO_INSTALL is set) and no other case asked for"
  else
    need_install+=(redis-server)  # our own redis-server on a free port; the package's own is unused
  fi
fi
if ((${#need_install[@]})); then
  [[ -n "${NO_INSTALL:-}" ]] && skip "${need_install[*]} not installed (NO_INSTALL is set)"
  log "installing ${need_install[*]}"
  if ! { apt-get update && apt-get install -y "${need_install[@]}"; } >&2; then
    skip "could not install ${need_install[*]} (need root and Debian/Ubuntu apt); install them and rerun"
  fi
fi
export PATH="$PATH:/usr/sbin:/sbin"
for t in nginx haproxy wrk curl python3; do
  command -v "$t" >/dev/null 2>&1 || skip "$t not found"
done
if [[ " $CASES " == *" cluster "* ]]; then
  for t in redis-server redis-cli; do command -v "$t" >/dev/null 2>&1 || skip "$t not found"; done
fi
if [[ " $CASES " == *" fwdauth "* ]] && ! nginx -V 2>&1 | grep -q http_auth_request_module; then
  log "this nginx has no auth_request module: leaving the fwdauth case out"
  CASES=$(without_case fwdauth $CASES)
  [[ -n "$CASES" ]] || skip "nginx has no auth_request module and no other case asked for"
fi
CARGO="${CARGO:-cargo}"
if [[ -z "${KEYGATE_BIN:-}" || -z "${LOADGEN_BIN:-}" ]]; then
  command -v "$CARGO" >/dev/null 2>&1 || skip "cargo not found (or set KEYGATE_BIN and LOADGEN_BIN)"
fi
if [[ " $CASES $BIG_CASES " == *" h2c "* ]] && ! curl -V | grep -qw HTTP2; then
  skip "this curl has no HTTP/2, which the h2c checks need (or leave h2c out of CASES)"
fi

# ---- work dir and cleanup -----------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/keygate-load.XXXXXX")"
PIDS=()
alive() { # pid: running (not gone, not a zombie)
  local s
  s=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ "${s:0:1}" != Z ]]
}
stop_pids() { # pids: TERM them and their children, wait up to 5 s, then KILL what is left
  local all=() p i left
  for p in "$@"; do all+=("$p" $(pgrep -P "$p" 2>/dev/null || true)); done
  ((${#all[@]})) || return 0
  for p in "${all[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for i in $(seq 1 50); do
    left=0
    for p in "${all[@]}"; do alive "$p" && left=1; done
    ((left)) || break
    sleep 0.1
  done
  for p in "${all[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}
cleanup() {
  local rc=$?
  trap - EXIT TERM INT
  ((${#PIDS[@]})) && stop_pids "${PIDS[@]}"
  if [[ -n "${KEEP_WORK:-}" ]]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# Below the ephemeral range, so no outgoing connection takes it before its gate binds it.
free_port() { python3 "$HERE/free_port.py" "$WORK/ports-used"; }

wait_port() { # port name pid: up to 120 s (a million keys on a busy machine take a while)
  local deadline=$((SECONDS + 120))
  while ((SECONDS < deadline)); do
    if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/"; then return 0; fi
    alive "$3" || die "$2 exited before it listened on 127.0.0.1:$1 (KEEP_WORK=1 keeps its logs)"
    sleep 0.05
  done
  die "$2 did not start listening on 127.0.0.1:$1 within 120 s (KEEP_WORK=1 keeps its logs)"
}

# ---- build --------------------------------------------------------------------------------
T_START=$SECONDS
PROFILE_ARGS=(--release); PROFILE=release
[[ -n "$SMOKE" ]] && { PROFILE_ARGS=(); PROFILE=debug; }
cargo_build() { # args...: prints the executables cargo built, one a line
  (cd "$ROOT" && "$CARGO" build "${PROFILE_ARGS[@]}" --message-format=json-render-diagnostics "$@") |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l) if l.startswith("{") else {}
    if m.get("reason") == "compiler-artifact" and m.get("executable"): print(m["executable"])'
}
if [[ -z "${KEYGATE_BIN:-}" ]]; then
  log "cargo build ($PROFILE) keygate"
  KEYGATE_BIN=$(cargo_build --bin keygate | grep '/keygate$' | head -n1) || die "cargo build of keygate failed"
fi
if [[ -z "${LOADGEN_BIN:-}" ]]; then
  log "cargo build ($PROFILE) --example loadgen"
  LOADGEN_BIN=$(cargo_build --example loadgen | grep '/loadgen$' | head -n1) || die "cargo build of loadgen failed"
fi
[[ -x "$KEYGATE_BIN" ]] || die "keygate binary $KEYGATE_BIN not found"
[[ -x "$LOADGEN_BIN" ]] || die "loadgen binary $LOADGEN_BIN not found"
log "keygate: $KEYGATE_BIN; loadgen: $LOADGEN_BIN"

# ---- keys (cached by N, LUA_KEYS and the generator's own text) ----------------------------
keys_dir() { # N -> prints the directory with gen_keys.py's files for N keys
  local n=$1 dir tmp tag
  if [[ -z "$KEY_CACHE" ]]; then
    dir="$WORK/keys-$n"
    python3 "$HERE/gen_keys.py" "$n" "$dir" --lua-keys "$LUA_KEYS" >&2 || die "gen_keys.py $n"
    echo "$dir"; return
  fi
  tag=$(sha256sum "$HERE/gen_keys.py" | cut -c1-12)
  dir="$KEY_CACHE/n$n-lua$LUA_KEYS-$tag"
  if [[ ! -f "$dir/done" ]]; then
    log "generating $n keys into $dir"
    mkdir -p "$KEY_CACHE"
    tmp="$dir.tmp.$$"
    rm -rf "$tmp"
    python3 "$HERE/gen_keys.py" "$n" "$tmp" --lua-keys "$LUA_KEYS" >&2 || die "gen_keys.py $n"
    touch "$tmp/done"
    mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"  # a concurrent run got there first
    [[ -f "$dir/done" ]] || die "could not write the key cache $dir"
  else
    log "reusing $n keys from $dir"
  fi
  echo "$dir"
}

ROOT_USER=""; [[ $EUID -eq 0 ]] && ROOT_USER="user root;"
temp_paths() { # dir: nginx's temp paths inside the work dir
  echo "client_body_temp_path $1/body; proxy_temp_path $1/proxy; fastcgi_temp_path $1/fcgi;"
  echo "uwsgi_temp_path $1/uwsgi; scgi_temp_path $1/scgi;"
}
# The logs variant's nginx line: keygate's fields, in keygate's JSON, buffered as nginx advises.
NGX_LOG_FORMAT="log_format kg escape=json '{\"time\":\"\$time_iso8601\",\"request_id\":\"\$request_id\",'
    '\"client_ip\":\"\$remote_addr\",\"method\":\"\$request_method\",\"host\":\"\$host\",'
    '\"path\":\"\$request_uri\",\"status\":\$status,\"upstream_ms\":\"\$upstream_response_time\",'
    '\"total_ms\":\$request_time,\"bytes_in\":\$request_length,\"bytes_out\":\$bytes_sent}';"
nginx_head() { # dir workers [access-log-file]: what every nginx here starts with, up to inside `http {`
  local access="access_log off;"
  [[ -n "${3:-}" ]] && access="$NGX_LOG_FORMAT
  access_log $3 kg buffer=64k flush=1s;"
  cat <<CONF
$ROOT_USER
worker_processes $2;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
  $access
  $(temp_paths "$1")
  keepalive_requests 1000000;
  client_max_body_size 2m;
CONF
}

# ---- upstream: nginx return 200 (HTTP/1.1 and h2c), one for the whole run -------------------
UP_PORT=$(free_port); UP_H2_PORT=$(free_port)
mkdir -p "$WORK/up"
cat >"$WORK/up/nginx.conf" <<CONF
$(nginx_head "$WORK/up" 1)
  server {
    listen 127.0.0.1:$UP_PORT;
    location / { return 200 "ok"; }
  }
  server {
    listen 127.0.0.1:$UP_H2_PORT http2;  # h2c with prior knowledge
    location / { return 200 "ok"; }
  }
}
CONF
nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" -t 2>"$WORK/up/t.log" || { cat "$WORK/up/t.log" >&2; die "upstream nginx -t"; }
nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" -g 'daemon off;' 2>>"$WORK/up/error.log" &
PIDS+=($!); UP_PID=$!
wait_port "$UP_PORT" "upstream nginx" "$UP_PID"

# docs/forward-auth.md's nginx recipe (the block after "<!-- tested: nginx -->"), with keygate's
# verify listener, the upstream and the listening port put in, and the upstream keep-alive of the
# map gate, so that the two nginx gates differ only in how they decide.
fwd_recipe() { # verify-port upstream-port listen-port
  awk '/<!-- tested: nginx -->/ { m = 1; next }
       m && /^```/ { if (b) exit; b = 1; next }
       b { print }' "$ROOT/docs/forward-auth.md" |
    sed -e "s/127\.0\.0\.1:8081/127.0.0.1:$1/g" -e "s/127\.0\.0\.1:3000/127.0.0.1:$2/g" \
      -e "s/listen 80;/listen 127.0.0.1:$3;/" -e "s/keepalive 16;/keepalive 64; keepalive_requests 1000000;/"
}

# ---- the gates, started afresh for each table size -----------------------------------------
start_gates() { # N keysdir fwd(1: also keygate's [verify] listener and nginx auth_request)
  local n=$1 kd=$2 fwd=$3 w="$WORK/n$1" hash_max t0 recipe
  mkdir -p "$w/ngx"
  rm -f "$w/ngx/access.log" "$w/ngxa/access.log" "$w/access.log"
  GATE_LOGS=()
  if [[ -n "$LOGS_ON" ]]; then
    GATE_LOGS=([nginx]="$w/ngx/access.log" [haproxy]="$w/haproxy-access.log" [keygate]="$w/access.log"
      [verify]="$w/access.log" [nginx-authreq]="$w/ngxa/access.log $w/access.log")
  fi
  NGX_PORT=$(free_port); NGX_H2_PORT=$(free_port); HAP_PORT=$(free_port); HAP_H2_PORT=$(free_port)
  KG_PORT=$(free_port)
  KGV_PORT=""; NGXA_PORT=""; NGXA_PID=""

  # nginx with a map
  hash_max=$((n * 2)); ((hash_max < 1024)) && hash_max=1024
  local loc='location / {
      if ($key_ok = 0) { return 403; }
      proxy_set_header X-API-Key "";
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://backend;
    }'
  cat >"$w/ngx/nginx.conf" <<CONF
$(nginx_head "$w/ngx" auto "${LOGS_ON:+$w/ngx/access.log}")
  client_body_buffer_size 2m;  # 1 MB POST bodies buffered in memory, not in temp files
  map_hash_max_size $hash_max;
  map_hash_bucket_size 512;
  map \$http_x_api_key \$key_ok {
    default 0;
    include $kd/nginx-map.conf;
  }
  upstream backend {
    server 127.0.0.1:$UP_PORT;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$NGX_PORT;
    $loc
  }
  server {
    listen 127.0.0.1:$NGX_H2_PORT http2;  # h2c with prior knowledge
    $loc
  }
}
CONF
  nginx -p "$w/ngx" -c "$w/ngx/nginx.conf" -t 2>"$w/ngx/t.log" || { cat "$w/ngx/t.log" >&2; die "gate nginx -t"; }
  if grep -qi "hash" "$w/ngx/t.log"; then cat "$w/ngx/t.log" >&2; die "nginx warns about its map hash sizes"; fi
  nginx -p "$w/ngx" -c "$w/ngx/nginx.conf" -g 'daemon off;' 2>>"$w/ngx/error.log" &
  PIDS+=($!); NGX_PID=$!
  wait_port "$NGX_PORT" "nginx gate" "$NGX_PID"
  if grep -qi "hash" "$w/ngx/error.log"; then cat "$w/ngx/error.log" >&2; die "nginx warns about its map hash sizes"; fi

  # HAProxy with a map file
  # The logs variant: one line per request to stdout (appended to a file), keygate's fields
  # (time, a request id, client ip, method, host, path and query, status, times, bytes).
  local hlog="" hglobal="" hfront=""
  if [[ -n "$LOGS_ON" ]]; then
    hglobal="  log stdout format raw local0 info"
    hlog="  log global"
    hfront='  capture request header Host len 128
  unique-id-format %{+X}o%ci:%cp_%fi:%fp_%Ts_%rt:%pid
  log-format "%tr %ID %ci %HM %hr %HU %ST %Tr %Ta %U %B"'
  fi
  cat >"$w/haproxy.cfg" <<CONF
global
  maxconn 4000
$hglobal
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
$hlog
frontend gate
  bind 127.0.0.1:$HAP_PORT
  bind 127.0.0.1:$HAP_H2_PORT proto h2
$hfront
  http-request deny deny_status 403 unless { req.hdr(x-api-key),map($kd/haproxy.map) -m found }
  http-request del-header x-api-key
  default_backend up
backend up
  http-reuse always
  server s1 127.0.0.1:$UP_PORT maxconn 1000
CONF
  haproxy -c -f "$w/haproxy.cfg" >"$w/haproxy-check.log" 2>&1 || { cat "$w/haproxy-check.log" >&2; die "haproxy -c"; }
  if [[ -n "$LOGS_ON" ]]; then
    rm -f "$w/haproxy-access.log"
    haproxy -db -f "$w/haproxy.cfg" >>"$w/haproxy-access.log" 2>"$w/haproxy.log" &
  else
    haproxy -db -f "$w/haproxy.cfg" >"$w/haproxy.log" 2>&1 &
  fi
  PIDS+=($!); HAP_PID=$!
  wait_port "$HAP_PORT" "haproxy gate" "$HAP_PID"

  # keygate (HTTP/1.1 and h2c on the same port)
  cat >"$w/keygate.toml" <<CONF
[server]
listen = "127.0.0.1:$KG_PORT"
failed_auth_limit = "1000000/second"

# Off like the nginx and HAProxy gates, but in the logs variant (or KG_ACCESS_LOG=1): the JSON
# access log written to a file.
[log]
access = "$( [[ -n "$LOGS_ON" || "${KG_ACCESS_LOG:-0}" = 1 ]] && echo "$w/access.log" || echo off )"

[[targets]]
name = "up"
upstream = "http://127.0.0.1:$UP_PORT"

CONF
  if [[ $fwd == 1 ]]; then
    KGV_PORT=$(free_port)
    printf '[verify]\nlisten = "127.0.0.1:%s"\ntrusted_proxies = ["127.0.0.1"]\n\n' "$KGV_PORT" >>"$w/keygate.toml"
  fi
  cat "$kd/keygate-keys.toml" >>"$w/keygate.toml"
  t0=$(date +%s.%N)
  "$KEYGATE_BIN" run --config "$w/keygate.toml" >"$w/keygate.log" 2>&1 &
  PIDS+=($!); KG_PID=$!
  wait_port "$KG_PORT" "keygate" "$KG_PID"
  KG_START_S=$(python3 -c "import time; print(round(time.time() - $t0, 3))")
  log "keygate loaded $n keys and listened after ${KG_START_S}s"

  if [[ $fwd == 1 ]]; then
    wait_port "$KGV_PORT" "keygate's verify listener" "$KG_PID"
    # nginx auth_request -> keygate's verify listener -> upstream
    NGXA_PORT=$(free_port)
    mkdir -p "$w/ngxa"
    recipe=$(fwd_recipe "$KGV_PORT" "$UP_PORT" "$NGXA_PORT")
    [[ "$recipe" == *"auth_request /_keygate;"* && "$recipe" == *"listen 127.0.0.1:$NGXA_PORT;"* ]] ||
      die "no nginx recipe in docs/forward-auth.md (after <!-- tested: nginx -->)"
    cat >"$w/ngxa/nginx.conf" <<CONF
$(nginx_head "$w/ngxa" auto "${LOGS_ON:+$w/ngxa/access.log}")
$recipe
}
CONF
    nginx -p "$w/ngxa" -c "$w/ngxa/nginx.conf" -t 2>"$w/ngxa/t.log" || { cat "$w/ngxa/t.log" >&2; die "auth_request nginx -t"; }
    nginx -p "$w/ngxa" -c "$w/ngxa/nginx.conf" -g 'daemon off;' 2>>"$w/ngxa/error.log" &
    PIDS+=($!); NGXA_PID=$!
    wait_port "$NGXA_PORT" "nginx auth_request gate" "$NGXA_PID"
  fi
}

stop_gates() {
  local stop=("$NGX_PID" "$HAP_PID" "$KG_PID") keep=() p
  [[ -n "$NGXA_PID" ]] && stop+=("$NGXA_PID")
  stop_pids "${stop[@]}"
  for p in "${PIDS[@]}"; do [[ " ${stop[*]} " == *" $p "* ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

configs_of() { # case -> the configs it runs through, in order
  if [[ $1 == fwdauth ]]; then echo "direct nginx nginx-authreq keygate verify"; else echo "direct nginx haproxy keygate"; fi
}

port_of() { # config proto(h1|h2c)
  case "$1:$2" in
    direct:h1) echo "$UP_PORT" ;; direct:h2c) echo "$UP_H2_PORT" ;;
    nginx:h1) echo "$NGX_PORT" ;; nginx:h2c) echo "$NGX_H2_PORT" ;;
    haproxy:h1) echo "$HAP_PORT" ;; haproxy:h2c) echo "$HAP_H2_PORT" ;;
    keygate:*) echo "$KG_PORT" ;;
    nginx-authreq:h1) echo "$NGXA_PORT" ;; verify:h1) echo "$KGV_PORT" ;;
    local:* | strict:* | local-sync:*) echo "${CL_PORT[$1]}" ;;
  esac
}

# ---- correctness before load --------------------------------------------------------------
BAD="kg_this_key_is_not_in_any_table_0000000000000"
check() { # name port key expected-status proto(h1|h2c|post)
  local got want="$4" args=()
  case "$5" in
    h2c) args=(--http2-prior-knowledge); want="$4 2" ;;
    post) args=(--data-binary "x") ; want="$4 1.1" ;;
    *) args=(--http1.1); want="$4 1.1" ;;
  esac
  got=$(curl -s -o /dev/null -w '%{http_code} %{http_version}' --max-time 5 "${args[@]}" \
    -H "X-API-Key: $3" "http://127.0.0.1:$2/") || true
  [[ "$got" == "$want" ]] ||
    die "$1 ($5) answered '$got' (expected '$want': status, HTTP version) for key ${3:0:12}...; a misconfigured gate cannot be measured"
}
check_all() { # keysdir cases
  local kd=$1 cases=$2 protos=(h1) good last c p
  [[ " $cases " == *" h2c "* ]] && protos+=(h2c)
  [[ " $cases " == *" post "* ]] && protos+=(post)
  good="$(head -n1 "$kd/secrets.txt")"
  last="$(sed -n '$p' "$kd/secrets.txt")"
  for p in "${protos[@]}"; do
    local pp=$p; [[ $p == post ]] && pp=h1
    check direct "$(port_of direct "$pp")" "$good" 200 "$p"
    for c in nginx haproxy keygate; do
      check "$c" "$(port_of "$c" "$pp")" "$good" 200 "$p"
      check "$c" "$(port_of "$c" "$pp")" "$BAD" 403 "$p"
      check "$c" "$(port_of "$c" "$pp")" "$last" 200 "$p"
    done
  done
  if [[ " $cases " == *" fwdauth "* ]]; then
    for c in nginx-authreq verify; do
      check "$c" "$(port_of "$c" h1)" "$good" 200 h1
      check "$c" "$(port_of "$c" h1)" "$BAD" 403 h1
      check "$c" "$(port_of "$c" h1)" "$last" 200 h1
    done
  fi
  log "every gate answers 200 to a valid key and 403 to a wrong one (${protos[*]}${NGXA_PORT:+; nginx-authreq, verify})"
}

# ---- measurement --------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
gate_pids() { # name -> pids of the gate's processes
  case "$1" in
    direct) echo "" ;;
    nginx) echo "$NGX_PID $(pgrep -P "$NGX_PID" | tr '\n' ' ')" ;;
    haproxy) echo "$HAP_PID $(pgrep -P "$HAP_PID" | tr '\n' ' ')" ;;
    keygate | verify) echo "$KG_PID" ;;
    # the decision costs keygate's CPU too: both count
    nginx-authreq) echo "$NGXA_PID $(pgrep -P "$NGXA_PID" | tr '\n' ' ') $KG_PID" ;;
    local | strict | local-sync) echo "${CL_PID[$1]}" ;;
  esac
}
cpu_ticks() { local t=0 p s; for p in "$@"; do
  s=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || continue
  set -- $s; t=$((t + ${12} + ${13})); done; echo "$t"; }
# After ") " the fields start at field 3 (state), so utime (14) is ${12} and stime (15) ${13}.
rss_kb() { local t=0 p r; for p in "$@"; do
  r=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null) || continue
  t=$((t + ${r:-0})); done; echo "$t"; }

RAW="$WORK/raw.tsv"; : >"$RAW"
# The logs variant: LOGS_ON=1, its cases named CASE$SUF; GATE_LOGS: each config's access log
# files, each to hold one line per request of a run.
LOGS_ON="" SUF=""
declare -A GATE_LOGS=()
lines_in() { if [[ -f "$1" ]]; then wc -l <"$1"; else echo 0; fi; }
requests_of() { # tool out: the requests the run completed
  if [[ $1 == wrk ]]; then awk '/requests in/ {print $1; exit}' "$2"
  else python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["requests"])' "$2"; fi
}
check_logs() { # config tool out: each of the config's log files has one line per request
  local c=$1 files=${GATE_LOGS[$1]:-} reqs f n tol deadline inflight short
  [[ -n "$files" ]] || return 0
  reqs=$(requests_of "$2" "$3")
  [[ "$reqs" =~ ^[0-9]+$ ]] || die "no request count in $3"
  # Requests still in flight when the load tool stopped are logged but not counted.
  inflight=$((CONNS > H2_CONNS * H2_STREAMS ? CONNS : H2_CONNS * H2_STREAMS))
  tol=$((reqs / 200 + 2 * inflight + 8))
  # HAProxy's `log stdout` drops lines when its non-blocking write would wait (0.8% short in
  # one run of 69,341 new connections, 3.6% of 140,621 keep-alive requests on a slower day):
  # that is HAProxy's log, not the harness, so its shortfall is reported, not fatal; nginx and
  # keygate lose none and are held to the tolerance.
  short=$tol
  for f in $files; do
    # nginx and keygate write what they buffer within a second: every counted request, and
    # those still in flight, should be there by then.
    deadline=$((SECONDS + 10))
    while n=$(lines_in "$f"); ((n < reqs && SECONDS < deadline)); do sleep 0.2; done
    if [[ $c == haproxy ]] && ((n < reqs - short)); then
      log "  WARNING: haproxy's access log dropped $((reqs - n)) of $reqs lines ($(((reqs - n) * 1000 / reqs / 10)).$(((reqs - n) * 1000 / reqs % 10))%)"
      continue
    fi
    ((n >= reqs - short && n <= reqs + tol)) ||
      die "$c's access log $f has $n lines for $reqs requests (logs variant; KEEP_WORK=1 keeps it)"
  done
  log "  $c: access log$( [[ $files == *" "* ]] && echo s) $(for f in $files; do printf '%s ' "$(lines_in "$f")"; done)lines for $reqs requests"
  for f in $files; do
    head -n1 "$f" >"$f.first"  # a sample line, for KEEP_WORK=1
    : >"$f"                    # appended to (O_APPEND), so emptying it is safe
  done
}
empty_logs() { # after checks and warm-ups: wait out the buffers, then start every log afresh
  local v f
  [[ -n "$LOGS_ON" ]] || return 0
  sleep 1.5
  for v in "${GATE_LOGS[@]}"; do for f in $v; do [[ -f "$f" ]] && : >"$f"; done; done
}
META="$WORK/meta.tsv"; : >"$META"

run_one() { # n keysdir case config round [rate]
  local n=$1 kd=$2 case=$3 c=$4 r=$5 rate=${6:-} pids t0 t1 rss out tool extra=""
  local redis_t0 redis_c0 redis_t1 redis_c1 kg_t0=""
  pids=$(gate_pids "$c")
  out="$WORK/n$n/$case$SUF-$c-$r.out"
  if [[ $case == cluster ]]; then
    redis_c0=$(redis_scripts) || die "redis-server does not answer INFO"
    redis_t0=$(cpu_ticks "$REDIS_PID")
  fi
  # nginx-authreq's CPU is nginx's and keygate's: keygate's share is kept apart too
  [[ $c == nginx-authreq ]] && kg_t0=$(cpu_ticks "$KG_PID")
  t0=$(cpu_ticks $pids)
  case "$case" in
    keepalive | close | post | cluster | fwdauth)
      tool=wrk
      local lua="$kd/keys.lua"
      [[ $case == close ]] && lua="$kd/keys-close.lua"
      [[ $case == post ]] && lua="$kd/keys-post.lua"
      wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --timeout 5s --latency -s "$lua" \
        "http://127.0.0.1:$(port_of "$c" h1)/" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed against $c"; }
      ;;
    h2c)
      tool=loadgen
      "$LOADGEN_BIN" --url "http://127.0.0.1:$(port_of "$c" h2c)/" --proto h2c --keys "$kd/load-keys.txt" \
        --connections "$H2_CONNS" --streams "$H2_STREAMS" --threads "$THREADS" --duration "$DURATION" \
        >"$out" 2>"$out.err" || { cat "$out" "$out.err" >&2; die "loadgen failed against $c"; }
      ;;
    rate)
      tool=loadgen
      "$LOADGEN_BIN" --url "http://127.0.0.1:$(port_of "$c" h1)/" --proto h1 --keys "$kd/load-keys.txt" \
        --connections "$CONNS" --rate "$rate" --threads "$THREADS" --duration "$DURATION" \
        >"$out" 2>"$out.err" || { cat "$out" "$out.err" >&2; die "loadgen failed against $c"; }
      ;;
  esac
  t1=$(cpu_ticks $pids)
  rss=$(rss_kb $pids)
  if [[ $case == cluster ]]; then
    redis_t1=$(cpu_ticks "$REDIS_PID")
    redis_c1=$(redis_scripts) || die "redis-server does not answer INFO"
    extra=$(printf '\t%s\t%s' "$((redis_t1 - redis_t0))" "$((redis_c1 - redis_c0))")
  fi
  [[ -n "$kg_t0" ]] && extra=$(printf '\t%s' "$(($(cpu_ticks "$KG_PID") - kg_t0))")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s%s\n' "$n" "$case$SUF" "$c" "$r" "$((t1 - t0))" "$CLK_TCK" "$rss" "$tool" "$out" "$extra" >>"$RAW"
  if [[ $tool == wrk ]]; then
    log "n=$n round $r/$ROUNDS $case$SUF $c: $(grep -m1 'Requests/sec' "$out" | tr -s ' ')"
  else
    log "n=$n round $r/$ROUNDS $case$SUF $c: $(python3 -c 'import json,sys
d = json.load(open(sys.argv[1]))
print("%.0f req/s, p99 %s ms, non-2xx %d, socket errors %d" % (d["rps"], d["latency_ms"]["p99"], d["non_2xx"], d["socket_errors"]))' "$out")"
  fi
  [[ -z "$LOGS_ON" ]] || check_logs "$c" "$tool" "$out"
}

# Median requests/s of nginx's keepalive runs for table size N in this variant (from wrk's output).
nginx_keepalive_rps() {
  python3 - "$RAW" "$1" "keepalive$SUF" <<'PY'
import re, statistics, sys
raw, n, case = sys.argv[1], sys.argv[2], sys.argv[3]
xs = []
for line in open(raw, encoding="utf-8"):
    f = line.rstrip("\n").split("\t")
    if f[0] == n and f[1] == case and f[2] == "nginx":
        xs.append(float(re.search(r"Requests/sec:\s+([\d.]+)", open(f[8]).read()).group(1)))
print(statistics.median(xs) if xs else "")
PY
}

# ---- cluster: keygate alone vs its rate limits shared through Redis (first table size only) --
# Three keygates with the same keys, every key with a rate_limit it never reaches (keys without
# one never touch Redis): local (no [cluster]), strict (one EVALSHA per request) and local-sync
# (decided locally, one EVALSHA per sync_interval for all buckets used since). on_redis_error is
# "deny", so a request that Redis failed to decide in time is a 503 and counts as an error
# instead of being measured as a local decision.
CL_CONFIGS="local strict local-sync"
declare -A CL_PORT=() CL_PID=()
REDIS_PORT="" REDIS_PID=""
redis_cli() { timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
redis_scripts() { # scripts Redis has run so far (EVAL and EVALSHA calls: one round trip each)
  local s
  s=$(redis_cli info commandstats) || return 1
  tr -d '\r' <<<"$s" | awk -F'[:=,]' '/^cmdstat_eval(sha)?:/ {n += $3} END {print n + 0}'
}
redis_keys() { # pattern: how many keys match (a few thousand at most here)
  redis_cli eval "return #redis.call('KEYS', ARGV[1])" 0 "$1"
}

start_cluster() { # N keysdir
  local n=$1 kd=$2 w="$WORK/n$1/cluster" c deadline t0 hashes limited
  mkdir -p "$w/redis"
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    --dir "$w/redis" --logfile "$w/redis/redis.log" >"$w/redis/stdout.log" 2>&1 &
  PIDS+=($!); REDIS_PID=$!
  deadline=$((SECONDS + 15))
  until [[ "$(timeout 2 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]; do
    alive "$REDIS_PID" || die "redis-server exited before it answered PING on 127.0.0.1:$REDIS_PORT (KEEP_WORK=1 keeps $w/redis)"
    ((SECONDS < deadline)) || die "redis-server did not answer PING on 127.0.0.1:$REDIS_PORT within 15 s"
    sleep 0.1
  done
  log "redis-server $(redis-server --version | grep -o 'v=[^ ]*') on 127.0.0.1:$REDIS_PORT"

  # The same keys, each with a rate limit too high to ever refuse.
  awk -v rl="$CLUSTER_RATE" '{ print } /^hash = / { print "rate_limit = \"" rl "\"" }' \
    "$kd/keygate-keys.toml" >"$w/keys.toml"
  hashes=$(grep -c '^hash = ' "$w/keys.toml" || true)
  limited=$(grep -c '^rate_limit = ' "$w/keys.toml" || true)
  [[ "$hashes" == "$n" && "$limited" == "$n" ]] ||
    die "the cluster case's keys file has $hashes keys and $limited rate limits, expected $n of each"

  for c in $CL_CONFIGS; do
    CL_PORT[$c]=$(free_port)
    rm -f "$w/access-$c.log"
    [[ -n "$LOGS_ON" ]] && GATE_LOGS[$c]="$w/access-$c.log"
    {
      cat <<CONF
[server]
listen = "127.0.0.1:${CL_PORT[$c]}"
failed_auth_limit = "1000000/second"

[log]
access = "$( [[ -n "$LOGS_ON" || "${KG_ACCESS_LOG:-0}" = 1 ]] && echo "$w/access-$c.log" || echo off )"

CONF
      [[ $c == local ]] || cat <<CONF
[cluster]
redis = "redis://127.0.0.1:$REDIS_PORT/0"
mode = "$c"
on_redis_error = "deny"
prefix = "kgload-${c//-/}:"
${CLUSTER_TIMEOUT:+timeout = \"$CLUSTER_TIMEOUT\"}

CONF
      cat <<CONF
[[targets]]
name = "up"
upstream = "http://127.0.0.1:$UP_PORT"

CONF
      cat "$w/keys.toml"
    } >"$w/keygate-$c.toml"
    t0=$(date +%s.%N)
    "$KEYGATE_BIN" run --config "$w/keygate-$c.toml" >"$w/keygate-$c.log" 2>&1 &
    PIDS+=($!); CL_PID[$c]=$!
    wait_port "${CL_PORT[$c]}" "keygate ($c)" "${CL_PID[$c]}"
    if [[ $c == local && "$KG_START_S" == - ]]; then  # only when no other keygate ran at this size
      KG_START_S=$(python3 -c "import time; print(round(time.time() - $t0, 3))")
    fi
  done
  log "cluster case: keygate local, strict, local-sync with $n keys at rate_limit $CLUSTER_RATE"
}

check_cluster() { # keysdir
  local kd=$1 good last c i got pattern found
  good="$(head -n1 "$kd/secrets.txt")"
  last="$(sed -n '$p' "$kd/secrets.txt")"
  for c in $CL_CONFIGS; do
    # The first rate-limited request opens the Redis connection: a few tries to get there.
    for i in $(seq 1 50); do
      got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --http1.1 -H "X-API-Key: $good" \
        "http://127.0.0.1:${CL_PORT[$c]}/") || true
      [[ "$got" == 200 ]] && break
      sleep 0.1
    done
    check "$c" "${CL_PORT[$c]}" "$good" 200 h1
    check "$c" "${CL_PORT[$c]}" "$BAD" 403 h1
    check "$c" "${CL_PORT[$c]}" "$last" 200 h1
  done
  # strict and local-sync keep their buckets in Redis (local-sync within a sync_interval).
  for c in strict local-sync; do
    pattern="kgload-${c//-/}:rl:*"
    for i in $(seq 1 50); do
      found=$(redis_keys "$pattern") || die "redis-server does not answer"
      ((found > 0)) && break
      sleep 0.1
    done
    ((found > 0)) || die "keygate ($c) answered but wrote no bucket to Redis ($pattern): not using it"
  done
  log "every cluster config answers 200 to a valid key and 403 to a wrong one; strict and local-sync keep buckets in Redis"
}

stop_cluster() {
  local c keep=() p stop=("$REDIS_PID")
  for c in $CL_CONFIGS; do stop+=("${CL_PID[$c]}"); done
  stop_pids "${stop[@]}"
  for p in "${PIDS[@]}"; do [[ " ${stop[*]} " == *" $p "* ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

run_cluster() { # N keysdir
  local n=$1 kd=$2 c r
  start_cluster "$n" "$kd"
  check_cluster "$kd"
  if [[ "$WARMUP" != 0 ]]; then
    for c in $CL_CONFIGS; do
      wrk -t1 -c4 -d"$WARMUP" -s "$kd/keys.lua" "http://127.0.0.1:${CL_PORT[$c]}/" >/dev/null 2>&1 || true
    done
  fi
  empty_logs
  for r in $(seq 1 "$ROUNDS"); do
    for c in $CL_CONFIGS; do run_one "$n" "$kd" cluster "$c" "$r"; done
  done
  stop_cluster
}

read -r LOAD1 _ </proc/loadavg
if python3 -c "import sys; sys.exit(0 if float('$LOAD1') > 0.5 else 1)"; then
  log "warning: load average $LOAD1 before the run: other work shares these cores, figures will be noisy"
fi

FIRST_N=""
for N in $KEYS; do
  FIRST=""
  if [[ -z "$FIRST_N" ]]; then FIRST=1; FIRST_N=$N; NCASES="$CASES"; else NCASES="$BIG_CASES"; fi
  for once in cluster fwdauth; do
    if [[ -z "$FIRST" && " $NCASES " == *" $once "* ]]; then
      log "n=$N: the $once case runs at the first table size only ($FIRST_N keys); leaving it out"
      NCASES=$(without_case "$once" $NCASES)
    fi
  done
  KD=$(keys_dir "$N")
  SIZE_CASES="$NCASES"
  # Each variant with the gates started afresh: plain (access logs off), logs (every gate's on).
  for V in $VARIANTS; do
    LOGS_ON="" SUF="" NCASES="$SIZE_CASES"
    if [[ $V == logs ]]; then
      LOGS_ON=1 SUF="+logs" NCASES=""
      for case in $SIZE_CASES; do [[ " $LOGS_CASES " == *" $case "* ]] && NCASES+="${NCASES:+ }$case"; done
      [[ -n "$NCASES" ]] || continue
      log "n=$N: the logs variant (every gate writes its access log to a file): $NCASES"
    fi
    GATE_CASES=$(without_case cluster $NCASES)
    VCASES=""; for case in $NCASES; do VCASES+="${VCASES:+ }$case$SUF"; done
    KG_START_S="-" RATE_N="" RATE_BASIS=""
    if [[ -n "$GATE_CASES" ]]; then
      FWD=0; [[ " $GATE_CASES " == *" fwdauth "* ]] && FWD=1
      start_gates "$N" "$KD" "$FWD"
      check_all "$KD" "$GATE_CASES"

      # Warm-up: a short run through each so first-connection costs are not in round 1.
      if [[ "$WARMUP" != 0 ]]; then
        for c in direct nginx haproxy keygate ${NGXA_PORT:+nginx-authreq verify}; do
          wrk -t1 -c4 -d"$WARMUP" -s "$KD/keys.lua" "http://127.0.0.1:$(port_of "$c" h1)/" >/dev/null 2>&1 || true
        done
      fi
      empty_logs

      # Every case but rate: ROUNDS rounds, each through its configs in turn (direct, nginx,
      # haproxy, keygate; fwdauth: direct, nginx, nginx-authreq, keygate, verify).
      SAT_CASES=""
      for case in $GATE_CASES; do [[ $case == rate ]] || SAT_CASES+="$case "; done
      for r in $(seq 1 "$ROUNDS"); do
        for case in $SAT_CASES; do
          for c in $(configs_of "$case"); do run_one "$N" "$KD" "$case" "$c" "$r"; done
        done
      done

      # The constant-rate case, once nginx's saturation throughput for this table size is known.
      if [[ " $GATE_CASES " == *" rate "* ]]; then
        if [[ -n "$RATE" ]]; then
          RATE_N=$RATE; RATE_BASIS="RATE"
        else
          NGX_RPS=$(nginx_keepalive_rps "$N")
          if [[ -z "$NGX_RPS" ]]; then  # keepalive not among the cases: measure nginx once
            out="$WORK/n$N/calibrate-nginx.out"
            wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s "$KD/keys.lua" "http://127.0.0.1:$NGX_PORT/" >"$out" 2>&1 ||
              { cat "$out" >&2; die "wrk failed against nginx"; }
            NGX_RPS=$(sed -n 's/^Requests\/sec:[[:space:]]*//p' "$out")
            empty_logs
          fi
          RATE_N=$(python3 -c "print(max(1, round(float('$NGX_RPS') * float('$RATE_FRACTION'))))")
          RATE_BASIS="$RATE_FRACTION x nginx keep-alive $NGX_RPS req/s"
          if [[ -n "$RATE_MAX" ]] && ((RATE_N > RATE_MAX)); then
            RATE_N=$RATE_MAX; RATE_BASIS+=", capped by RATE_MAX"
          fi
        fi
        log "n=$N constant rate: $RATE_N req/s ($RATE_BASIS)"
        for r in $(seq 1 "$ROUNDS"); do
          for c in direct nginx haproxy keygate; do run_one "$N" "$KD" rate "$c" "$r" "$RATE_N"; done
        done
      fi
      stop_gates
    fi

    # keygate alone vs keygate with [cluster], the same keep-alive load (first table size only).
    if [[ " $NCASES " == *" cluster "* ]]; then run_cluster "$N" "$KD"; fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$N" "$KG_START_S" "${RATE_N:--}" "${RATE_BASIS:--}" "$VCASES" >>"$META"
  done
done

python3 "$HERE/report.py" "$RAW" "$OUT" --meta "$META" \
  --conns "$CONNS" --threads "$THREADS" --duration "$DURATION" --rounds "$ROUNDS" \
  --h2-conns "$H2_CONNS" --h2-streams "$H2_STREAMS" --lua-keys "$LUA_KEYS" --cluster-rate "$CLUSTER_RATE" \
  --wall-s "$((SECONDS - T_START))" ${SMOKE:+--smoke}
log "done in $((SECONDS - T_START)) s"
