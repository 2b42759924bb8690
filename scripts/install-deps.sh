#!/usr/bin/env bash
# Installs the Debian 12 packages the build and the test suite need. Idempotent: packages
# already present are left alone, so a warm machine pays only for `dpkg -s`.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev
  libtorch-dev libopenblas0-pthread
  libcpp-httplib-dev libssl-dev openssl
  libtomlplusplus-dev nlohmann-json3-dev libxxhash-dev libsystemd-dev systemd
  prometheus-cpp-dev prometheus docker-compose python3-yaml
  libgtest-dev libgmock-dev
  python3 python3-grpcio python3-protobuf
  clang-format
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all packages present"
fi
