/* gpu_compress.h: the gradient compressors on the GPU, the device halves of the
 * gradient communicator's bucket work, and the NCCL engine's in-stream signature
 * check. Each function is the launcher of one kernel family: it checks its
 * arguments, sizes the grid, launches on `stream` (a cudaStream_t as void*) and
 * checks the launch; none synchronizes or allocates. Payloads are bit-identical to
 * compress.h's host versions (same formats, same rounding, explicit __fmul_rn /
 * __fadd_rn so nvcc contracts nothing into an FMA). Library-internal; visible to
 * tests/comm and tools/comm_bench. */
#ifndef DA_COMM_GPU_COMPRESS_H
#define DA_COMM_GPU_COMPRESS_H

#include <stddef.h>
#include <stdint.h>

#include "common/da_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* --- NCCL signature check ---------------------------------------------------------- */

/* Most int64 fields one in-stream signature check carries. */
#define DA_GPU_SIGNATURE_MAX 64

/* Written by the check kernel into mapped host memory, once (the first mismatch). */
typedef struct {
  volatile int32_t mismatch; /* 0: none seen */
  int32_t field;
  int64_t mine, lo, hi;
} da_gpu_signature_flag;

/* scratch[i] = sig[i], scratch[n + i] = -sig[i] (n <= DA_GPU_SIGNATURE_MAX; the
 * values travel as kernel arguments, so the host array may change at once). */
da_status da_gpu_signature_fill(int64_t* scratch, const int64_t* sig, int n, void* stream);
/* After an all-reduce MAX of scratch: if any field's max != min, records it in *flag
 * (a device-visible pointer to mapped host memory). */
da_status da_gpu_signature_check(const int64_t* scratch, const int64_t* sig, int n,
                                 da_gpu_signature_flag* flag, void* stream);

/* --- Elementwise ------------------------------------------------------------------------- */

da_status da_gpu_zero(void* x, size_t bytes, void* stream);
/* a += residual */
da_status da_gpu_add(float* a, const float* residual, size_t n, void* stream);
/* x *= factor */
da_status da_gpu_scale(float* x, size_t n, float factor, void* stream);

/* --- Encoders (see compress.h for the formats) -------------------------------------------- */

da_status da_gpu_cast_encode(int elem, const float* a, size_t n, float prescale, uint16_t* out,
                             float* residual, void* stream);
da_status da_gpu_cast_decode(int elem, const uint16_t* in, size_t n, float postscale, float* out,
                             void* stream);

/* Workspace of the top-k and threshold selections for n elements (device memory,
 * from the pool or the caller). */
size_t da_gpu_select_workspace_bytes(size_t n);

/* Exact top-k: radix select (4 passes of 8 bits over the magnitude keys, histograms
 * in shared memory, the chosen digit kept on the device), then an ordered
 * compaction (block counts, a scan over blocks, block scans), so the set, its order
 * and the tie-breaking equal the host's. */
da_status da_gpu_topk_encode(const float* a, size_t n, size_t k, uint32_t* idx, float* val,
                             float* residual, void* workspace, void* stream);

da_status da_gpu_randomk_encode(const float* a, size_t n, size_t k, uint64_t key, uint32_t* idx,
                                float* val, float* residual, void* stream);

/* Threshold: the sample is sorted in one block (bitonic, shared memory), then the
 * same ordered compaction with `capacity` slots and DA_CX_NO_INDEX padding. */
da_status da_gpu_threshold_encode(const float* a, size_t n, double ratio, size_t capacity,
                                  uint32_t* idx, float* val, float* residual, void* workspace,
                                  void* stream);

da_status da_gpu_int8_encode(const float* a, size_t n, size_t chunk, float* scales, int8_t* q,
                             float* residual, void* stream);

/* --- Decoders ------------------------------------------------------------------------------ */

/* out[idx[j]] += val[j] (DA_CX_NO_INDEX skipped; indices of one payload are distinct). */
da_status da_gpu_sparse_accumulate(float* out, const uint32_t* idx, const float* val, size_t k,
                                   void* stream);
/* out[idx[j]] = val[j] */
da_status da_gpu_scatter(float* out, const uint32_t* idx, const float* val, size_t k, void* stream);
/* out[i] = postscale * sum over r < ranks (in order) of q_r[i] * scales_r[i / chunk], the
 * payload of rank r starting at payloads + r * payload_bytes (layout of compress.h). */
da_status da_gpu_int8_decode_sum(float* out, size_t n, size_t chunk, const void* payloads,
                                 size_t payload_bytes, size_t scales_offset, size_t q_offset,
                                 int ranks, float postscale, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* DA_COMM_GPU_COMPRESS_H */
