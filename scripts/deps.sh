#!/usr/bin/env bash
# Installs what building and testing need, from Debian's apt, only if missing
# (idempotent: a no-op when everything is there). Sourced by demo.sh and test.sh.
# The CUDA toolkit is expected at /usr/local/cuda (nvcc 13); it is not an apt package.

DA_APT_PACKAGES=(
  build-essential          # gcc/g++ 12, ar, libasan/libubsan
  bazel-bootstrap          # Bazel 4.2.3
  bazel-rules-java         # @rules_java, referenced by Bazel's built-in WORKSPACE
  googletest               # sources under /usr/src/googletest
  libcjson-dev             # JSON configs (da bench --config, dist_config)
  libzstd-dev              # comm: lossless gradient/checkpoint codec
  libopenmpi-dev           # comm: MPI engine, NCCL bootstrap
  openmpi-bin              # mpirun for the multi-process tests
  clang-14                 # libFuzzer targets (tests/mempool:fuzz_test)
  libclang-rt-14-dev       # libFuzzer + sanitizer runtimes for clang-14
  python3-numpy            # python/: the ctypes binding's tests (/usr/bin/python3)
)

da_missing_packages() {
  local p
  for p in "${DA_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

da_install_deps() {
  local missing
  missing=$(da_missing_packages)
  if [ -n "$missing" ]; then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "deps: installing $(echo $missing | tr '\n' ' ')" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >&2
  fi
  if ! command -v nvcc >/dev/null 2>&1 && [ ! -x /usr/local/cuda/bin/nvcc ]; then
    echo "deps: the CUDA toolkit (nvcc) is missing at /usr/local/cuda; install CUDA 13 first" >&2
    return 1
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  da_install_deps
fi
