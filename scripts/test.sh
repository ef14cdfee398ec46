#!/usr/bin/env bash
# README command 2: installs what is missing and runs the whole test suite twice:
# optimized, then under AddressSanitizer + UndefinedBehaviorSanitizer. Tests that
# need a GPU skip without one (their logs say so). Ends with "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
da_install_deps || exit 1

passed=0
failed=0
status=0
run_suite() {  # $1: label, rest: bazel flags
  local label=$1 log
  shift
  log=$(mktemp)
  echo "=== bazel test $* //... ($label)"
  bazel test "$@" --test_summary=short //... 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || status=$rc
  passed=$((passed + $(grep -cE '^//\S+ +(\(cached\) )?PASSED' "$log" || true)))
  failed=$((failed + $(grep -cE '^//\S+ +(\(cached\) )?(FAILED|TIMEOUT|NO STATUS|FAILED TO BUILD|INCOMPLETE)' "$log" || true)))
  rm -f "$log"
}

start=$(date +%s)
run_suite optimized
run_suite "asan+ubsan" --config=asan
echo "suite time: $(( $(date +%s) - start )) s"
[ "$status" -eq 0 ] || [ "$failed" -gt 0 ] || failed=1
echo "$passed passed, $failed failed"
exit "$status"
