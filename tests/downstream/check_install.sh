#!/usr/bin/env bash
# Installs the build tree into a scratch prefix, builds tests/downstream against it with
# find_package(vb), and runs it against the installed vbd on a loopback port.
#   check_install.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
source_dir=$1
build_dir=$2
work=$(mktemp -d)
vbd_pid=
cleanup() { [[ -n "$vbd_pid" ]] && kill -9 "$vbd_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

cmake --install "$build_dir" --prefix "$work/prefix" > "$work/install.log"
for f in bin/vbd bin/vbctl lib/systemd/system/vbd.service share/vb/vbd.toml.example \
         lib/cmake/vb/vbConfig.cmake include/vb/client/remote_linear.h; do
  [[ -e "$work/prefix/$f" ]] || { echo "missing from the install: $f"; exit 1; }
done
echo "ok: installed binaries, unit, example config, headers and CMake package"

cmake -S "$source_dir/tests/downstream" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$work/prefix" > "$work/configure.log" 2>&1 \
  || { cat "$work/configure.log"; exit 1; }
cmake --build "$work/build" > "$work/build.log" 2>&1 || { tail -40 "$work/build.log"; exit 1; }
echo "ok: a separate project builds against find_package(vb) and vb::client"

"$work/prefix/bin/vbd" --port 0 --metrics-port 0 > "$work/vbd.out" 2> "$work/vbd.err" &
vbd_pid=$!
for _ in $(seq 1 100); do
  grep -q "listening on" "$work/vbd.out" && break
  sleep 0.1
done
address=$(sed -n 's/^vbd listening on //p' "$work/vbd.out")
[[ -n "$address" ]] || { echo "installed vbd did not start"; cat "$work/vbd.err"; exit 1; }
"$work/build/downstream" "$address"
kill -TERM "$vbd_pid" && wait "$vbd_pid"
vbd_pid=
