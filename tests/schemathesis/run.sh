#!/usr/bin/env bash
# Runs schemathesis (a schema-driven API fuzzer) against a real keygate admin listener and fails
# on any finding: a 5xx, an answer docs/admin-api.yaml does not describe, a request the document
# allows that is refused, a request it forbids that is accepted, a 405 without Allow, ...
#
# Usage: tests/schemathesis/run.sh        (ST: the `st` to run, default `st` on PATH;
#                                          ST_MAX_EXAMPLES, ST_MAX_TIME bound the run)
# keygate is built, started on 127.0.0.1 with a config made for the run in a temp dir, and
# stopped at the end whatever happens.
set -euo pipefail
cd "$(dirname "$0")/../.."

st=${ST:-st}
max_examples=${ST_MAX_EXAMPLES:-30}
# The whole fuzzer run, in seconds: fuzzing and the stateful phase stop when it is spent.
max_time=${ST_MAX_TIME:-150}

cargo build --locked --quiet --bin keygate
bin=target/debug/keygate

dir=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

# A free port on 127.0.0.1: bound by the kernel, released, then given to keygate.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
admin_secret="kg_schemathesis_$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
hash=$(printf '%s' "$admin_secret" | sha256sum | cut -d' ' -f1)

cat > "$dir/keygate.toml" <<TOML
# Made by tests/schemathesis/run.sh for one fuzzer run.
keys_file = "keys.toml"

[server]
listen = "127.0.0.1:0"
# The fuzzer sends many wrong keys on purpose; it must not lock itself out.
failed_auth_limit = "100000/second"

[log]
access = "off"

[admin]
listen = "127.0.0.1:$port"

[[admin_keys]]
id = "fuzzer"
hash = "sha256:$hash"
role = "admin"

[[targets]]
name = "main"
upstream = "http://127.0.0.1:9"

[[consumers]]
id = "house"

[[keys]]
id = "static"
hash = "sha256:$(printf 'static' | sha256sum | cut -d' ' -f1)"
TOML
printf '[[consumers]]\nid = "acme"\n' > "$dir/keys.toml"

"$bin" run --config "$dir/keygate.toml" > "$dir/keygate.log" 2>&1 &
pid=$!
ready=
for _ in $(seq 1 200); do
  if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/readyz', timeout=1)" 2>/dev/null; then
    ready=1
    break
  fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.05
done
if [ -z "$ready" ]; then
  cat "$dir/keygate.log" >&2
  echo "keygate did not become ready on 127.0.0.1:$port" >&2
  exit 1
fi

status=0
# Run from the temp dir: schemathesis keeps a cache directory where it runs.
spec=$PWD/docs/admin-api.yaml
here=$PWD/tests/schemathesis
(
cd "$dir"
SCHEMATHESIS_HOOKS="$here/hooks.py" "$st" --config-file "$here/schemathesis.toml" run "$spec" \
  --url "http://127.0.0.1:$port" \
  --header "X-API-Key: $admin_secret" \
  --checks all \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "$max_examples" \
  --max-time "$max_time" \
  --request-timeout 10 \
  --seed "${ST_SEED:-$RANDOM}" \
  --warnings off
) || status=$?

if grep -q "panicked" "$dir/keygate.log"; then
  echo "keygate panicked during the run:" >&2
  grep -A3 "panicked" "$dir/keygate.log" >&2
  status=1
fi
exit "$status"
