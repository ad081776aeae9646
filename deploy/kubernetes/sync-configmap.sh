#!/usr/bin/env bash
# Rewrites configmap.yaml from config/keygate.toml (or the file given), changing only the three
# lines Kubernetes needs. Run it after editing the example config; tests/it/deploy.rs fails until
# the two agree.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="${1:-$here/../../config/keygate.toml}"
out="$here/configmap.yaml"
{
  sed -n '1,/^  keygate.toml: |$/p' "$out"
  sed -e 's#^keys_file = "keys.toml"#keys_file = "/var/lib/keygate/keys.toml"#' \
      -e 's#^listen = "127.0.0.1:8080"                \# default "127.0.0.1:8080"#listen = "0.0.0.0:8080"                  \# default "127.0.0.1:8080"#' \
      -e 's#^listen = "127.0.0.1:9901"$#listen = "0.0.0.0:9901"#' \
      "$src" | sed -e 's/^/    /' -e 's/^ *$//'
} > "$out.tmp"
mv "$out.tmp" "$out"
