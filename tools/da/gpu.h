/* gpu.h: the `da` command's GPU side: 16-bit device tensors drawn from the same
 * seeded stream as the CPU's, the CUDA passes timed with CUDA events, results
 * copied back as float, the default pool's peak, and the dense bf16 GEMM ceiling
 * (cuBLAS) the bench compares with. Host code; every function needs a usable
 * GPU (cli_probe_gpu) and works on the current device. Failures return a status
 * with the sentence in cli_gpu_error(). */
#ifndef DA_TOOLS_GPU_H
#define DA_TOOLS_GPU_H

#include <stddef.h>
#include <stdint.h>

#include "attention/dilated_attention.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Draws count values from *state (workload.h's cli_random_fill). */
typedef void (*cli_fill_fn)(float* data, size_t count, uint64_t* state);

typedef struct {
  const da_attention_params* params; /* borrowed; must outlive the tensors */
  const da_attention_batch* batch;
  da_dtype dtype; /* bf16 or f16 */
  int64_t tokens;
  int heads, kv_heads, head_dim;
  void *q, *k, *v, *out; /* device, dtype */
  float* lse;            /* device, fp32 */
  void *dout, *dq, *dk, *dv; /* device, dtype; only with backward */
  void* stream;              /* cudaStream_t; NULL: the legacy default stream */
  void *start, *middle, *end; /* cudaEvent_t around the passes */
  size_t device_bytes;        /* all tensors together */
} cli_gpu_tensors;

/* Allocates the tensors (cudaMalloc, before any timing), fills q, k, v (and, with
 * backward, dout) from fill(seed) in that order rounded to dtype (nearest even),
 * and poisons the outputs with 0xFF bytes (NaN), so an element the passes do not
 * write stays NaN. Free with cli_gpu_tensors_destroy (also after a failure). */
da_status cli_gpu_tensors_create(const da_attention_params* params,
                                 const da_attention_batch* batch, da_dtype dtype,
                                 int with_backward, cli_fill_fn fill, uint64_t seed,
                                 cli_gpu_tensors* tensors);
void cli_gpu_tensors_destroy(cli_gpu_tensors* tensors);

/* A cli_pass_fn (workload.h) over the CUDA passes, context = cli_gpu_tensors*:
 * records events around the forward and the backward on the tensors' stream and
 * waits for the last one, so each time is the GPU's, launch included. */
da_status cli_gpu_run_passes(void* tensors, int with_backward, double* forward_ms,
                             double* backward_ms);

/* Copies count elements of a device tensor of type dtype (bf16, f16 or f32) into
 * host floats (exact: both 16-bit types widen to float without rounding). */
da_status cli_gpu_copy_to_host(const void* device, da_dtype dtype, size_t count, float* host);

/* The current device's default da_mempool (the passes' workspace): forget its
 * peak, and its peak allocated bytes since, in MiB. */
da_status cli_gpu_pool_reset_peak(void);
da_status cli_gpu_pool_peak_mib(double* mib);

#define CLI_GPU_CEILING_SIZE 8192 /* m = n = k of the ceiling's GEMM */

/* Dense bf16 GEMM throughput of the current GPU with cuBLAS: C = A B with
 * m = n = k = CLI_GPU_CEILING_SIZE, bf16 in and out, fp32 accumulation
 * (cublasGemmEx, CUBLAS_COMPUTE_32F), random operands; 3 warm-up calls, then the
 * best of `repeats` calls timed with CUDA events. *seconds: the whole
 * measurement, cuBLAS setup included. What the matrix products of an attention
 * kernel could reach at most on this GPU. */
da_status cli_gpu_measure_ceiling(int repeats, double* gflops, double* seconds);

/* The sentence of the last failing cli_gpu_* call (the tool is single-threaded). */
const char* cli_gpu_error(void);

/* Sets that sentence and returns status (for gpu_*.cu). */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
da_status cli_gpu_fail(da_status status, const char* fmt, ...);

#ifdef __cplusplus
}
#endif

#endif /* DA_TOOLS_GPU_H */
