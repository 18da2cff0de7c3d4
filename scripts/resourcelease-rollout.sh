#!/usr/bin/env bash
# Zero-downtime rollout of a ResourceLease dispatcher node (seed 003, "Mesh
# Diagnostics + Tooling" / "Zero-downtime dispatcher rollout"):
#
#   1. drain every queue namespace of the node and save the pending items,
#      again and again until nothing is pending or leased (workers finish
#      their leases on the old process; a lease that expires comes back to
#      pending and is drained on the next round);
#   2. stop the node, upgrade it, start it again (`--restart-cmd`, default
#      `omnirelay stack restart NODE` for a stack run by `omnirelay up`);
#   3. wait until the node is ready (/readyz);
#   4. restore every saved file, in order, into its namespace;
#   5. verify: every saved item was restored (or was already known), the
#      queue health probe is not unhealthy, /readyz is 200.
#
# Usage:
#   scripts/resourcelease-rollout.sh [--node dispatcher] [--topology NAME]
#       [--control STACK_CONTROL_JSON] [--address HTTP_HOST:PORT --admin ADMIN_HOST:PORT]
#       [--namespace NS]... [--restart-cmd "CMD"] [--out-dir DIR] [--timeout SECONDS]
#
# Addresses default to the node's endpoints in `omnirelay stack ps --json`.
# Environment: OMNIRELAY (the command, default `omnirelay`), PYTHON (any
# python3, used to read JSON). Exit 0 when the rollout lost nothing.
set -euo pipefail

OMNIRELAY=${OMNIRELAY:-omnirelay}
PYTHON=${PYTHON:-python3}
NODE=dispatcher
ADDRESS=""
ADMIN=""
RESTART_CMD=""
OUT_DIR=""
TIMEOUT=120
STACK_ARGS=()
NAMESPACES=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --node) NODE=$2; shift 2 ;;
    --address) ADDRESS=$2; shift 2 ;;
    --admin) ADMIN=$2; shift 2 ;;
    --namespace) NAMESPACES+=("$2"); shift 2 ;;
    --restart-cmd) RESTART_CMD=$2; shift 2 ;;
    --out-dir) OUT_DIR=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --topology) STACK_ARGS+=(--topology "$2"); shift 2 ;;
    --control) STACK_ARGS+=(--control "$2"); shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "rollout: unknown argument $1" >&2; exit 2 ;;
  esac
done

log() { echo "rollout: $*"; }
json() { "$PYTHON" -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

if [[ -z "$ADDRESS" || -z "$ADMIN" ]]; then
  ps_json=$("$OMNIRELAY" stack ps --json ${STACK_ARGS[@]+"${STACK_ARGS[@]}"})
  endpoint() {
    echo "$ps_json" | json "next(n for n in d['nodes'] if n['name']=='$NODE')['endpoints']['$1']"
  }
  [[ -n "$ADDRESS" ]] || ADDRESS=$(endpoint http)
  [[ -n "$ADMIN" ]] || ADMIN=$(endpoint admin)
fi
ADDRESS=${ADDRESS#http://}
ADMIN=${ADMIN#http://}
[[ -n "$RESTART_CMD" ]] || RESTART_CMD="$OMNIRELAY stack restart ${STACK_ARGS[*]-} $NODE"
[[ -n "$OUT_DIR" ]] || OUT_DIR=$(mktemp -d -t resourcelease-rollout.XXXXXX)
mkdir -p "$OUT_DIR"

stats() { curl -fsS "http://$ADMIN/omnirelay/control/resourcelease"; }
if [[ ${#NAMESPACES[@]} -eq 0 ]]; then
  mapfile -t NAMESPACES < <(stats | json "'\n'.join(sorted(d['namespaces']))")
fi
log "node $NODE (rpc $ADDRESS, admin $ADMIN), namespaces: ${NAMESPACES[*]}, backups in $OUT_DIR"

# 1. drain until nothing is pending or leased.
deadline=$((SECONDS + TIMEOUT))
for ns in "${NAMESPACES[@]}"; do
  round=0
  while :; do
    file=$(printf '%s/%s-%03d.json' "$OUT_DIR" "$ns" "$round")
    "$OMNIRELAY" resourcelease drain --address "$ADDRESS" --namespace "$ns" --out "$file" >/dev/null
    round=$((round + 1))
    left=$(stats | json "(lambda s: s['pending'] + s['active'])(d['namespaces']['$ns'])")
    [[ "$left" == 0 ]] && break
    if (( SECONDS > deadline )); then
      log "namespace $ns still has $left item(s) pending or leased after ${TIMEOUT}s"; exit 1
    fi
    sleep 0.2
  done
  saved=$(cat "$OUT_DIR/$ns-"*.json | "$PYTHON" -c "
import json, sys
text = sys.stdin.read()
decoder, i, n = json.JSONDecoder(), 0, 0
while i < len(text):
    while i < len(text) and text[i].isspace(): i += 1
    if i >= len(text): break
    doc, i = decoder.raw_decode(text, i)
    n += len(doc['items'])
print(n)")
  log "drained $ns: $saved item(s) saved in $round file(s), nothing leased"
done

# 2. stop, upgrade, start.
log "restarting: $RESTART_CMD"
bash -c "$RESTART_CMD"

# 3. ready again.
until curl -fsS "http://$ADMIN/readyz" >/dev/null 2>&1; do
  if (( SECONDS > deadline )); then log "node not ready after restart"; exit 1; fi
  sleep 0.2
done
log "node ready"

# 4. restore in order.
total_saved=0
total_back=0
for ns in "${NAMESPACES[@]}"; do
  for file in "$OUT_DIR/$ns-"*.json; do
    count=$(json "len(d['items'])" < "$file")
    out=$("$OMNIRELAY" resourcelease restore --address "$ADDRESS" --namespace "$ns" --file "$file")
    restored=$(echo "$out" | sed -n 's/^restored \([0-9]*\) item(s).*(\([0-9]*\) already known)$/\1 \2/p')
    back=$(( ${restored% *} + ${restored#* } ))
    total_saved=$((total_saved + count))
    total_back=$((total_back + back))
    if [[ "$back" != "$count" ]]; then
      log "$file: $count saved but $back restored"; exit 1
    fi
  done
done
log "restored $total_back of $total_saved saved item(s)"

# 5. healthy.
health=$(curl -sS -o /dev/null -w '%{http_code}' "http://$ADMIN/omnirelay/control/resourcelease/health")
ready=$(curl -sS -o /dev/null -w '%{http_code}' "http://$ADMIN/readyz")
if [[ "$health" != 200 || "$ready" != 200 ]]; then
  log "unhealthy after restore: health $health, readyz $ready"; exit 1
fi
log "done: node $NODE healthy, nothing lost ($total_saved item(s) carried over)"
