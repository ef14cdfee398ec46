#!/usr/bin/env bash
# Everything the CUDA attention kernels need checked on a GPU, in one device call
# (budgeted to stay inside a 10-minute command): the CUDA attention test, memcheck
# and synccheck on its small cases, the forward/backward throughput of every
# kernel path side by side (`da bench`, n = 128K, h = 16, LongNet patterns), and,
# on request (DA_GPU_STEPS, below), Nsight Compute on each kernel (`profile`: the
# sections; `source`: the sampled stalls per SASS instruction, for
# scripts/ncu_roles.py) and the full side-by-side benchmark against the PyTorch
# peers (tools/bench/bench_attention.py).
# Logs under $OUT; a short table last.
#
# Here:   scripts/gpu_bundle.sh cuda_attention   (bundle into gpu_carry/)
# There:  bash scripts/gpu_attention.sh          (device call with carry gpu_carry)
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=${1:-gpu_carry}
out=${OUT:-gpu_out}
# The device tool brings back at most 8 files: the logs worth reading go to $OUT,
# per-run scratch (bench JSON, stderr) to $tmp.
tmp=$(mktemp -d)
mkdir -p "$out"
# DA_GPU_STEPS picks the steps (default: test sanitize paths; also profile, source,
# sass, bench).
steps=" ${DA_GPU_STEPS:-test sanitize paths} "
want() { [[ "$steps" == *" $1 "* ]]; }
export LD_LIBRARY_PATH="$PWD/$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
test_bin="$bundle/tests/attention_cuda_attention_test"
da="$bundle/tools/da"
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
summary="$out/summary.txt"
: >"$summary"
row() { printf '%-46s %s\n' "$1" "$2" | tee -a "$summary"; }

row "gpu" "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -1)"

if want test; then
timeout 240 "$test_bin" >"$out/test.log" 2>&1
row "cuda_attention_test" "rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$out/test.log" | tr '\n' ' ')"
fi

want sanitize && for tool in memcheck synccheck; do
  timeout 90 "$sanitizer" --tool "$tool" --error-exitcode 9 "$test_bin" \
    --gtest_filter='CudaAttentionSmall.MatchesCpuOnChosenCases' >"$out/sanitize_$tool.log" 2>&1
  row "$tool (small chosen cases)" "rc=$? $(grep -m1 'ERROR SUMMARY' "$out/sanitize_$tool.log")"
done

# One `da bench` per kernel path and mode: "label env" pairs, LongNet then
# head-group (each head group one pattern: short work items per CTA).
if want paths; then
# DA_GPU_EXTRA_PATHS adds "label env" entries (separated by ';'), DA_GPU_SKIP_PATHS
# drops the labels it matches (an extended regular expression).
IFS=';' read -ra extra <<<"${DA_GPU_EXTRA_PATHS:-}"
paths=("default DA_CUDA_FWD_VARIANT=0" "fwd-no-ping-pong DA_CUDA_FWD_VARIANT=1"
       "fwd-one-role DA_CUDA_FWD_VARIANT=2" "${extra[@]}" "fwd-2-consumers DA_CUDA_FWD_CONSUMERS=2"
       "fwd-3-consumers DA_CUDA_FWD_CONSUMERS=3"
       "fwd-one-item DA_CUDA_PERSISTENT=0"
       "every-residue DA_CUDA_COMPACT=0"
       "no-tma DA_CUDA_TMA=0"
       "bwd-one-role DA_CUDA_BWD_VARIANT=1"
       "portable DA_CUDA_PORTABLE=1")
# A `da` built from another commit, carried as $bundle/base/da, runs beside the
# default path in the same call (before/after figures from one machine state).
[ -x "$bundle/base/da" ] && paths=("baseline DA_CUDA_FWD_VARIANT=0" "${paths[@]}")
printf '%-18s %-10s %4s %10s %10s %10s\n' "path" "mode" "d" "fwd" "bwd" "fwd+bwd" >"$out/paths.txt"
for mode in longnet head-group; do
for d in 64 128; do
  for entry in "${paths[@]}"; do
    label=${entry%% *}
    [ -n "${DA_GPU_SKIP_PATHS:-}" ] && [[ "$label" =~ ^(${DA_GPU_SKIP_PATHS})$ ]] && continue
    [ "$mode" = head-group ] && [ "$label" = portable ] && continue
    bin=$da
    [ "$label" = baseline ] && bin=$bundle/base/da
    env "${entry#* }" timeout 60 "$bin" bench --backend cuda --n 131072 --heads 16 --head-dim "$d" \
      --mode "$mode" --pass fwdbwd --repeats 10 --json >"$tmp/bench.json" 2>"$tmp/bench.err"
    python3 - "$tmp/bench.json" "$label" "$mode" "$d" >>"$out/paths.txt" <<'EOF'
