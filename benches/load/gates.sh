#!/usr/bin/env bash
# keygate beside the harness's nginx and HAProxy gates, from a kept harness run (`KEEP_WORK=1
# benches/load/run.sh ...` prints its work dir): every gate started again with its access log
# off, behind that run's upstream, on that run's ports, for one of two counts that the harness
# itself does not make (issue 18's eleventh round, docs/performance.md):
#
# MODE=syscalls (default): system calls per proxied request. Each gate in turn gets `wrk -t1
#   -cCONNS` for DURATION seconds while `perf stat` counts the syscall tracepoints of its
#   processes; the failed `recvfrom` and `accept4` calls (EAGAIN: nothing to read, nobody to
#   accept) are counted apart. Where the tracepoints cannot be read, `strace -c -f` is the
#   fallback, marked as such: it slows a gate to an eighth of its rate or less, which changes
#   what a first read finds. Prints a block per gate: requests, then each call per request.
# MODE=latency: ROUNDS rounds of `wrk --latency` (DURATION s) through every gate, the gates'
#   order changing each round (all six orders of three gates in six rounds); prints every run,
#   then per gate the medians of req/s, p50, p90 and p99, and each round's p99.
#
#   benches/load/gates.sh WORK_DIR   MODE [syscalls]  CASE [close; or keepalive]  KEYS [10000]
#       CONNS [32]  DURATION [3 for syscalls, 5 for latency]  ROUNDS [6]  COUNTER [perf; strace]
#       GATES ["keygate nginx haproxy"]  KEYGATE_BIN [target/release/keygate]
#
# Everything listens on 127.0.0.1; every process it starts is stopped on exit; the whole script
# is bounded by TOTAL_TIMEOUT [600 s].
set -euo pipefail
if [[ -z "${KG_GATES_INNER:-}" ]]; then
  export KG_GATES_INNER=1
  exec timeout -k 10 "${TOTAL_TIMEOUT:-600}" "$0" "$@"
fi
[[ $# -eq 1 && -d "$1" ]] || { echo "usage: $0 WORK_DIR (a KEEP_WORK=1 run of benches/load/run.sh)" >&2; exit 2; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
W="$(realpath "$1")"
MODE="${MODE:-syscalls}" CASE="${CASE:-close}" KEYS="${KEYS:-10000}" CONNS="${CONNS:-32}"
ROUNDS="${ROUNDS:-6}" GATES="${GATES:-keygate nginx haproxy}"
case $MODE in
  syscalls) DURATION="${DURATION:-3}" ;;
  latency) DURATION="${DURATION:-5}" ;;
  *) echo "MODE is syscalls or latency" >&2; exit 2 ;;
esac
KEYGATE_BIN="$(realpath "${KEYGATE_BIN:-$HERE/../../target/release/keygate}")"
G="$W/n$KEYS"
[[ -f "$G/keygate.toml" && -f "$G/ngx/nginx.conf" && -f "$G/haproxy.cfg" && -f "$W/up/nginx.conf" ]] ||
  { echo "$W has no gates for $KEYS keys (run.sh with KEYS including $KEYS and KEEP_WORK=1)" >&2; exit 2; }
# The run's key set (and wrk scripts): the directory the nginx gate's key map is in.
KD="$(dirname "$(grep -m1 -o 'include [^;]*nginx-map.conf' "$G/ngx/nginx.conf" | cut -d' ' -f2)")"
LUA="$KD/keys.lua"
[[ $CASE == close ]] && LUA="$KD/keys-close.lua"
[[ $CASE == close || $CASE == keepalive ]] || { echo "CASE is close or keepalive" >&2; exit 2; }
[[ -f $LUA ]] || { echo "the run's wrk script $LUA is gone" >&2; exit 2; }

# shellcheck source=work.sh
source "$HERE/work.sh"

# The counted calls: every one a gate makes per request on this path, and the usual others.
CALLS="accept4 recvfrom read writev sendto write epoll_ctl epoll_wait epoll_pwait close shutdown
  setsockopt getsockopt getsockname getpid sched_yield futex clock_gettime timer_settime"
