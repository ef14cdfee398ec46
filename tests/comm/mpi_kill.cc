// A rank dies mid-collective (SIGKILL on itself); the survivors must get an error
// status with a sentence within the communicator's timeout, never hang.
// Usage (under mpirun --enable-recovery): mpi_kill allreduce|grad TIMEOUT_MS
// Each survivor prints "SURVIVOR_OK rank R ..." or "SURVIVOR_BAD rank R ...", then
// leaves with _exit: MPI_Finalize would wait for the dead peer.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <vector>

#include "comm/da_comm.h"

namespace {

double now_s() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

int g_rank, g_size, g_timeout_ms;

[[noreturn]] void report(da_status st, double start, const char* what) {
  double elapsed_ms = 1e3 * (now_s() - start);
  bool ok = st == DA_STATUS_COMM_ERROR && elapsed_ms <= 1.5 * g_timeout_ms + 2000 && da_last_error()[0] != '\0';
  printf("%s rank %d of %d: %s returned %s after %.0f ms (timeout_ms=%d): %s\n", ok ? "SURVIVOR_OK" : "SURVIVOR_BAD",
         g_rank, g_size, what, da_status_string(st), elapsed_ms, g_timeout_ms, da_last_error());
  fflush(stdout);
  _exit(ok ? 0 : 1);
}

[[noreturn]] void die() {
  printf("victim rank %d: SIGKILL\n", g_rank);
  fflush(stdout);
  raise(SIGKILL);
  _exit(99);  // not reached
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: mpi_kill allreduce|grad TIMEOUT_MS\n");
    return 2;
  }
  // MPI is left to the library to initialise (MPI_THREAD_MULTIPLE), as a user would.
  g_timeout_ms = atoi(argv[2]);
  da_comm_config cfg = da_comm_config_default();
  cfg.timeout_ms = g_timeout_ms;
  da_comm* comm = nullptr;
  if (da_comm_create_mpi(&cfg, &comm) != DA_STATUS_SUCCESS) {
    printf("SURVIVOR_BAD create: %s\n", da_last_error());
    return 1;
  }
  da_comm_rank(comm, &g_rank);
  da_comm_size(comm, &g_size);
  const int victim = g_size - 1;
  const size_t n = 1 << 22;  // 16 MiB per rank: a collective that takes a while
  std::vector<float> a(n, 1.0f), b(n, 0.0f);

  if (strcmp(argv[1], "allreduce") == 0) {
    for (int step = 0;; step++) {
      double start = now_s();
      da_status st = da_comm_allreduce(comm, a.data(), b.data(), n, DA_DTYPE_F32, DA_COMM_SUM);
      if (g_rank == victim && step == 2) {
        usleep(2000);  // the worker is inside the collective now
        die();
      }
      if (st == DA_STATUS_SUCCESS) st = da_comm_synchronize(comm);
      if (st != DA_STATUS_SUCCESS) {
        // Later calls fail at once with the same sentence; destroy does not hang.
        da_status again = da_comm_barrier(comm);
        da_status destroyed = da_comm_destroy(comm);
        if (again != st || destroyed != st) printf("SURVIVOR_BAD rank %d: not sticky\n", g_rank);
        report(st, start, "allreduce + synchronize");
      }
      if (b[0] != (float)g_size || step > 5) {
        printf("SURVIVOR_BAD rank %d: step %d finished with b[0]=%g\n", g_rank, step, b[0]);
        _exit(1);
      }
    }
  }

  // grad: 8 tensors of 1 MiB, 1 MiB buckets; the victim marks half, then dies.
  da_grad_config gcfg = da_grad_config_default();
  gcfg.bucket_cap_bytes = 1 << 20;
  da_grad_comm* grad = nullptr;
  if (da_grad_create(comm, &gcfg, &grad) != DA_STATUS_SUCCESS) return 1;
  for (int t = 0; t < 8; t++) {
    char name[16];
    snprintf(name, sizeof name, "w%d", t);
    da_grad_register(grad, name, a.data() + t * (n / 8), n / 8, DA_DTYPE_F32, nullptr);
  }
  for (int step = 0; step < 3; step++) {
    double start = now_s();
    da_status st = DA_STATUS_SUCCESS;
    for (int t = 7; t >= 0 && st == DA_STATUS_SUCCESS; t--) {
      if (g_rank == victim && step == 1 && t == 3) {
        usleep(2000);
        die();
      }
      st = da_grad_mark_ready(grad, t, nullptr);
    }
    if (st == DA_STATUS_SUCCESS) st = da_grad_synchronize(grad);
    if (st != DA_STATUS_SUCCESS) {
      da_status destroyed = da_grad_destroy(grad);
      (void)destroyed;
      da_comm_destroy(comm);
      report(st, start, "grad mark_ready/synchronize");
    }
  }
  printf("SURVIVOR_BAD rank %d: three steps went through\n", g_rank);
  _exit(1);
}
