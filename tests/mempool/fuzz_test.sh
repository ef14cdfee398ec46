#!/usr/bin/env bash
# libFuzzer over the pool's operation sequences (fuzz_ops.h): compiles the pool's
# sources, the simulated device and fuzz_target.c with clang-14 and
# -fsanitize=fuzzer,address,undefined, then fuzzes for FUZZ_SECONDS (default 30).
# A crash fails the test; the input is saved under the test's undeclared outputs
# (bazel-testlogs/tests/mempool/fuzz_test/test.outputs/) for fuzz_replay_test.
# Only when clang-14 or its libFuzzer runtime is missing does it skip (exit 0, with
# the reason in the log); CI installs clang-14 and libclang-rt-14-dev so it never is.
set -euo pipefail

root="${TEST_SRCDIR:-$(pwd)}/${TEST_WORKSPACE:-dilated_attention}"
[ -d "$root/mempool" ] || root=$(pwd)
work="${TEST_TMPDIR:-$(mktemp -d)}"
artifacts="${TEST_UNDECLARED_OUTPUTS_DIR:-$work}"
seconds="${FUZZ_SECONDS:-30}"
clang="${CLANG:-/usr/bin/clang-14}"

if [ ! -x "$clang" ]; then
  echo "SKIPPED: $clang is not installed (Debian: apt-get install clang-14 libclang-rt-14-dev)"
  exit 0
fi
echo 'int LLVMFuzzerTestOneInput(const unsigned char* d, unsigned long n) { (void)d; (void)n; return 0; }' \
  >"$work/probe.c"
if ! "$clang" -fsanitize=fuzzer "$work/probe.c" -o "$work/probe" 2>"$work/probe.log"; then
  echo "SKIPPED: $clang cannot link -fsanitize=fuzzer (is libclang-rt-14-dev installed?):"
  head -n 3 "$work/probe.log"
  exit 0
fi

# The pool without its CUDA backend (no_cuda_backend.c stands in), plus common/.
srcs=()
for f in "$root"/mempool/*.c; do
  [ "$(basename "$f")" = backend_cuda.c ] || srcs+=("$f")
done
srcs+=("$root/common/common.c")
for f in fuzz_ops.c sim_backend.c no_cuda_backend.c fuzz_target.c; do
  srcs+=("$root/tests/mempool/$f")
done

echo "compiling the fuzz target with $clang ($("$clang" --version | head -n 1))"
"$clang" -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -Wall -Wextra -Werror -I"$root" "${srcs[@]}" -lpthread -o "$work/mempool_fuzz"

# Seeds: every backend mode, several alignments and scales, random operations.
mkdir -p "$work/corpus"
RANDOM=7
for i in $(seq 0 31); do
  seed=$(printf '\\%03o\\%03o' $((i * 37 % 256)) $((i * 53 % 256)))
  for _ in $(seq 300); do seed+=$(printf '\\%03o' $((RANDOM % 256))); done
  printf "$seed" >"$work/corpus/seed$i"
done

echo "fuzzing for ${seconds}s"
ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=1:allocator_may_return_null=1" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
  "$work/mempool_fuzz" -max_total_time="$seconds" -max_len=4096 -timeout=20 \
    -rss_limit_mb=3072 -print_final_stats=1 -artifact_prefix="$artifacts/" "$work/corpus" \
    >"$work/fuzz.log" 2>&1 && rc=0 || rc=$?
grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|stat::number_of_executed_units|stat::peak_rss_mb|ERROR|invariant|SUMMARY' \
  "$work/fuzz.log" || true
if [ "$rc" -ne 0 ]; then
  echo "FAILED: libFuzzer exited with $rc; the log's end:"
  tail -n 60 "$work/fuzz.log"
  exit 1
fi
echo "PASSED: no invariant broken in ${seconds}s of fuzzing"