EVENTS=""
for c in $CALLS; do EVENTS+="syscalls:sys_enter_$c,"; done
EVENTS=${EVENTS%,}
# COUNTER=perf or strace picks the counter; unset, perf where it can read the tracepoints.
tracepoints=0
case ${COUNTER:-} in
  perf) tracepoints=1 ;;
  strace) ;;
  "")
    if command -v perf >/dev/null 2>&1 &&
      perf stat -e syscalls:sys_enter_close -o /dev/null -- true >/dev/null 2>&1; then
      tracepoints=1
    elif [[ $MODE == syscalls ]] && ! command -v strace >/dev/null 2>&1; then
      echo "SKIP: counting system calls needs perf (with readable syscall tracepoints) or strace"
      exit 0
    fi
    ;;
  *) echo "COUNTER is perf or strace" >&2; exit 2 ;;
esac

# port_free PORT: the gates reuse the kept run's ports; one taken since would answer for them.
port_free() {
  if (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null; then
    echo "port $1 of that run is in use now: stop what listens there first" >&2
    exit 2
  fi
}

# The upstream of that run, as it was.
UPPORT=$(grep -m1 -o 'listen 127.0.0.1:[0-9]*' "$W/up/nginx.conf" | grep -o '[0-9]*$')
port_free "$UPPORT"
nginx -p "$W/up" -c "$W/up/nginx.conf" -g 'daemon off;' 2>>"$WORK/up.err" &
PIDS+=($!)
wait_port "$UPPORT"

# start GATE: the gate with its access log off; sets GPORT and GPID (its processes to count,
# comma-separated), kept as PORT[GATE] and COUNTED[GATE]. All gates run from the start to the
# end: an idle gate costs the others nothing, and the latency rounds need them all.
declare -A PORT COUNTED
start() {
  case $1 in
    keygate)
      sed 's#^access = .*#access = "off"#' "$G/keygate.toml" >"$WORK/keygate.toml"
      # Old enough that the reload check trusts its modification time and does not hash it.
      touch -d '1 minute ago' "$WORK/keygate.toml"
      GPORT=$(grep -m1 '^listen' "$WORK/keygate.toml" | grep -o '[0-9]*"$' | tr -d '"')
      port_free "$GPORT"
      (cd "$WORK" && exec env KEYGATE_LOG=warn "$KEYGATE_BIN" run --config "$WORK/keygate.toml" >"$WORK/keygate.log" 2>&1) &
      GPID=$!
      PIDS+=($GPID)
      wait_port "$GPORT"
      ;;
    nginx)
      mkdir -p "$WORK/ngx"/{body,proxy,fcgi,uwsgi,scgi}
      sed "s#access_log [^;]*;#access_log off;#; s#$G/ngx#$WORK/ngx#g" "$G/ngx/nginx.conf" >"$WORK/ngx/nginx.conf"
      GPORT=$(grep -m1 -o 'listen 127.0.0.1:[0-9]*;' "$WORK/ngx/nginx.conf" | grep -o '[0-9]*;$' | tr -d ';')
      port_free "$GPORT"
      nginx -p "$WORK/ngx" -c "$WORK/ngx/nginx.conf" -g 'daemon off;' 2>>"$WORK/ngx.err" &
      local master=$!
      PIDS+=($master)
      wait_port "$GPORT"
      GPID=$(pgrep -P "$master" | paste -sd,)
      ;;
    haproxy)
      grep -v '^\s*log ' "$G/haproxy.cfg" >"$WORK/haproxy.cfg"
      GPORT=$(grep -m1 -o 'bind 127.0.0.1:[0-9]*' "$WORK/haproxy.cfg" | grep -o '[0-9]*$')
      port_free "$GPORT"
      haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
      GPID=$!
      PIDS+=($GPID)
      wait_port "$GPORT"
      ;;
    *) echo "unknown gate $1" >&2; exit 2 ;;
  esac
}

for gate in $GATES; do
  start "$gate"
  PORT[$gate]=$GPORT
  COUNTED[$gate]=$GPID
  wrk -t1 -c"$CONNS" -d1s -s "$LUA" "http://127.0.0.1:$GPORT/" >/dev/null
