#!/usr/bin/env bash
# Runs on the GPU machine over the bundle from scripts/gpu_bundle.sh: every test
# binary (unless DA_GPU_TESTS=0), compute-sanitizer (memcheck + racecheck) on the
# tests named in DA_GPU_SANITIZE ("test" or "test:gtest-filter"), and the benchmarks
# named in DA_GPU_BENCH ("tool:arg,arg ..."), and the Python scripts named in
# DA_GPU_PY ("path/script.py:arg,arg ...", with DA_LIBRARY set to the bundle's
# libdilated_attention.so and python/ on PYTHONPATH).
# Logs: $OUT/logs.tgz (the device tool returns few files) and $OUT/summary.txt;
# a short table is printed last. Usage: scripts/gpu_run.sh [bundle-dir]
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=${1:-gpu_carry}
out=${OUT:-gpu_out}
logs=$(mktemp -d)/gpu_logs
mkdir -p "$logs" "$out"
summary="$logs/summary.txt"
: >"$summary"
export NCCL_NVLS_ENABLE=0
export LD_LIBRARY_PATH="$PWD/$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Where tests/abi looks for the shared library outside Bazel's runfiles.
export TEST_SRCDIR="$PWD" TEST_WORKSPACE="$bundle"

row() { printf '%-44s %s\n' "$1" "$2" | tee -a "$summary"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$logs/gpu.txt" 2>&1
row "gpu" "$(head -1 "$logs/gpu.txt")"

for t in "$bundle"/tests/*; do
  [ "${DA_GPU_TESTS:-1}" = 1 ] || break
  name=$(basename "$t")
  timeout 600 "$t" >"$logs/test_$name.log" 2>&1
  rc=$?
  skipped=$(grep -c '\[  SKIPPED \]' "$logs/test_$name.log")
  row "test $name" "rc=$rc skipped=$skipped"
done

sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for entry in ${DA_GPU_SANITIZE:-}; do  # "test" or "test:gtest-filter"
  IFS=: read -r t filter <<<"$entry"
  for tool in memcheck racecheck; do
    timeout "${DA_GPU_SANITIZE_TIMEOUT:-150}" "$sanitizer" --tool "$tool" --error-exitcode 9 "$bundle/tests/$t" \
      ${filter:+--gtest_filter=$filter} >"$logs/sanitize_${tool}_$t.log" 2>&1
    row "$tool $t" "rc=$? $(grep -m1 'ERROR SUMMARY' "$logs/sanitize_${tool}_$t.log")"
  done
done

for cmd in ${DA_GPU_BENCH:-}; do
  IFS=: read -r name args <<<"$cmd"
  timeout 600 "$bundle/tools/$name" ${args//,/ } >"$logs/bench_$name.log" 2>&1
  row "bench $name ${args//,/ }" "rc=$?"
done

export DA_LIBRARY="$PWD/$bundle/libdilated_attention.so" PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
for cmd in ${DA_GPU_PY:-}; do
  IFS=: read -r script args <<<"$cmd"
  name=$(basename "$script" .py)
  timeout "${DA_GPU_PY_TIMEOUT:-600}" python3 "$script" ${args//,/ } >"$logs/py_$name.log" 2>&1
  row "python $name ${args//,/ }" "rc=$? $(tail -1 "$logs/py_$name.log" | cut -c1-60)"
  cp "$logs/py_$name.log" "$out/" 2>/dev/null
done

cp "$summary" "$out/summary.txt"
tar czf "$out/logs.tgz" -C "$(dirname "$logs")" gpu_logs
echo
cat "$summary"
