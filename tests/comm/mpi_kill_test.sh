#!/usr/bin/env bash
# A rank kills itself with SIGKILL in the middle of a collective; the survivors must
# report DA_STATUS_COMM_ERROR with a sentence within the timeout (mpi_kill.cc checks
# the time and prints SURVIVOR_OK). mpirun --enable-recovery keeps it from killing
# the survivors first; its own exit status is logged, not judged.
set -u
bin=$1
DA_LSAN_SUPPRESSIONS="$(dirname "$0")/lsan_mpi.supp"
source "$(dirname "$0")/mpi_env.sh"
# The survivors leave with _exit on purpose (MPI_Finalize would wait for the dead peer).
export ASAN_OPTIONS="detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
timeout_ms=2000
failures=0
run() {  # NP MODE
  local np=$1 mode=$2 out rc start elapsed ok
  out=$(mktemp)
  start=$(date +%s)
  timeout --signal=KILL 25 mpirun --enable-recovery -np "$np" "$bin" "$mode" "$timeout_ms" >"$out" 2>&1
  rc=$?
  elapsed=$(( $(date +%s) - start ))
  cat "$out"
  ok=$(grep -c '^SURVIVOR_OK' "$out")
  echo "== $mode on $np ranks: mpirun exit $rc after ${elapsed} s, $ok of $((np - 1)) survivors reported in time"
  if [ "$rc" -eq 137 ]; then echo "FAIL: $mode: hung until the test's own timeout"; failures=$((failures + 1)); fi
  if [ "$ok" -ne $((np - 1)) ]; then echo "FAIL: $mode: expected $((np - 1)) SURVIVOR_OK lines"; failures=$((failures + 1)); fi
  if grep -q '^SURVIVOR_BAD' "$out"; then echo "FAIL: $mode: a survivor saw the wrong error"; failures=$((failures + 1)); fi
  grep -q '^victim rank' "$out" || { echo "FAIL: $mode: the victim never died"; failures=$((failures + 1)); }
  rm -f "$out"
}
run 3 allreduce
run 4 grad
[ "$failures" -eq 0 ] && echo PASS
exit "$failures"