done

# count_syscalls GATE: one wrk run through GATE with its system calls counted; prints its block.
count_syscalls() {
  local gate=$1 url="http://127.0.0.1:${PORT[$1]}/" counter out n how
  if ((tracepoints)); then
    perf stat -e "$EVENTS" \
      -e syscalls:sys_exit_recvfrom --filter 'ret < 0' \
      -e syscalls:sys_exit_accept4 --filter 'ret < 0' \
      -p "${COUNTED[$gate]}" -o "$WORK/counts" -- sleep "$((DURATION + 1))" &
    counter=$!
    sleep 0.5
    out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$LUA" "$url")
    wait "$counter" || true
    how="perf stat, syscall tracepoints"
  else
    local args=() p
    for p in ${COUNTED[$gate]//,/ }; do args+=(-p "$p"); done
    strace -c -f "${args[@]}" -o "$WORK/counts" 2>/dev/null &
    counter=$!
    sleep 0.5
    out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$LUA" "$url")
    kill -INT "$counter" 2>/dev/null || true
    wait "$counter" 2>/dev/null || true
    how="strace -c -f: the gate at a fraction of its rate, so first reads find more"
  fi
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  echo "$gate ($CASE, $KEYS keys, wrk -c$CONNS, $how): requests=$n $(grep -o 'Requests/sec: *[0-9.]*' <<<"$out")"
  if ((tracepoints)); then
    # perf stat's lines: COUNT syscalls:sys_enter_NAME (the two exits are the failed calls).
    awk -v n="$n" '/syscalls:sys_/ { gsub(",", "", $1); if ($1 / n < 0.0005) next;
        name = $2; sub("syscalls:sys_enter_", "", name);
        if (name ~ /sys_exit_/) { sub("syscalls:sys_exit_", "", name); name = name " failed" }
        printf "  %-18s %.3f\n", name, $1 / n }' "$WORK/counts"
  else
    awk -v n="$n" 'NR > 2 && $NF != "total" && $4 ~ /^[0-9]+$/ && $4 / n >= 0.0005 {
        e = ($5 ~ /^[0-9]+$/) ? $5 : 0
        printf "  %-18s %.3f%s\n", $NF, $4 / n, (e > 0 ? sprintf(" (failed %.3f)", e / n) : "") }' "$WORK/counts" |
      sort -k2 -nr
  fi
}

if [[ $MODE == syscalls ]]; then
  for gate in $GATES; do count_syscalls "$gate"; done
  exit 0
fi

# MODE=latency: round r runs the gates in the r-th of their orders (permutations, in turn).
read -r -a gates <<<"$GATES"
mapfile -t orders < <(python3 -c 'import itertools, sys; [print(" ".join(p)) for p in itertools.permutations(sys.argv[1:])]' "${gates[@]}")
for r in $(seq 1 "$ROUNDS"); do
  for gate in ${orders[$(((r - 1) % ${#orders[@]}))]}; do
    out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$LUA" "http://127.0.0.1:${PORT[$gate]}/")
    row="$r $gate $(awk '$1 ~ /^(50|90|99)%$/ { printf "%s=%s ", $1, $2 }' <<<"$out")rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
    echo "$row" | tee -a "$WORK/rows"
  done
done
python3 - "$WORK/rows" <<'PY'
import re, statistics, sys
def ms(v):
    n, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
runs = {}
for line in open(sys.argv[1]):
    f = line.split()
    d = dict(x.split("=") for x in f[2:])
    runs.setdefault(f[1], []).append({"p50": ms(d["50%"]), "p90": ms(d["90%"]), "p99": ms(d["99%"]), "rps": float(d["rps"])})
print(f"medians of {len(next(iter(runs.values())))} rounds:")
for gate, rs in runs.items():
    med = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p90", "p99")}
    each = " ".join(f"{r['p99']:.2f}" for r in rs)
    print(f"  {gate:8} req/s={med['rps']:.0f} p50={med['p50']:.3f}ms p90={med['p90']:.3f}ms p99={med['p99']:.3f}ms (each round's p99: {each})")
PY
