// The `da` command's GPU tensors and timing (gpu.h). Host code only; nvcc
// compiles it for the CUDA headers' host conversions to bf16 and fp16.
#include <cuda_runtime.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mempool/da_mempool.h"
#include "tools/da/gpu.h"

namespace {

char g_error[512];

// Host staging for uploads and downloads: 1 Mi elements at a time.
constexpr size_t kChunkElements = size_t{1} << 20;

da_status cuda_fail(cudaError_t e, const char* what) {
  return cli_gpu_fail(DA_STATUS_CUDA_ERROR, "%s failed: %s (%s)", what, cudaGetErrorName(e),
                      cudaGetErrorString(e));
}

da_status device_alloc(void** ptr, size_t bytes, size_t* total, const char* name) {
  cudaError_t e = cudaMalloc(ptr, bytes > 0 ? bytes : 1);
  if (e != cudaSuccess) {
    *ptr = nullptr;
    cudaGetLastError();
    return cli_gpu_fail(e == cudaErrorMemoryAllocation ? DA_STATUS_OUT_OF_MEMORY
                                                       : DA_STATUS_CUDA_ERROR,
                        "cudaMalloc of %s (%.1f MiB) failed: %s", name,
                        (double)bytes / (1024.0 * 1024.0), cudaGetErrorString(e));
  }
  *total += bytes;
  return DA_STATUS_SUCCESS;
}

// count values from fill, rounded to dtype, into device memory, chunk by chunk.
da_status upload_random(void* device, size_t count, da_dtype dtype, cli_fill_fn fill,
                        uint64_t* state, float* staging, uint16_t* encoded) {
  for (size_t done = 0; done < count; done += kChunkElements) {
    const size_t n = count - done < kChunkElements ? count - done : kChunkElements;
    fill(staging, n, state);
    da_status st = da_convert_from_f32(dtype, staging, encoded, n);
    if (st != DA_STATUS_SUCCESS) return st;
    cudaError_t e = cudaMemcpy(static_cast<uint16_t*>(device) + done, encoded,
                               n * sizeof(uint16_t), cudaMemcpyHostToDevice);
    if (e != cudaSuccess) return cuda_fail(e, "cudaMemcpy of an input");
  }
  return DA_STATUS_SUCCESS;
}

}  // namespace

extern "C" {

const char* cli_gpu_error(void) { return g_error; }

da_status cli_gpu_fail(da_status status, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_error, sizeof g_error, fmt, ap);
  va_end(ap);
  return status;
}

void cli_gpu_tensors_destroy(cli_gpu_tensors* t) {
  void* buffers[] = {t->q, t->k, t->v, t->out, t->lse, t->dout, t->dq, t->dk, t->dv};
  for (void* p : buffers)
    if (p != nullptr) cudaFree(p);
  cudaEvent_t events[] = {static_cast<cudaEvent_t>(t->start), static_cast<cudaEvent_t>(t->middle),
                          static_cast<cudaEvent_t>(t->end)};
  for (cudaEvent_t e : events)
    if (e != nullptr) cudaEventDestroy(e);
  memset(t, 0, sizeof *t);
}

