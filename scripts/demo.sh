#!/usr/bin/env bash
# Installs what OmniRelay needs, builds and installs it into .venv, starts one
# node and shows it answering on its admin endpoints, then stops it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
JOBS=${OMNIRELAY_BUILD_JOBS:-$(nproc)}

bash scripts/install-deps.sh
[[ -x .venv/bin/python ]] || /usr/bin/python3 -m venv --system-site-packages .venv
echo "== building and installing the omnirelay package (first build takes a few minutes)"
OMNIRELAY_BUILD_DIR="$ROOT/build/release" OMNIRELAY_BUILD_JOBS=$JOBS \
  .venv/bin/pip install --no-index --quiet --force-reinstall .

workdir=$(mktemp -d)
trap 'kill "$node" 2>/dev/null || true; wait "$node" 2>/dev/null || true; rm -rf "$workdir"' EXIT
echo "== starting a node: omnirelay serve --name demo --admin-address 127.0.0.1:0"
.venv/bin/omnirelay serve --name demo --admin-address 127.0.0.1:0 \
  --ready-file "$workdir/ready.json" --log-file "$workdir/node.log" &
node=$!
for _ in $(seq 100); do [[ -s "$workdir/ready.json" ]] && break; sleep 0.1; done
[[ -s "$workdir/ready.json" ]] || { echo "node did not become ready"; cat "$workdir/node.log"; exit 1; }
admin=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['admin'])" "$workdir/ready.json")

for path in /healthz /readyz /omnirelay/introspect; do
  printf '\nGET http://%s%s\n' "$admin" "$path"
  curl -sS "http://$admin$path"; echo
done
printf '\nGET http://%s/metrics (first lines)\n' "$admin"
curl -sS "http://$admin/metrics" | head -n 12
echo
echo "== stopping the node (SIGTERM: graceful drain)"
kill -TERM "$node"; wait "$node"; echo "node exited with status $?"
echo "== node log"; cat "$workdir/node.log"
