// The host side of the CUDA passes: validation (the same plan as the CPU), the
// device and pointer checks, the kernel arguments, and the stream-ordered launches.
// Nothing here synchronises the device or calls cudaMalloc: the backward's delta
// workspace, the persistent forward's work counter and, for more than
// DA_CUDA_MAX_INLINE_SEQS sequences, the device copy of cu_seqlens come from the
// device's default da_mempool on the caller's stream.
#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention/cuda_geometry.h"
#include "attention/cuda_launch.h"
#include "attention/dilated_attention.h"
#include "attention/params.h"
#include "common/error.h"
#include "mempool/da_mempool.h"

namespace {

using da_cuda::KernelArgs;

da_status cuda_failure(cudaError_t e, const char* what) {
  return da_error_set(DA_STATUS_CUDA_ERROR, "%s failed: %s (%s)", what, cudaGetErrorName(e),
                      cudaGetErrorString(e));
}

// Head dims with compiled kernels.
bool head_dim_compiled(int d) { return d == 32 || d == 64 || d == 96 || d == 128; }

// Everything but the tensors: params, dtype, device. On success *device is the
// current device.
da_status check_support(const da_attention_params* params, da_dtype dtype, int* device,
                        int* major_out = nullptr) {
  if (params == nullptr)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "params must not be NULL");
  if (dtype != DA_DTYPE_BF16 && dtype != DA_DTYPE_F16)
    return da_error_set(DA_STATUS_NOT_SUPPORTED,
                        "dtype=%s is not supported by the CUDA passes (bf16 or f16 inputs, "
                        "fp32 accumulation; use the CPU passes for f32)",
                        da_dtype_name(dtype));
  if (!head_dim_compiled(params->head_dim))
    return da_error_set(DA_STATUS_NOT_SUPPORTED,
                        "params->head_dim=%d is not supported by the CUDA passes (32, 64, 96 "
                        "or 128)",
                        params->head_dim);
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    cudaGetLastError();
    return da_error_set(DA_STATUS_NO_DEVICE, "no CUDA device is available (%s)",
                        e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
  }
  if ((e = cudaGetDevice(device)) != cudaSuccess) return cuda_failure(e, "cudaGetDevice");
  int major = 0;
  e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, *device);
  if (e != cudaSuccess) return cuda_failure(e, "cudaDeviceGetAttribute");
  if (major < 8)
    return da_error_set(DA_STATUS_NOT_SUPPORTED,
                        "device %d has compute capability %d.x; the CUDA passes need sm_80 "
                        "or newer",
                        *device, major);
  if (major_out != nullptr) *major_out = major;
  return DA_STATUS_SUCCESS;
}

// The Hopper forward (wgmma) on sm_90 unless DA_CUDA_PORTABLE=1 asks for the
// portable mma.sync kernels everywhere (the tests run both on one GPU).
bool use_wgmma(int major) {
  const char* env = getenv("DA_CUDA_PORTABLE");
  return major == 9 && !(env != nullptr && env[0] != '\0' && env[0] != '0');
}

// Which Hopper forward kernel runs (for comparing them in one benchmark run):
// DA_CUDA_FWD_VARIANT=0 (default) the warp-specialized kernel with ping-pong,
// 1 the warp-specialized kernel without ping-pong, 2 the one-role kernel.
int fwd_variant() {
  const char* env = getenv("DA_CUDA_FWD_VARIANT");
  int v = env != nullptr ? atoi(env) : 0;
  return v >= 0 && v <= 2 ? v : 0;
}

// Whether the warp-specialized forward loads whole K/V tiles by TMA (default)
// or everything by cp.async (DA_CUDA_TMA=0; for comparisons, and the tests).
int use_tma() {
  const char* env = getenv("DA_CUDA_TMA");
  return !(env != nullptr && env[0] == '0');
}

// Consumer warpgroups of the Hopper forward at d = 64: three (kFwdWideRows query
// rows a CTA) where forward_rows_wide (cuda_geometry.h) says they pay, else two.
// DA_CUDA_FWD_CONSUMERS=2 or 3 forces the choice (comparisons, and the tests).
int fwd_consumers(const KernelArgs& a) {
  const char* env = getenv("DA_CUDA_FWD_CONSUMERS");
  const int forced = env != nullptr ? atoi(env) : 0;
  if (forced == 2 || forced == 3) return forced;
  return a.d == 64 && da_cuda::forward_rows_wide(a) ? 3 : 2;
}

// Whether CTAs are made only for the residues the patterns can select
// (HeadGeometry::sel; default 1), or for every residue (DA_CUDA_COMPACT=0, for
// comparisons and the tests).
int compact_rows() {
  const char* env = getenv("DA_CUDA_COMPACT");
  return !(env != nullptr && env[0] == '0');
}

