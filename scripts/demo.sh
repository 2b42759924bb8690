#!/usr/bin/env bash
# Installs, builds, starts vbd on 127.0.0.1 with its built-in defaults, trains a 3-layer MLP
# whose Linear layers run through the daemon, and prints the loss and the statistics.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
build=${VB_BUILD_DIR:-build}

log=$(mktemp /tmp/vbd-demo-XXXXXX.log)
"$build/server/vbd" >"$log" 2>&1 &
vbd_pid=$!
stop() { kill -TERM "$vbd_pid" 2>/dev/null && wait "$vbd_pid" || true; }
trap stop EXIT

for _ in $(seq 1 100); do
  grep -q "listening on" "$log" && break
  kill -0 "$vbd_pid" 2>/dev/null || { echo "vbd did not start:"; cat "$log"; exit 1; }
  sleep 0.1
done
address=$(sed -n 's/^vbd listening on //p' "$log")
echo "== vbd is serving on $address (log: $log)"

echo "== training through the daemon"
"$build/examples/train_mlp" --targets "$address,local" --steps 300

echo
echo "== vbctl stats"
"$build/client/vbctl" --address "$address" stats
echo
echo "== vbctl stats tiers"
"$build/client/vbctl" --address "$address" stats tiers
