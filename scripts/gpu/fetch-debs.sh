#!/usr/bin/env bash
# Here (Debian 12): downloads the Debian packages the GPU machine lacks into .debs/ (git
# ignores it). Bookworm's gRPC 1.51 / protobuf 3.21 / Abseil 20220623 are the versions
# Ubuntu 24.04 ships, so their libraries run there unpacked into a prefix.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .debs
cd .debs
apt-get download \
  libgrpc++-dev libgrpc++1.51 libgrpc29 libgrpc-dev protobuf-compiler-grpc \
  libabsl20220623 libabsl-dev libre2-9 libre2-dev libc-ares2 libc-ares-dev \
  libprotobuf-dev libprotobuf32 libprotoc32 protobuf-compiler \
  libcpp-httplib-dev libcpp-httplib0.11 libtomlplusplus-dev libtomlplusplus3 \
  nlohmann-json3-dev libxxhash-dev libxxhash0
ls -1 | wc -l