// Whether the Hopper forward and backward run persistent CTAs (one an SM, each
// looping over work items, the next item's loads under the current one's
// epilogue): default 1, DA_CUDA_PERSISTENT=0 for one CTA a work item
// (comparisons, and the tests).
int persistent() {
  const char* env = getenv("DA_CUDA_PERSISTENT");
  return !(env != nullptr && env[0] == '0');
}

// The persistent kernels' CTAs: one a multiprocessor, or DA_CUDA_CTAS (>= 1;
// the tests use a few, so that every CTA takes many work items).
da_status persistent_ctas(int device, int* ctas) {
  const char* env = getenv("DA_CUDA_CTAS");
  if (env != nullptr && atoi(env) >= 1) {
    *ctas = atoi(env);
    return DA_STATUS_SUCCESS;
  }
  cudaError_t e = cudaDeviceGetAttribute(ctas, cudaDevAttrMultiProcessorCount, device);
  return e == cudaSuccess ? DA_STATUS_SUCCESS
                          : cuda_failure(e, "cudaDeviceGetAttribute(multiprocessors)");
}

// Which Hopper backward runs: DA_CUDA_BWD_VARIANT=0 (default) the
// warp-specialized dQ and dK/dV kernels, 1 the one-role ones.
int bwd_variant() {
  const char* env = getenv("DA_CUDA_BWD_VARIANT");
  int v = env != nullptr ? atoi(env) : 0;
  return v >= 0 && v <= 1 ? v : 0;
}

// The pointer must be device (or managed) memory the current device can use.
da_status check_device_pointer(const void* p, const char* name, int device) {
  if (p == nullptr) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s must not be NULL", name);
  cudaPointerAttributes attr;
  cudaError_t e = cudaPointerGetAttributes(&attr, p);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s is not a CUDA pointer (%s)", name,
                        cudaGetErrorString(e));
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "%s must be device memory (it is %s memory)", name,
                        attr.type == cudaMemoryTypeHost ? "pinned host" : "pageable host");
  if (attr.type == cudaMemoryTypeDevice && attr.device != device)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "%s lives on device %d but the current device is %d", name,
                        attr.device, device);
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s must be 16-byte aligned", name);
  return DA_STATUS_SUCCESS;
}

struct Prepared {
  KernelArgs args;
  int device;
  da_mempool* pool;
  void* cu_buffer;  // pool block holding cu_seqlens on the device, or NULL
};

// Validates params/batch and fills the kernel arguments (tensors left NULL).
da_status prepare(const da_attention_params* params, const da_attention_batch* batch,
                  da_dtype dtype, cudaStream_t stream, Prepared* out) {
  int major = 0;
  da_status st = check_support(params, dtype, &out->device, &major);
  if (st != DA_STATUS_SUCCESS) return st;
  da_attn_plan plan;
  if ((st = da_attn_plan_init(params, batch, &plan)) != DA_STATUS_SUCCESS) return st;
  KernelArgs& a = out->args;
  memset(&a, 0, sizeof a);
  da_cuda::args_from_plan(plan, &a, compact_rows());
  a.use_wgmma = use_wgmma(major);
  a.fwd_variant = fwd_variant();
  a.bwd_variant = bwd_variant();
  a.use_tma = use_tma();
  if ((st = persistent_ctas(out->device, &a.persistent_ctas)) != DA_STATUS_SUCCESS) return st;
  int w_max = 0;
  for (int i = 0; i < plan.num_patterns; ++i) w_max = plan.w[i] > w_max ? plan.w[i] : w_max;
  if (plan.h > 65535 || plan.h_kv > 65535)
    return da_error_set(DA_STATUS_NOT_SUPPORTED,
                        "params->num_heads=%d: the CUDA passes take at most 65535 heads",
                        plan.h);
  int64_t n_max = 0;
  for (int64_t s = 0; s < plan.batch; ++s) {
    int64_t n = da_attn_seq_len(&plan, s);
    n_max = n > n_max ? n : n_max;
  }
  // Positions inside a sequence, and one segment past its end, are int.
  if (n_max + (int64_t)w_max >= ((int64_t)1 << 31))
    return da_error_set(DA_STATUS_NOT_SUPPORTED,
                        "a sequence of %lld tokens (plus the longest segment, %d) exceeds the "
                        "CUDA passes' 2^31 positions per sequence",
                        (long long)n_max, w_max);
  if (plan.batch > 65535LL * 1024)
    return da_error_set(DA_STATUS_NOT_SUPPORTED, "batch->batch=%lld is too large for one launch",
                        (long long)plan.batch);
  a.batch = (int)plan.batch;
  a.n_max = (int)n_max;
  a.fwd_consumers = fwd_consumers(a);
  a.tokens = plan.tokens;
  out->pool = nullptr;
  out->cu_buffer = nullptr;
  if (plan.cu_seqlens == nullptr) {
    a.varlen = 0;
    a.seqlen = (int)plan.seqlen;
  } else if (plan.batch <= DA_CUDA_MAX_INLINE_SEQS) {
    a.varlen = 1;
    memcpy(a.cu_inline, plan.cu_seqlens, sizeof(int64_t) * (size_t)(plan.batch + 1));
  } else {
    a.varlen = 2;
    size_t bytes = sizeof(int64_t) * (size_t)(plan.batch + 1);
    if ((st = da_mempool_default(out->device, &out->pool)) != DA_STATUS_SUCCESS) return st;
    if ((st = da_mempool_allocate(out->pool, bytes, stream, &out->cu_buffer)) != DA_STATUS_SUCCESS)
      return st;
    cudaError_t e = cudaMemcpyAsync(out->cu_buffer, plan.cu_seqlens, bytes,
                                    cudaMemcpyHostToDevice, stream);
    if (e != cudaSuccess) {
      da_mempool_free(out->pool, out->cu_buffer, stream);
      return cuda_failure(e, "cudaMemcpyAsync(cu_seqlens)");
    }
    a.cu_device = static_cast<const int64_t*>(out->cu_buffer);
  }
  return DA_STATUS_SUCCESS;
}

