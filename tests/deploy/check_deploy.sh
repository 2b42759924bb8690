#!/usr/bin/env bash
# The deployment files are what an operator installs: systemd must accept the unit without a
# single complaint, and vbd must start with the example config as it is.
#   check_deploy.sh REPO_ROOT VBD_BINARY
set -euo pipefail
repo=$1
vbd=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# systemd-analyze checks that ExecStart exists, so point it at the binary just built.
sed "s|/usr/bin/vbd|$vbd|" "$repo/deploy/systemd/vbd.service" > "$work/vbd.service"
output=$(cd "$work" && systemd-analyze verify "$work/vbd.service" 2>&1) || {
  echo "systemd-analyze verify failed:"; echo "$output"; exit 1; }
if [[ -n "$output" ]]; then
  echo "systemd-analyze verify complained:"; echo "$output"; exit 1
fi
echo "ok: systemd-analyze verify accepts deploy/systemd/vbd.service"

"$vbd" --config "$repo/deploy/vbd.toml" --port 0 --metrics-port 0 > "$work/out" 2> "$work/err" &
pid=$!
for _ in $(seq 1 100); do
  grep -q "listening on" "$work/out" && break
  kill -0 "$pid" 2>/dev/null || { echo "vbd refused deploy/vbd.toml:"; cat "$work/err"; exit 1; }
  sleep 0.1
done
grep -q "listening on" "$work/out" || { echo "vbd did not start"; kill -9 "$pid"; exit 1; }
kill -TERM "$pid"
wait "$pid" || { echo "vbd exited $? after SIGTERM"; exit 1; }
echo "ok: vbd starts with deploy/vbd.toml and drains on SIGTERM"