da_status cli_gpu_tensors_create(const da_attention_params* params,
                                 const da_attention_batch* batch, da_dtype dtype,
                                 int with_backward, cli_fill_fn fill, uint64_t seed,
                                 cli_gpu_tensors* t) {
  memset(t, 0, sizeof *t);
  t->params = params;
  t->batch = batch;
  t->dtype = dtype;
  if (dtype != DA_DTYPE_BF16 && dtype != DA_DTYPE_F16)
    return cli_gpu_fail(DA_STATUS_INVALID_ARGUMENT, "dtype %s: the GPU tensors are bf16 or f16",
                        da_dtype_name(dtype));
  if (da_attention_num_tokens(batch, &t->tokens) != DA_STATUS_SUCCESS)
    return cli_gpu_fail(DA_STATUS_INVALID_ARGUMENT, "%s", da_last_error());
  t->heads = params->num_heads;
  t->kv_heads = params->num_kv_heads ? params->num_kv_heads : params->num_heads;
  t->head_dim = params->head_dim;
  const size_t q_count = (size_t)t->tokens * (size_t)t->heads * (size_t)t->head_dim;
  const size_t kv_count = (size_t)t->tokens * (size_t)t->kv_heads * (size_t)t->head_dim;
  const size_t q_bytes = q_count * sizeof(uint16_t), kv_bytes = kv_count * sizeof(uint16_t);
  const size_t lse_bytes = (size_t)t->tokens * (size_t)t->heads * sizeof(float);
  size_t* total = &t->device_bytes;
  da_status st = device_alloc(&t->q, q_bytes, total, "q");
  if (st == DA_STATUS_SUCCESS) st = device_alloc(&t->k, kv_bytes, total, "k");
  if (st == DA_STATUS_SUCCESS) st = device_alloc(&t->v, kv_bytes, total, "v");
  if (st == DA_STATUS_SUCCESS) st = device_alloc(&t->out, q_bytes, total, "out");
  void* lse = nullptr;
  if (st == DA_STATUS_SUCCESS) st = device_alloc(&lse, lse_bytes, total, "lse");
  t->lse = static_cast<float*>(lse);
  if (with_backward) {
    if (st == DA_STATUS_SUCCESS) st = device_alloc(&t->dout, q_bytes, total, "dout");
    if (st == DA_STATUS_SUCCESS) st = device_alloc(&t->dq, q_bytes, total, "dq");
    if (st == DA_STATUS_SUCCESS) st = device_alloc(&t->dk, kv_bytes, total, "dk");
    if (st == DA_STATUS_SUCCESS) st = device_alloc(&t->dv, kv_bytes, total, "dv");
  }
  if (st != DA_STATUS_SUCCESS) return st;
  void** events[] = {&t->start, &t->middle, &t->end};
  for (void** slot : events) {
    cudaEvent_t event = nullptr;
    cudaError_t ce = cudaEventCreate(&event);
    if (ce != cudaSuccess) return cuda_fail(ce, "cudaEventCreate");
    *slot = event;
  }

  float* staging = static_cast<float*>(malloc(kChunkElements * sizeof(float)));
  uint16_t* encoded = static_cast<uint16_t*>(malloc(kChunkElements * sizeof(uint16_t)));
  if (staging == nullptr || encoded == nullptr) {
    st = cli_gpu_fail(DA_STATUS_OUT_OF_MEMORY, "out of host memory for the upload staging");
  } else {
    uint64_t state = seed;
    // The order of cli_tensors_create's draws: q, k, v, dout.
    void* inputs[] = {t->q, t->k, t->v, with_backward ? t->dout : nullptr};
    const size_t counts[] = {q_count, kv_count, kv_count, q_count};
    for (int i = 0; i < 4 && st == DA_STATUS_SUCCESS; ++i)
      if (inputs[i] != nullptr)
        st = upload_random(inputs[i], counts[i], dtype, fill, &state, staging, encoded);
  }
  free(staging);
  free(encoded);
  if (st != DA_STATUS_SUCCESS) return st;
  void* outputs[] = {t->out, t->lse, t->dq, t->dk, t->dv};
  size_t sizes[] = {q_bytes, lse_bytes, q_bytes, kv_bytes, kv_bytes};
  for (int i = 0; i < 5; ++i) {
    if (outputs[i] == nullptr) continue;
    cudaError_t e = cudaMemset(outputs[i], 0xFF, sizes[i]);
    if (e != cudaSuccess) return cuda_fail(e, "cudaMemset (poisoning the outputs)");
  }
  return DA_STATUS_SUCCESS;
}