da_status release(Prepared* p, cudaStream_t stream, da_status status) {
  if (p->cu_buffer != nullptr) {
    da_status st = da_mempool_free(p->pool, p->cu_buffer, stream);
    if (status == DA_STATUS_SUCCESS) status = st;
  }
  return status;
}

struct Tensor {
  const void* ptr;
  const char* name;
  size_t bytes;
  bool optional = false;  // NULL allowed (the forward's lse)
};

// Device pointers, and outputs that must not overlap anything else.
da_status check_tensors(const Tensor* in, int n_in, const Tensor* outs, int n_out, int device) {
  for (int i = 0; i < n_in + n_out; ++i) {
    const Tensor& t = i < n_in ? in[i] : outs[i - n_in];
    if (t.ptr == nullptr && t.optional) continue;
    da_status st = check_device_pointer(t.ptr, t.name, device);
    if (st != DA_STATUS_SUCCESS) return st;
  }
  for (int i = 0; i < n_out; ++i) {
    if (outs[i].ptr == nullptr) continue;
    for (int k = 0; k < n_in + n_out; ++k) {
      const Tensor& o = k < n_in ? in[k] : outs[k - n_in];
      if (k == n_in + i || o.ptr == nullptr) continue;
      da_status st = da_attn_check_disjoint(outs[i].ptr, outs[i].bytes, outs[i].name, o.ptr,
                                            o.bytes, o.name);
      if (st != DA_STATUS_SUCCESS) return st;
    }
  }
  return DA_STATUS_SUCCESS;
}

}  // namespace

extern "C" {

DA_API da_status da_attention_cuda_supported(const da_attention_params* params, da_dtype dtype) {
  int device = 0;
  da_status st = check_support(params, dtype, &device);
  if (st != DA_STATUS_SUCCESS) return st;
  // The parameter rules too (any batch shape is fine for them).
  da_attention_batch one = {1, 1, nullptr};
  da_attn_plan plan;
  return da_attn_plan_init(params, &one, &plan);
}

DA_API da_status da_attention_forward_cuda(const da_attention_params* params,
                                           const da_attention_batch* batch, da_dtype dtype,
                                           const void* q, const void* k, const void* v,
                                           void* out, float* lse, void* stream_ptr) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  Prepared p;
  da_status st = prepare(params, batch, dtype, stream, &p);
  if (st != DA_STATUS_SUCCESS) return st;
  KernelArgs& a = p.args;
  size_t e = da_dtype_size(dtype);
  size_t qb = (size_t)a.tokens * a.h * a.d * e, kb = (size_t)a.tokens * a.h_kv * a.d * e;
  Tensor in[] = {{q, "q", qb}, {k, "k", kb}, {v, "v", kb}};
  Tensor outs[] = {{out, "out", qb}, {lse, "lse", (size_t)a.tokens * a.h * sizeof(float), true}};
  st = check_tensors(in, 3, outs, 2, p.device);
  if (st != DA_STATUS_SUCCESS) return release(&p, stream, st);
  a.q = q;
  a.k = k;
  a.v = v;
  a.out = out;
  a.lse = lse;
  // The persistent Hopper forward's work counter: 4 bytes of the pool, zeroed on
  // the stream (a counter of its own per call, so calls on different streams
  // never share one). Only the warp-specialized forward (d = 64 and 128) loops
  // over items.
  da_mempool* pool = nullptr;
  void* counter = nullptr;
  if (a.use_wgmma && (a.d == 64 || a.d == 128) && a.fwd_variant != 2 && persistent()) {
    if ((st = da_mempool_default(p.device, &pool)) != DA_STATUS_SUCCESS)
      return release(&p, stream, st);
    if ((st = da_mempool_allocate(pool, sizeof(unsigned), stream, &counter)) !=
        DA_STATUS_SUCCESS)
      return release(&p, stream, st);
    cudaError_t me = cudaMemsetAsync(counter, 0, sizeof(unsigned), stream);
    if (me != cudaSuccess) st = cuda_failure(me, "cudaMemsetAsync(work counter)");
    a.fwd_next = static_cast<unsigned*>(counter);
  }
  if (st == DA_STATUS_SUCCESS) {
    cudaError_t ce = dtype == DA_DTYPE_BF16 ? da_cuda::launch_forward_bf16(a, stream)
                                            : da_cuda::launch_forward_f16(a, stream);
    if (ce != cudaSuccess) st = cuda_failure(ce, "the forward kernel launch");
  }
  if (counter != nullptr) {
    da_status fs = da_mempool_free(pool, counter, stream);
    if (st == DA_STATUS_SUCCESS) st = fs;
  }
  return release(&p, stream, st);
}

