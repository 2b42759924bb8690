# Sourced by the GPU scripts (run.sh, fp4.sh), from the repository root: unpacks the carried
# Debian packages (gRPC, protobuf, Abseil, cpp-httplib) into a prefix, points the linker and
# loader at it and at the machine's PyTorch, and defines configure_gpu_build, which configures
# build-gpu with VB_WITH_CUDA against them (its log in "$out/configure.log").
out=${OUT:-/tmp/vb-gpu-out}
mkdir -p "$out"
prefix=/tmp/vb-deps
mkdir -p "$prefix"
for f in .debs/*.deb; do dpkg -x "$f" "$prefix"; done
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
# gRPC's CMake config links re2 by plain name (-lre2): let the linker search the prefix.
export LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LIBRARY_PATH:-}"
export PATH="/opt/torch/.venv/bin:$PATH"
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')

configure_gpu_build() {
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DVB_WITH_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DCMAKE_PREFIX_PATH="$prefix/usr;$torch_prefix" \
    -DProtobuf_PROTOC_EXECUTABLE="$prefix/usr/bin/protoc" \
    -DProtobuf_INCLUDE_DIR="$prefix/usr/include" \
    -DProtobuf_LIBRARY="$prefix/usr/lib/x86_64-linux-gnu/libprotobuf.so" \
    > "$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; return 1; }
}
