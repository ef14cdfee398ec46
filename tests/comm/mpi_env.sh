# Sourced by the MPI test scripts: how mpirun runs inside Bazel's sandbox on a small
# machine without network configuration.
#   - as root (CI containers) Open MPI wants both ALLOW_RUN_AS_ROOT variables;
#   - more ranks than cores: --oversubscribe, no binding;
#   - shared memory only (self, vader), without the single-copy mechanism (CMA needs
#     ptrace rights the sandbox may not grant);
#   - a short private directory (under /dev/shm, else /tmp) for the session and the
#     shared-memory segments: PMIx's Unix socket paths must stay below 108
#     characters (TEST_TMPDIR is longer), and mpirun's job id derives from its pid,
#     which is the same in every Bazel sandbox (PID namespaces), so concurrent tests
#     would otherwise share /tmp/ompi.* session directories and
#     /dev/shm/vader_segment.* files.
# Under ASan, libmpi's allocations that live until exit are not ours: they are
# suppressed (lsan_mpi.supp) for these tests only.
export OMPI_ALLOW_RUN_AS_ROOT=1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_hwloc_base_binding_policy=none
export OMPI_MCA_btl=self,vader
export OMPI_MCA_btl_vader_single_copy_mechanism=none
DA_MPI_TMP=$(mktemp -d /dev/shm/da_mpi.XXXXXX 2>/dev/null || mktemp -d /tmp/da_mpi.XXXXXX)
trap 'rm -rf "$DA_MPI_TMP"' EXIT
export OMPI_MCA_orte_tmpdir_base=$DA_MPI_TMP
export OMPI_MCA_btl_vader_backing_directory=$DA_MPI_TMP
export OMPI_MCA_mpi_yield_when_idle=1
# Open MPI unloads its components (dlclose) in MPI_Finalize, so their frames cannot
# be named at exit; the slow unwinder walks on into libmpi / libopen-pal, which the
# suppressions name.
if [ -n "${DA_LSAN_SUPPRESSIONS:-}" ] && [ -f "$DA_LSAN_SUPPRESSIONS" ]; then
  export LSAN_OPTIONS="suppressions=$(cd "$(dirname "$DA_LSAN_SUPPRESSIONS")" && pwd)/$(basename "$DA_LSAN_SUPPRESSIONS"):print_suppressions=0:fast_unwind_on_malloc=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
fi
