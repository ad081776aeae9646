# Sourced by the benches that start their own processes (rig.sh, gates.sh): a work dir, WORK,
# removed on exit with every process in PIDS stopped first, and wait_port.
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
# wait_port PORT: until something listens on 127.0.0.1:PORT; up to 2 minutes (a keygate under
# valgrind takes that long to listen with 10,000 keys), then the script exits.
wait_port() { for _ in $(seq 1 1200); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