import json, sys
try:
    j = json.load(open(sys.argv[1]))
    f, b, fb = j["forward"], j["backward"], j["forward_backward"]
    print("%-18s %-10s %4s %10.1f %10.1f %10.1f" % (sys.argv[2], sys.argv[3], sys.argv[4],
          f["effective_tflops"], b["effective_tflops"], fb["effective_tflops"]))
except Exception as e:  # a failed run: its stderr follows
    print("%-18s %-10s %4s failed: %s %s" % (sys.argv[2], sys.argv[3], sys.argv[4], e,
          open(sys.argv[1].replace(".json", ".err")).read()[-300:]))
EOF
  done
done
done
row "kernel paths (TFLOP/s, n = 128K)" "$out/paths.txt"
fi

# profile: Nsight Compute on one launch of each kernel of a fwd+bwd step
# (n = 32K, d = 64 and 128): speed of light, pipes, shared memory, warp stalls.
if want profile; then
  ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  for d in 64 128; do
    timeout 150 "$ncu" -k 'regex:forward|backward_ws|dq_kernel|dkdv_kernel' -c 3 \
      --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
      --section WarpStateStats --section LaunchStats --section Occupancy \
      --metrics 'sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__ops_path_tensor_src_bf16_dst_fp32.sum,sm__cycles_elapsed.max,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared.avg.pct_of_peak_sustained_elapsed,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
      "$da" bench --backend cuda --n 32768 --heads 16 --head-dim "$d" --pass fwdbwd \
      --warmup 0 --repeats 1 >"$out/ncu_$d.txt" 2>&1
    row "ncu d=$d" "rc=$? $(grep -c '  Section: ' "$out/ncu_$d.txt") sections"
  done
fi

# source: where each kernel's warps stall, instruction by instruction (Nsight
# Compute's sampled stall reasons on the SASS, one CSV per kernel, d = 64 and 128,
# n = 32K). The producer's and the consumers' instructions are told apart by
# their kind (LDGSTS / HGMMA) when the CSV is read. With a bundle built with
# BAZEL_FLAGS=--config=lineinfo, the same report's per-source-line export sits
# beside each CSV (src_K_D.lines.csv: scripts/ncu_roles.py --lines N).
if want source; then
  ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  for d in 64 128; do
    for k in forward_ws backward_ws; do
      timeout 120 "$ncu" -k "regex:$k" -c $([ $k = forward_ws ] && echo 1 || echo 2) \
        --section SourceCounters --section WarpStateStats -f -o "$tmp/src" \
        "$da" bench --backend cuda --n 32768 --heads 16 --head-dim "$d" --pass fwdbwd \
        --warmup 0 --repeats 1 >"$tmp/src.log" 2>&1
      rc=$?
      "$ncu" --import "$tmp/src.ncu-rep" --page source --csv --print-source sass \
        >"$tmp/src_${k}_$d.csv" 2>&1 ||
        "$ncu" --import "$tmp/src.ncu-rep" --page source --csv >"$tmp/src_${k}_$d.csv" 2>&1
      "$ncu" --import "$tmp/src.ncu-rep" --page source --csv --print-source cuda,sass \
        >"$tmp/src_${k}_$d.lines.csv" 2>&1
      row "ncu source $k d=$d" "rc=$rc $(wc -l <"$tmp/src_${k}_$d.csv") lines"
    done
  done
  tar -C "$tmp" -czf "$out/source_csv.tar.gz" $(cd "$tmp" && ls src_*.csv)
fi

# sass: the SASS of every kernel in the library (cuobjdump), to read offline.
if want sass; then
  cuobjdump=$(command -v cuobjdump || echo /usr/local/cuda/bin/cuobjdump)
  "$cuobjdump" -sass "$bundle/libdilated_attention.so" 2>&1 | gzip >"$out/sass.txt.gz"
  row "sass" "rc=$? $(zcat "$out/sass.txt.gz" | grep -c 'Function :') functions"
fi

if want bench; then
  timeout 330 python3 tools/bench/bench_attention.py --library "$bundle/libdilated_attention.so" \
    --budget-s 300 --json "$tmp/bench.json" --csv "$out/bench.csv" >"$out/bench.log" 2>&1
  row "bench_attention.py" "rc=$? $(grep -c ' ms ' "$out/bench.log") rows"
fi

echo
cat "$summary"
[ -f "$out/paths.txt" ] && cat "$out/paths.txt"; rm -rf "$tmp"