da_status cli_gpu_run_passes(void* context, int with_backward, double* forward_ms,
                             double* backward_ms) {
  cli_gpu_tensors* t = static_cast<cli_gpu_tensors*>(context);
  cudaStream_t stream = static_cast<cudaStream_t>(t->stream);
  cudaEvent_t start = static_cast<cudaEvent_t>(t->start);
  cudaEvent_t middle = static_cast<cudaEvent_t>(t->middle);
  cudaEvent_t end = static_cast<cudaEvent_t>(t->end);
  cudaError_t e = cudaEventRecord(start, stream);
  if (e != cudaSuccess) return cuda_fail(e, "cudaEventRecord");
  da_status st = da_attention_forward_cuda(t->params, t->batch, t->dtype, t->q, t->k, t->v,
                                           t->out, t->lse, t->stream);
  if (st != DA_STATUS_SUCCESS)
    return cli_gpu_fail(st, "da_attention_forward_cuda failed: %s: %s", da_status_string(st),
                        da_last_error());
  if ((e = cudaEventRecord(middle, stream)) != cudaSuccess) return cuda_fail(e, "cudaEventRecord");
  if (with_backward) {
    st = da_attention_backward_cuda(t->params, t->batch, t->dtype, t->q, t->k, t->v, t->out,
                                    t->lse, t->dout, t->dq, t->dk, t->dv, t->stream);
    if (st != DA_STATUS_SUCCESS)
      return cli_gpu_fail(st, "da_attention_backward_cuda failed: %s: %s", da_status_string(st),
                          da_last_error());
  }
  if ((e = cudaEventRecord(end, stream)) != cudaSuccess) return cuda_fail(e, "cudaEventRecord");
  // A fault inside a kernel surfaces here.
  if ((e = cudaEventSynchronize(end)) != cudaSuccess) return cuda_fail(e, "the passes");
  float fwd = 0.0f, bwd = 0.0f;
  if ((e = cudaEventElapsedTime(&fwd, start, middle)) != cudaSuccess ||
      (e = cudaEventElapsedTime(&bwd, middle, end)) != cudaSuccess)
    return cuda_fail(e, "cudaEventElapsedTime");
  *forward_ms = fwd;
  *backward_ms = bwd;
  return DA_STATUS_SUCCESS;
}

da_status cli_gpu_copy_to_host(const void* device, da_dtype dtype, size_t count, float* host) {
  cudaError_t e;
  if (dtype == DA_DTYPE_F32) {
    e = cudaMemcpy(host, device, count * sizeof(float), cudaMemcpyDeviceToHost);
    return e == cudaSuccess ? DA_STATUS_SUCCESS : cuda_fail(e, "cudaMemcpy to the host");
  }
  if (dtype != DA_DTYPE_BF16 && dtype != DA_DTYPE_F16)
    return cli_gpu_fail(DA_STATUS_INVALID_ARGUMENT, "dtype %s: expected bf16, f16 or f32",
                        da_dtype_name(dtype));
  uint16_t* encoded = static_cast<uint16_t*>(malloc(kChunkElements * sizeof(uint16_t)));
  if (encoded == nullptr)
    return cli_gpu_fail(DA_STATUS_OUT_OF_MEMORY, "out of host memory for the download staging");
  da_status st = DA_STATUS_SUCCESS;
  for (size_t done = 0; done < count && st == DA_STATUS_SUCCESS; done += kChunkElements) {
    const size_t n = count - done < kChunkElements ? count - done : kChunkElements;
    e = cudaMemcpy(encoded, static_cast<const uint16_t*>(device) + done, n * sizeof(uint16_t),
                   cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) {
      st = cuda_fail(e, "cudaMemcpy to the host");
      break;
    }
    st = da_convert_to_f32(dtype, encoded, host + done, n);
  }
  free(encoded);
  return st;
}

static da_status current_pool(da_mempool** pool) {
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return cuda_fail(e, "cudaGetDevice");
  da_status st = da_mempool_default(device, pool);
  if (st != DA_STATUS_SUCCESS)
    return cli_gpu_fail(st, "da_mempool_default failed: %s: %s", da_status_string(st),
                        da_last_error());
  return DA_STATUS_SUCCESS;
}

da_status cli_gpu_pool_reset_peak(void) {
  da_mempool* pool = nullptr;
  da_status st = current_pool(&pool);
  if (st == DA_STATUS_SUCCESS && (st = da_mempool_reset_peak_stats(pool)) != DA_STATUS_SUCCESS)
    return cli_gpu_fail(st, "da_mempool_reset_peak_stats failed: %s", da_last_error());
  return st;
}

da_status cli_gpu_pool_peak_mib(double* mib) {
  da_mempool* pool = nullptr;
  da_mempool_stats stats;
  da_status st = current_pool(&pool);
  if (st == DA_STATUS_SUCCESS && (st = da_mempool_get_stats(pool, &stats)) != DA_STATUS_SUCCESS)
    return cli_gpu_fail(st, "da_mempool_get_stats failed: %s", da_last_error());
  if (st == DA_STATUS_SUCCESS) *mib = (double)stats.peak_allocated_bytes / (1024.0 * 1024.0);
  return st;
}

}  // extern "C"
