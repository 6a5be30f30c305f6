#!/usr/bin/env bash
# Fuzzes docs/legacy-contract.yaml with schemathesis (every check, positive-data
# acceptance included) against the legacy emulator on a throwaway MariaDB database.
# Usage: e2e/schemathesis/legacy.sh [path to the legacy binary]
set -euo pipefail
cd "$(dirname "$0")/../.."

# Examples per operation and phase: the contract's edges, in well under 2 minutes on 2 cores.
MAX_EXAMPLES="${IDBASE_ST_MAX_EXAMPLES:-15}"
BIN="${1:-target/debug/legacy}"
MYSQL_SERVER="${IDBASE_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}"

# schemathesis is pinned in e2e/requirements.txt, in the virtualenv .ci/run shares.
venv=target/venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r e2e/requirements.txt

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port=$(free_port)
work=$(mktemp -d)
log="$work/legacy.log"
database="idbase_st_legacy_$(date +%s)_$$"
mariadb -uroot -h127.0.0.1 -e "CREATE DATABASE $database"
token=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
printf '%s\n' "$token" >"$work/gateway-token"

"$BIN" --database-url "${MYSQL_SERVER%/*}/$database" --http "127.0.0.1:$port" \
  --gateway-token-file "$work/gateway-token" --seed-members 100 >"$log" 2>&1 &
pid=$!
cleanup() {
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  mariadb -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $database" || true
  rm -rf "$work"
}
trap cleanup EXIT

base="http://127.0.0.1:$port"
for _ in $(seq 1 120); do
  curl -fsS -H "Idbase-Gateway-Token: $token" "$base/legacy/v1/health" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.5
done

status=0
IDBASE_ST_URL="$base" IDBASE_ST_GATEWAY_TOKEN="$token" \
  SCHEMATHESIS_HOOKS=e2e/schemathesis/legacy_hooks.py \
  "$venv/bin/schemathesis" --config-file e2e/schemathesis/legacy.toml run docs/legacy-contract.yaml \
  --url "$base" --checks all --max-examples "$MAX_EXAMPLES" --workers 2 \
  -H "Idbase-Gateway-Token: $token" --seed 1 || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- legacy emulator log (tail) ---"
  grep -E "WARN|ERROR" "$log" | tail -n 20 || true
fi
exit "$status"
