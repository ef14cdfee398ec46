#!/usr/bin/env bash
# Builds (optimized) every C/C++ test binary, the benchmark programs and the shared
# library, and copies them, stripped, into gpu_carry/ (ignored by git): the GPU
# machine has no Bazel, so this folder travels to it and scripts/gpu_run.sh runs
# there. Every test links the CUDA kernels statically (~6 MB each), and the device
# tool carries at most 64 MiB, so a regular expression picks the tests (default:
# all). Usage: scripts/gpu_bundle.sh [test-label-regex]; BAZEL_FLAGS adds build
# flags (e.g. --config=lineinfo for Nsight's per-source-line view).
set -euo pipefail
cd "$(dirname "$0")/.."
out=gpu_carry
tests=$(bazel query 'kind(cc_test, //tests/...)' 2>/dev/null | grep -E "${1:-.}")
tools=$(bazel query 'kind(cc_binary, //tools/...)' 2>/dev/null)
bazel build -c opt ${BAZEL_FLAGS:-} //:libdilated_attention.so $tests $tools
rm -rf "$out"
mkdir -p "$out/tests" "$out/tools"
for t in $tests; do
  path=${t#//}; path=${path/://}
  cp "bazel-bin/$path" "$out/tests/$(echo "${t#//tests/}" | tr '/:' '__')"
done
for t in $tools; do
  path=${t#//}; path=${path/://}
  cp "bazel-bin/$path" "$out/tools/"
done
cp bazel-bin/libdilated_attention.so "$out/"
# Runtime libraries the GPU machine (Ubuntu, no Debian -dev packages) lacks.
mkdir -p "$out/lib"
cp -L /usr/lib/x86_64-linux-gnu/libcjson.so.1 "$(gcc -print-file-name=libgomp.so.1)" "$out/lib/"
chmod -R u+w "$out"
strip --strip-unneeded "$out"/tests/* "$out"/tools/* "$out"/*.so
du -sh "$out"
