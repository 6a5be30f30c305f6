#!/usr/bin/env bash
# Fuzzes the gateway's OpenAPI document with schemathesis (every check,
# positive-data acceptance included) against a throwaway `idbase dev`.
# Usage: e2e/schemathesis/run.sh [path to the idbase binary]
set -euo pipefail
cd "$(dirname "$0")/../.."

# Examples per operation and phase: enough to hit every constraint's edges,
# few enough that the run stays well under 3 minutes on 2 cores.
MAX_EXAMPLES="${IDBASE_ST_MAX_EXAMPLES:-15}"
BIN="${1:-target/debug/idbase}"

# schemathesis is pinned in e2e/requirements.txt, in the virtualenv .ci/run shares.
venv=target/venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r e2e/requirements.txt

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
http_port=$(free_port)
grpc_port=$(free_port)
admin_port=$(free_port)
data_dir=$(mktemp -d)
log="$data_dir/idbase.log"

"$BIN" dev --data-dir "$data_dir/data" --http "127.0.0.1:$http_port" \
  --grpc "127.0.0.1:$grpc_port" --admin-grpc "127.0.0.1:$admin_port" >"$log" 2>&1 &
pid=$!
cleanup() {
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$data_dir"
}
trap cleanup EXIT

base="http://127.0.0.1:$http_port"
for _ in $(seq 1 120); do
  curl -fsS "$base/readyz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.5
done
curl -fsS "$base/readyz" >/dev/null || { echo "idbase dev never became ready"; cat "$log"; exit 1; }

# The internal client may call every route, the double writes included.
token=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["clients"]["internal"])' \
  "$data_dir/data/dev-credentials.json")

status=0
IDBASE_ST_URL="$base" IDBASE_ST_CLIENT_TOKEN="$token" \
  SCHEMATHESIS_HOOKS=e2e/schemathesis/hooks.py \
  "$venv/bin/schemathesis" --config-file e2e/schemathesis/schemathesis.toml run "$base/openapi.json" \
  --checks all --max-examples "$MAX_EXAMPLES" --workers 2 \
  -H "Client-Token: $token" --seed 1 || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- idbase dev log (tail) ---"
  grep -E "WARN|ERROR" "$log" | tail -n 20 || true
fi
exit "$status"
