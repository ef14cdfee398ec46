#!/usr/bin/env bash
# Runs a test binary on NP ranks: mpi_run.sh NP BINARY [ARGS...]. The run is bounded
# by `timeout`; the binary's exit status (any rank failing) is the test's.
set -u
np=$1
bin=$2
shift 2
DA_LSAN_SUPPRESSIONS="$(dirname "$0")/lsan_mpi.supp"
source "$(dirname "$0")/mpi_env.sh"
# Files that Bazel asks GoogleTest to write would be written by every rank at once.
unset XML_OUTPUT_FILE TEST_PREMATURE_EXIT_FILE TEST_SHARD_STATUS_FILE GTEST_OUTPUT
start=$(date +%s%N)
timeout --signal=KILL 50 mpirun -np "$np" "$bin" "$@"
rc=$?
echo "mpirun -np $np $(basename "$bin"): exit $rc after $(( ($(date +%s%N) - start) / 1000000 )) ms"
[ "$rc" -eq 137 ] && echo "FAIL: timed out (a hang is a bug: every wait has a deadline)"
exit "$rc"