DA_API da_status da_attention_backward_cuda(const da_attention_params* params,
                                            const da_attention_batch* batch, da_dtype dtype,
                                            const void* q, const void* k, const void* v,
                                            const void* out, const float* lse,
                                            const void* dout, void* dq, void* dk, void* dv,
                                            void* stream_ptr) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  Prepared p;
  da_status st = prepare(params, batch, dtype, stream, &p);
  if (st != DA_STATUS_SUCCESS) return st;
  KernelArgs& a = p.args;
  size_t e = da_dtype_size(dtype);
  size_t qb = (size_t)a.tokens * a.h * a.d * e, kb = (size_t)a.tokens * a.h_kv * a.d * e;
  size_t lb = (size_t)a.tokens * a.h * sizeof(float);
  if (lse == nullptr)
    return release(&p, stream,
                   da_error_set(DA_STATUS_INVALID_ARGUMENT,
                                "lse must not be NULL: the backward pass needs the forward's "
                                "log-sum-exp"));
  Tensor in[] = {{q, "q", qb},     {k, "k", kb},     {v, "v", kb},
                 {out, "out", qb}, {lse, "lse", lb}, {dout, "dout", qb}};
  Tensor outs[] = {{dq, "dq", qb}, {dk, "dk", kb}, {dv, "dv", kb}};
  st = check_tensors(in, 6, outs, 3, p.device);
  if (st != DA_STATUS_SUCCESS) return release(&p, stream, st);
  // One pool block: delta (the rows' dO . O), then the persistent Hopper
  // backward's two work counters (zeroed on the stream; only the
  // warp-specialized kernels at d = 64 are persistent: Sm90Bwd::kPersistent).
  const bool counters = a.use_wgmma && a.d == 64 && a.bwd_variant == 0 && persistent();
  const size_t counters_at = (lb + 15) / 16 * 16;
  const size_t block = counters ? counters_at + 2 * sizeof(unsigned) : (lb > 0 ? lb : 4);
  da_mempool* pool = nullptr;
  void* delta = nullptr;
  if ((st = da_mempool_default(p.device, &pool)) != DA_STATUS_SUCCESS)
    return release(&p, stream, st);
  if ((st = da_mempool_allocate(pool, block, stream, &delta)) != DA_STATUS_SUCCESS)
    return release(&p, stream, st);
  if (counters) {
    a.bwd_next = reinterpret_cast<unsigned*>(static_cast<char*>(delta) + counters_at);
    cudaError_t me = cudaMemsetAsync(a.bwd_next, 0, 2 * sizeof(unsigned), stream);
    if (me != cudaSuccess) st = cuda_failure(me, "cudaMemsetAsync(work counters)");
  }
  a.q = q;
  a.k = k;
  a.v = v;
  a.out = const_cast<void*>(out);
  a.lse_in = lse;
  a.dout = dout;
  a.delta = static_cast<const float*>(delta);
  a.dq = dq;
  a.dk = dk;
  a.dv = dv;
  if (st == DA_STATUS_SUCCESS) {
    cudaError_t ce = dtype == DA_DTYPE_BF16 ? da_cuda::launch_backward_bf16(a, stream)
                                            : da_cuda::launch_backward_f16(a, stream);
    if (ce != cudaSuccess) st = cuda_failure(ce, "the backward kernel launch");
  }
  da_status fs = da_mempool_free(pool, delta, stream);
  if (st == DA_STATUS_SUCCESS) st = fs;
  return release(&p, stream, st);
}

}  // extern "C"
