#!/usr/bin/env bash
# API fuzzing (docs/reliability.md): schemathesis, from PyPI, against a running service's
# /openapi.json, authenticated with an operator token minted by `fleetwatch token`. Every
# response must be no 5xx and match the document (status code, content type, headers,
# body schema).
#
# Usage: scripts/api_fuzz.sh FLEETWATCH_BIN KAFKA_ADDRESS MQTT_PORT WORK_DIR [MAX_SECONDS]
# scripts/test calls it with the brokers it started; schemathesis is installed into a
# virtual environment under WORK_DIR the first time.
set -euo pipefail
BIN=$1 KAFKA=$2 MQTT_PORT=$3 WORK=$4 MAX_SECONDS=${5:-45}
SCHEMATHESIS_VERSION=4.32.5
mkdir -p "$WORK"
log() { echo "api_fuzz: $*" >&2; }

VENV=$WORK/schemathesis-venv
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  log "installing schemathesis $SCHEMATHESIS_VERSION from PyPI into $VENV (once)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

# A service of its own (own topic prefix, groups and share group) with authentication on.
NAME=apifuzz-$$-$(date +%s)
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
export FLEETWATCH_AUTH__MODE=jwt FLEETWATCH_AUTH__HS256_SECRET=$SECRET
export FLEETWATCH_KAFKA__BROKERS=$KAFKA FLEETWATCH_KAFKA__TOPIC_PREFIX=$NAME. \
  FLEETWATCH_KAFKA__GROUP_PREFIX=$NAME- FLEETWATCH_KAFKA__PARTITIONS=2 \
  FLEETWATCH_MQTT__HOST=127.0.0.1 FLEETWATCH_MQTT__PORT=$MQTT_PORT \
  FLEETWATCH_MQTT__INSTANCE_ID=$NAME FLEETWATCH_INGEST__SHARE_GROUP=$NAME \
  FLEETWATCH_HTTP__BIND=127.0.0.1:0 FLEETWATCH_ALERTS__BIND=127.0.0.1:0 RUST_LOG=warn
"$BIN" run --roles all > "$WORK/api_fuzz.out" 2> "$WORK/api_fuzz.err" &
SERVICE=$!
trap 'kill $SERVICE 2>/dev/null || true; wait $SERVICE 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  [ -s "$WORK/api_fuzz.out" ] && break
  sleep 0.2
done
HTTP=$(head -1 "$WORK/api_fuzz.out" | python3 -c 'import json, sys; print(json.load(sys.stdin)["http"])')
for _ in $(seq 1 300); do
  curl -sf "http://$HTTP/readyz" > /dev/null && break
  sleep 0.2
done
TOKEN=$("$BIN" token --subject api-fuzz --ttl-secs 600)

# A device with a twin, a desired state and a command, so that reads find something.
curl -sf -X PUT -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"led":"blue"}' "http://$HTTP/devices/fuzz-1/desired" > /dev/null

log "schemathesis against http://$HTTP/openapi.json for at most $MAX_SECONDS s"
# Its cache (.schemathesis/) goes in the work directory, not the repository. One worker:
# with two threads, CPython before 3.11.8/3.12.2 (this machine has 3.11.7) races in
# ast.parse, which hypothesis calls to describe its lambdas, and aborts the run with
# "SystemError: AST constructor recursion depth mismatch" (CPython gh-106905).
(cd "$WORK" && "$VENV/bin/schemathesis" run "http://$HTTP/openapi.json" \
  --header "Authorization: Bearer $TOKEN" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing \
  --max-time "$MAX_SECONDS" --workers 1 --request-timeout 20 \
  --seed 15 --no-color \
  > "$WORK/schemathesis.log" 2>&1) || { tail -150 "$WORK/schemathesis.log"; log "schemathesis found problems (log: $WORK/schemathesis.log)"; exit 1; }
tail -15 "$WORK/schemathesis.log"
# The service survived it.
curl -sf "http://$HTTP/livez" > /dev/null
kill -0 $SERVICE
