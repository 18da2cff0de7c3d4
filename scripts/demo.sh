#!/usr/bin/env bash
# Installs what OmniRelay needs, builds and installs it into .venv, then runs
# the contention demo (seed 000): `omnirelay up contention` starts a gateway and
# three concurrency-capped echo backends as real processes, `omnirelay benchmark`
# drives TTL-less load through the gateway, and the gateway's peer metrics show
# pool exhaustion surfacing as RESOURCE_EXHAUSTED (never DEADLINE_EXCEEDED);
# a second run with --ttl 50ms shows DEADLINE_EXCEEDED instead. Stops by itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
JOBS=${OMNIRELAY_BUILD_JOBS:-$(nproc)}

bash scripts/install-deps.sh
[[ -x .venv/bin/python ]] || /usr/bin/python3 -m venv --system-site-packages .venv
echo "== building and installing the omnirelay package (the first build takes a few minutes)"
OMNIRELAY_BUILD_DIR="$ROOT/build/release" OMNIRELAY_BUILD_JOBS=$JOBS \
  .venv/bin/pip install --no-index --quiet --force-reinstall .

workdir=$(mktemp -d)
up_pid=""
cleanup() {
  if [[ -n "$up_pid" ]]; then kill -INT "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; fi
  rm -rf "$workdir"
}
trap cleanup EXIT

echo "== omnirelay up contention   (gateway + 3 echo backends, 8 in flight each, 100 ms service time)"
.venv/bin/omnirelay up contention --json --artifacts "$workdir/artifacts" >"$workdir/up.json" 2>"$workdir/up.log" &
up_pid=$!
endpoints() {
  .venv/bin/python - "$workdir/up.json" "$1" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
start = text.find("{")
data, _ = json.JSONDecoder().raw_decode(text[start:])
gateway = data["nodes"]["gateway"]
print(gateway["endpoints"]["grpc"] if sys.argv[2] == "grpc" else gateway["admin"])
PY
}
for _ in $(seq 300); do endpoints grpc >/dev/null 2>&1 && break; sleep 0.1; done
gateway=$(endpoints grpc) || { echo "cluster did not start:"; cat "$workdir/up.log"; exit 1; }
admin=$(endpoints admin)
echo "   gateway gRPC $gateway, admin http://$admin"

bench() {
  .venv/bin/omnirelay benchmark --transport grpc --service trace.Analytics \
    --procedure trace.Analytics/Process --address "$gateway" --encoding application/json \
    --body '{"payload":"load"}' "$@"
}
peer_metrics() {
  curl -sS "http://$admin/metrics" | grep -E '^omnirelay_peer_(pool_exhausted|acquire_deadline_exceeded)_total|^omnirelay_peer_lease_rejected_total\{peer_rejection_reason="busy"' || true
}

echo; echo "== TTL-less load: 400 concurrent, 300 rps for 5 s (more than the 240 rps the backends can serve)"
bench --concurrency 400 --rps 300 --duration 5s
echo; echo "== gateway peer metrics"
peer_metrics
echo; echo "== the same load with --ttl 50ms (shorter than the backends' service time)"
bench --concurrency 400 --rps 300 --duration 3s --ttl 50ms
echo; echo "== gateway peer metrics (pool_exhausted unchanged by deadline expiries)"
peer_metrics
echo; echo "== stopping the cluster"
