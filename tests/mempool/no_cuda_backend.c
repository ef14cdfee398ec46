/* The fuzz build compiles the pool's sources with clang and no CUDA: this stands in
 * for backend_cuda.c there (the fuzzer drives the host backend and the simulated
 * device only). */
#include "common/error.h"
#include "mempool/backend.h"

da_status da_mp_backend_cuda_create(const da_mempool_config* config, da_mp_backend** backend) {
  (void)config;
  (void)backend;
  return da_error_set(DA_STATUS_NOT_SUPPORTED, "this fuzz build has no CUDA backend");
}
