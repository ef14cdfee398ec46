#!/usr/bin/env bash
# README command 1: installs what is missing, builds, and runs `da demo`
# (GPU when present, CPU otherwise). Extra arguments go to `da demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
da_install_deps
bazel run //tools/da:da -- demo "$@"
