#!/usr/bin/env bash
# Runs one Python test file of the binding ($2) against the Bazel-built shared
# library ($1), with /usr/bin/python3 (numpy from Debian) unless DA_PYTHON names
# another interpreter (--test_env=DA_PYTHON=...).
#
# Under --config=asan the library is instrumented and links the ASan runtime,
# which must be the first library of the process or it kills the process on load.
# The interpreter is not instrumented, so the runtime the library links (as ldd
# resolves it) is preloaded: the binding then runs under ASan/UBSan too. Leak
# checking stays with the C tests: the interpreter keeps its own objects at exit.
set -euo pipefail

lib=$(realpath "$1")
test_file=$2
export DA_LIBRARY="$lib"

asan_runtime=$(ldd "$lib" | awk '$1 ~ /^libasan\.so/ { print $3 }')
if [[ -n "$asan_runtime" ]]; then
  echo "run_python_test: $lib links $asan_runtime; preloading it"
  export LD_PRELOAD="$asan_runtime${LD_PRELOAD:+:$LD_PRELOAD}"
  export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
fi
exec "${DA_PYTHON:-/usr/bin/python3}" "$test_file"
