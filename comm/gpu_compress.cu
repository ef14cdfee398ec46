// The gradient compressors on the GPU (see gpu_compress.h). Every kernel mirrors a
// host function of compress_host.c operation for operation; explicit __fmul_rn /
// __fadd_rn / __fsub_rn / __fdiv_rn keep nvcc from contracting or approximating, so
// payloads match the host's bit for bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include <cub/block/block_load.cuh>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/block/block_store.cuh>

#include "comm/compress.h"
#include "comm/gpu_compress.h"
#include "common/error.h"

namespace {

// Elementwise kernels: grid-stride loops over this many threads per block.
constexpr int kThreads = 256;
// The selection's compaction: a block owns kItemsPerThread consecutive elements per
// thread, kTile per block, so block scans follow index order.
constexpr int kSelectThreads = 256;
constexpr int kItemsPerThread = 16;
constexpr int kTile = kSelectThreads * kItemsPerThread;
// Radix select: 8-bit digits, 4 passes over the 31-bit magnitude key.
constexpr int kRadixBins = 256;
// The threshold's sample, sorted by one block.
constexpr int kSampleThreads = 1024;
// The one-block scan over tiles (a loop of block scans; 256 keeps it well inside the
// register file: every kernel below states its block size in __launch_bounds__).
constexpr int kScanThreads = 256;
// Grid cap of the grid-stride kernels (enough to fill any current GPU).
constexpr size_t kMaxBlocks = 4096;

da_status launched(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    return da_error_set(DA_STATUS_CUDA_ERROR, "%s: kernel launch failed: %s (%s)", what,
                        cudaGetErrorString(err), cudaGetErrorName(err));
  return DA_STATUS_SUCCESS;
}

unsigned grid_for(size_t n, int threads) {
  size_t blocks = (n + threads - 1) / threads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  return (unsigned)(blocks ? blocks : 1);
}

cudaStream_t as_stream(void* s) { return (cudaStream_t)s; }

__device__ __forceinline__ uint32_t magnitude_key(float x) { return __float_as_uint(x) & 0x7fffffffu; }

// ---- Signature check -------------------------------------------------------------------

struct Signature {
  int64_t v[DA_GPU_SIGNATURE_MAX];
  int n;
};

__global__ void signature_fill_kernel(int64_t* scratch, Signature sig) {
  for (int i = threadIdx.x; i < sig.n; i += blockDim.x) {
    scratch[i] = sig.v[i];
    scratch[sig.n + i] = -sig.v[i];
  }
}

__global__ void signature_check_kernel(const int64_t* scratch, Signature sig,
                                       da_gpu_signature_flag* flag) {
  if (threadIdx.x != 0 || flag->mismatch) return;
  for (int i = 0; i < sig.n; i++) {
    int64_t hi = scratch[i], lo = -scratch[sig.n + i];
    if (hi != lo) {
      flag->field = i;
      flag->mine = sig.v[i];
      flag->lo = lo;
      flag->hi = hi;
      __threadfence_system();
      flag->mismatch = 1;
      __threadfence_system();
      return;
    }
  }
}

// ---- Elementwise ---------------------------------------------------------------------------

__global__ void add_kernel(float* a, const float* r, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    a[i] = __fadd_rn(a[i], r[i]);
}

__global__ void scale_kernel(float* x, size_t n, float f) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    x[i] = __fmul_rn(x[i], f);
}

__global__ void cast_encode_kernel(bool bf16, const float* a, size_t n, float prescale,
                                   float unscale, uint16_t* out, float* residual) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float x = a[i];
    float scaled = __fmul_rn(x, prescale);
    uint16_t h;
    float back;
    if (bf16) {
      __nv_bfloat16 b = __float2bfloat16_rn(scaled);
      h = __bfloat16_as_ushort(b);
      back = __bfloat162float(b);
    } else {
      __half v = __float2half_rn(scaled);
      h = __half_as_ushort(v);
      back = __half2float(v);
    }
    out[i] = h;
    if (residual) residual[i] = __fsub_rn(x, __fmul_rn(back, unscale));
  }
}

__global__ void cast_decode_kernel(bool bf16, const uint16_t* in, size_t n, float postscale, float* out) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float v = bf16 ? __bfloat162float(__ushort_as_bfloat16(in[i])) : __half2float(__ushort_as_half(in[i]));
    out[i] = __fmul_rn(v, postscale);
  }
}

// ---- Selection (top-k, threshold) ---------------------------------------------------------

// Device state of one selection, at the start of the workspace.
struct SelectState {
  uint32_t kth;            // the k-th largest key (top-k) or tau (threshold)
  uint32_t prefix_mask;    // radix select: bits of kth fixed so far
  unsigned long long take; // elements equal to kth still to take (lowest indices first)
  unsigned long long selected; // written by the block scan: elements sent
  unsigned long long capacity;
};

struct BlockCount {
  uint32_t greater, equal;
};
struct BlockOffset {
  unsigned long long equal_before, selected_before;
};

size_t num_tiles(size_t n) { return (n + kTile - 1) / kTile; }

struct Workspace {
  SelectState* state;
  uint32_t* histogram;
  BlockCount* counts;
  BlockOffset* offsets;
};

Workspace carve(void* base, size_t n) {
  char* p = (char*)base;
  Workspace w;
  w.state = (SelectState*)p;
  w.histogram = (uint32_t*)(p + 256);
  w.counts = (BlockCount*)(p + 256 + sizeof(uint32_t) * kRadixBins);
  w.offsets = (BlockOffset*)((char*)w.counts + ((sizeof(BlockCount) * num_tiles(n) + 255) & ~(size_t)255));
  return w;
}

__global__ void select_init_kernel(SelectState* s, uint32_t* histogram, unsigned long long k,
                                   unsigned long long capacity) {
  if (threadIdx.x == 0) {
    s->kth = 0;
    s->prefix_mask = 0;
    s->take = k;
    s->selected = 0;
    s->capacity = capacity;
  }
  for (int i = threadIdx.x; i < kRadixBins; i += blockDim.x) histogram[i] = 0;
}

// One radix pass: histogram of digit (key >> shift) & 255 over the keys that match the
// prefix found so far. Lanes of a warp that hit the same bin add once (match_any), as
// gradient magnitudes crowd into few exponent bins.
__global__ void __launch_bounds__(kThreads) histogram_kernel(const float* a, size_t n, const SelectState* s, uint32_t* histogram,
                                 int shift) {
  __shared__ uint32_t bins[kRadixBins];
  for (int i = threadIdx.x; i < kRadixBins; i += blockDim.x) bins[i] = 0;
  __syncthreads();
  const uint32_t prefix = s->kth, mask = s->prefix_mask;
  const int lane = threadIdx.x & 31;
  for (size_t base = blockIdx.x * (size_t)blockDim.x; base < n; base += (size_t)gridDim.x * blockDim.x) {
    size_t i = base + threadIdx.x;
    uint32_t bin = kRadixBins;  // no bin
    if (i < n) {
      uint32_t key = magnitude_key(a[i]);
      if ((key & mask) == prefix) bin = (key >> shift) & (kRadixBins - 1);
    }
    unsigned peers = __match_any_sync(0xffffffffu, bin);
    if (bin < kRadixBins && lane == __ffs(peers) - 1) atomicAdd(&bins[bin], (uint32_t)__popc(peers));
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kRadixBins; i += blockDim.x)
    if (bins[i]) atomicAdd(&histogram[i], bins[i]);
}

__global__ void choose_digit_kernel(SelectState* s, uint32_t* histogram, int shift) {
  if (threadIdx.x == 0) {
    unsigned long long above = 0;
    int digit = kRadixBins - 1;
    for (;;) {
      if (above + histogram[digit] >= s->take || digit == 0) break;
      above += histogram[digit];
      digit--;
    }
    s->take -= above;
    s->kth |= (uint32_t)digit << shift;
    s->prefix_mask |= (uint32_t)(kRadixBins - 1) << shift;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kRadixBins; i += blockDim.x) histogram[i] = 0;
}

// The threshold: tau = the position-th smallest key of the strided sample.
__global__ void __launch_bounds__(kSampleThreads) sample_threshold_kernel(const float* a, size_t n, size_t samples, size_t position,
                                        SelectState* s) {
  __shared__ uint32_t keys[DA_CX_THRESHOLD_SAMPLES];
  for (int j = threadIdx.x; j < DA_CX_THRESHOLD_SAMPLES; j += blockDim.x)
    keys[j] = (size_t)j < samples ? magnitude_key(a[((unsigned long long)j * n) / samples]) : 0xffffffffu;
  __syncthreads();
  for (int k = 2; k <= DA_CX_THRESHOLD_SAMPLES; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int i = threadIdx.x; i < DA_CX_THRESHOLD_SAMPLES; i += blockDim.x) {
        int partner = i ^ j;
        if (partner > i) {
          bool ascending = (i & k) == 0;
          uint32_t x = keys[i], y = keys[partner];
          if ((x > y) == ascending) {
            keys[i] = y;
            keys[partner] = x;
          }
        }
      }
      __syncthreads();
    }
  }
  if (threadIdx.x == 0) {
    s->kth = keys[position];
    s->take = 0;
  }
}

__global__ void __launch_bounds__(kSelectThreads) count_tiles_kernel(const float* a, size_t n, const SelectState* s, BlockCount* counts) {
  typedef cub::BlockReduce<uint32_t, kSelectThreads> Reduce;
  __shared__ typename Reduce::TempStorage tmp;
  const uint32_t kth = s->kth;
  size_t base = blockIdx.x * (size_t)kTile;
  uint32_t greater = 0, equal = 0;
  for (int j = 0; j < kItemsPerThread; j++) {
    size_t i = base + (size_t)j * kSelectThreads + threadIdx.x;  // striped: coalesced
    if (i < n) {
      uint32_t key = magnitude_key(a[i]);
      greater += key > kth;
      equal += key == kth;
    }
  }
  uint32_t g = Reduce(tmp).Sum(greater);
  __syncthreads();
  uint32_t e = Reduce(tmp).Sum(equal);
  if (threadIdx.x == 0) counts[blockIdx.x] = BlockCount{g, e};
}

// One block: exclusive scans over tiles of the equal counts, then of the selected
// counts (greater + the equal ones still inside `take`).
__global__ void __launch_bounds__(kScanThreads)
    scan_tiles_kernel(const BlockCount* counts, BlockOffset* offsets, size_t tiles, SelectState* s) {
  typedef cub::BlockScan<unsigned long long, kScanThreads> Scan;
  __shared__ typename Scan::TempStorage tmp;
  __shared__ unsigned long long carry_equal, carry_selected;
  if (threadIdx.x == 0) carry_equal = carry_selected = 0;
  __syncthreads();
  const unsigned long long take = s->take;
  for (size_t base = 0; base < tiles; base += kScanThreads) {
    size_t t = base + threadIdx.x;
    BlockCount c = t < tiles ? counts[t] : BlockCount{0, 0};
    unsigned long long eq_before, eq_total;
    Scan(tmp).ExclusiveSum((unsigned long long)c.equal, eq_before, eq_total);
    __syncthreads();
    eq_before += carry_equal;
    unsigned long long room = take > eq_before ? take - eq_before : 0;
    unsigned long long sel = c.greater + (room < c.equal ? room : c.equal);
    unsigned long long sel_before, sel_total;
    Scan(tmp).ExclusiveSum(sel, sel_before, sel_total);
    __syncthreads();
    sel_before += carry_selected;
    if (t < tiles) offsets[t] = BlockOffset{eq_before, sel_before};
    __syncthreads();
    if (threadIdx.x == 0) {
      carry_equal += eq_total;
      carry_selected += sel_total;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) s->selected = carry_selected < s->capacity ? carry_selected : s->capacity;
}

__global__ void __launch_bounds__(kSelectThreads) write_tiles_kernel(const float* a, size_t n, const SelectState* s,
                                   const BlockOffset* offsets, uint32_t* idx, float* val,
                                   float* residual) {
  typedef cub::BlockLoad<float, kSelectThreads, kItemsPerThread, cub::BLOCK_LOAD_WARP_TRANSPOSE> Load;
  typedef cub::BlockStore<float, kSelectThreads, kItemsPerThread, cub::BLOCK_STORE_WARP_TRANSPOSE> Store;
  typedef cub::BlockScan<uint32_t, kSelectThreads> Scan;
  __shared__ union {
    typename Load::TempStorage load;
    typename Store::TempStorage store;
    typename Scan::TempStorage scan;
  } tmp;
  const uint32_t kth = s->kth;
  const unsigned long long take = s->take, capacity = s->capacity;
  const size_t base = blockIdx.x * (size_t)kTile;
  const int valid = (int)(n - base < (size_t)kTile ? n - base : (size_t)kTile);
  float items[kItemsPerThread];
  Load(tmp.load).Load(a + base, items, valid, 0.0f);
  __syncthreads();
  // Blocked arrangement: thread t holds elements base + t * kItemsPerThread + j.
  const int first = threadIdx.x * kItemsPerThread;
  uint32_t equal = 0;
  for (int j = 0; j < kItemsPerThread; j++)
    equal += first + j < valid && magnitude_key(items[j]) == kth;
  uint32_t equal_before;
  Scan(tmp.scan).ExclusiveSum(equal, equal_before);
  __syncthreads();
  unsigned long long eq_rank = offsets[blockIdx.x].equal_before + equal_before;
  uint32_t flags = 0, selected = 0;
  for (int j = 0; j < kItemsPerThread; j++) {
    if (first + j >= valid) continue;
    uint32_t key = magnitude_key(items[j]);
    bool take_it = key > kth;
    if (key == kth) take_it = eq_rank++ < take;
    if (take_it) {
      flags |= 1u << j;
      selected++;
    }
  }
  uint32_t selected_before;
  Scan(tmp.scan).ExclusiveSum(selected, selected_before);
  __syncthreads();
  unsigned long long position = offsets[blockIdx.x].selected_before + selected_before;
  for (int j = 0; j < kItemsPerThread; j++) {
    bool sent = false;
    if (flags & (1u << j)) {
      if (position < capacity) {
        idx[position] = (uint32_t)(base + first + j);
        val[position] = items[j];
        sent = true;
      }
      position++;
    }
    if (sent) items[j] = 0.0f;  // what stays behind
  }
  if (residual) Store(tmp.store).Store(residual + base, items, valid);
}

__global__ void pad_kernel(const SelectState* s, uint32_t* idx, float* val, size_t capacity) {
  const unsigned long long sent = s->selected;
  for (size_t j = blockIdx.x * (size_t)blockDim.x + threadIdx.x; j < capacity; j += (size_t)gridDim.x * blockDim.x)
    if (j >= sent) {
      idx[j] = DA_CX_NO_INDEX;
      val[j] = 0.0f;
    }
}

da_status compact(const float* a, size_t n, Workspace w, uint32_t* idx, float* val, float* residual,
                  size_t capacity, cudaStream_t stream, const char* what) {
  size_t tiles = num_tiles(n);
  count_tiles_kernel<<<(unsigned)tiles, kSelectThreads, 0, stream>>>(a, n, w.state, w.counts);
  scan_tiles_kernel<<<1, kScanThreads, 0, stream>>>(w.counts, w.offsets, tiles, w.state);
  write_tiles_kernel<<<(unsigned)tiles, kSelectThreads, 0, stream>>>(a, n, w.state, w.offsets, idx, val,
                                                                     residual);
  pad_kernel<<<grid_for(capacity, kThreads), kThreads, 0, stream>>>(w.state, idx, val, capacity);
  return launched(what);
}

// ---- Random-k --------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

__device__ uint32_t permute(const da_cx_permutation& p, uint32_t j) {
  const uint32_t mask = (1u << p.half_bits) - 1u;
  uint32_t x = j;
  do {
    uint32_t left = x >> p.half_bits, right = x & mask;
    for (int r = 0; r < 4; r++) {
      uint32_t next = left ^ (mix32(right ^ p.round_keys[r]) & mask);
      left = right;
      right = next;
    }
    x = (left << p.half_bits) | right;
  } while (x >= p.n);
  return x;
}

__global__ void randomk_kernel(const float* a, size_t k, da_cx_permutation p, uint32_t* idx,
                               float* val) {
  for (size_t j = blockIdx.x * (size_t)blockDim.x + threadIdx.x; j < k; j += (size_t)gridDim.x * blockDim.x) {
    uint32_t i = permute(p, (uint32_t)j);
    idx[j] = i;
    val[j] = a[i];
  }
}

__global__ void zero_at_kernel(float* x, const uint32_t* idx, size_t k) {
  for (size_t j = blockIdx.x * (size_t)blockDim.x + threadIdx.x; j < k; j += (size_t)gridDim.x * blockDim.x)
    x[idx[j]] = 0.0f;
}

// ---- Int8 ------------------------------------------------------------------------------------

struct MaxOp {
  __device__ __forceinline__ uint32_t operator()(uint32_t a, uint32_t b) const { return a > b ? a : b; }
};

__global__ void __launch_bounds__(kThreads) int8_encode_kernel(const float* a, size_t n, size_t chunk, float* scales, int8_t* q,
                                   float* residual) {
  typedef cub::BlockReduce<uint32_t, kThreads> Reduce;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ uint32_t chunk_max;
  const size_t begin = blockIdx.x * chunk;
  const size_t end = begin + chunk < n ? begin + chunk : n;
  uint32_t local = 0;
  for (size_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    uint32_t key = magnitude_key(a[i]);
    local = key > local ? key : local;
  }
  uint32_t m = Reduce(tmp).Reduce(local, MaxOp());
  if (threadIdx.x == 0) chunk_max = m;
  __syncthreads();
  const uint32_t max_key = chunk_max;
  if (max_key == 0) {
    if (threadIdx.x == 0) scales[blockIdx.x] = 0.0f;
    for (size_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      q[i] = 0;
      if (residual) residual[i] = a[i];
    }
    return;
  }
  const float max_abs = __uint_as_float(max_key);
  const float scale = max_key >= 0x7f800000u ? __int_as_float(0x7fc00000) : __fdiv_rn(max_abs, 127.0f);
  const float inverse = __fdiv_rn(127.0f, max_abs);
  if (threadIdx.x == 0) scales[blockIdx.x] = scale;
  for (size_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    float x = a[i];
    float r = rintf(__fmul_rn(x, inverse));
    r = r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r);
    int8_t v = (int8_t)(r == r ? r : 0.0f);
    q[i] = v;
    if (residual) residual[i] = __fsub_rn(x, __fmul_rn((float)v, scale));
  }
}

__global__ void int8_decode_sum_kernel(float* out, size_t n, size_t chunk, const char* payloads,
                                       size_t payload_bytes, size_t scales_offset, size_t q_offset,
                                       int ranks, float postscale) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const size_t c = i / chunk;
    float acc = 0.0f;
    for (int r = 0; r < ranks; r++) {
      const char* p = payloads + (size_t)r * payload_bytes;
      float s = ((const float*)(p + scales_offset))[c];
      float v = (float)((const int8_t*)(p + q_offset))[i];
      acc = __fadd_rn(acc, __fmul_rn(v, s));
    }
    out[i] = postscale == 1.0f ? acc : __fmul_rn(acc, postscale);
  }
}

// ---- Sparse decoders -----------------------------------------------------------------------------

__global__ void sparse_accumulate_kernel(float* out, const uint32_t* idx, const float* val, size_t k) {
  for (size_t j = blockIdx.x * (size_t)blockDim.x + threadIdx.x; j < k; j += (size_t)gridDim.x * blockDim.x) {
    uint32_t i = idx[j];
    if (i != DA_CX_NO_INDEX) out[i] = __fadd_rn(out[i], val[j]);
  }
}

__global__ void scatter_kernel(float* out, const uint32_t* idx, const float* val, size_t k) {
  for (size_t j = blockIdx.x * (size_t)blockDim.x + threadIdx.x; j < k; j += (size_t)gridDim.x * blockDim.x)
    out[idx[j]] = val[j];
}

}  // namespace

// ==== Launchers =======================================================================================

extern "C" da_status da_gpu_signature_fill(int64_t* scratch, const int64_t* sig, int n, void* stream) {
  if (n < 1 || n > DA_GPU_SIGNATURE_MAX || scratch == NULL || sig == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "signature_fill: n=%d must be in [1, %d]", n,
                        DA_GPU_SIGNATURE_MAX);
  Signature s;
  s.n = n;
  for (int i = 0; i < n; i++) s.v[i] = sig[i];
  signature_fill_kernel<<<1, 64, 0, as_stream(stream)>>>(scratch, s);
  return launched("signature_fill");
}

extern "C" da_status da_gpu_signature_check(const int64_t* scratch, const int64_t* sig, int n,
                                            da_gpu_signature_flag* flag, void* stream) {
  if (n < 1 || n > DA_GPU_SIGNATURE_MAX || scratch == NULL || sig == NULL || flag == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "signature_check: n=%d must be in [1, %d]", n,
                        DA_GPU_SIGNATURE_MAX);
  Signature s;
  s.n = n;
  for (int i = 0; i < n; i++) s.v[i] = sig[i];
  signature_check_kernel<<<1, 32, 0, as_stream(stream)>>>(scratch, s, flag);
  return launched("signature_check");
}

extern "C" da_status da_gpu_zero(void* x, size_t bytes, void* stream) {
  if (bytes == 0) return DA_STATUS_SUCCESS;
  cudaError_t err = cudaMemsetAsync(x, 0, bytes, as_stream(stream));
  if (err != cudaSuccess)
    return da_error_set(DA_STATUS_CUDA_ERROR, "cudaMemsetAsync(%zu bytes) failed: %s", bytes,
                        cudaGetErrorString(err));
  return DA_STATUS_SUCCESS;
}

extern "C" da_status da_gpu_add(float* a, const float* residual, size_t n, void* stream) {
  if (n == 0) return DA_STATUS_SUCCESS;
  add_kernel<<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(a, residual, n);
  return launched("add");
}

extern "C" da_status da_gpu_scale(float* x, size_t n, float factor, void* stream) {
  if (n == 0) return DA_STATUS_SUCCESS;
  scale_kernel<<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(x, n, factor);
  return launched("scale");
}

extern "C" da_status da_gpu_cast_encode(int elem, const float* a, size_t n, float prescale,
                                        uint16_t* out, float* residual, void* stream) {
  if (elem != DA_DTYPE_F16 && elem != DA_DTYPE_BF16)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "cast_encode: elem=%d is not f16 or bf16", elem);
  if (n == 0) return DA_STATUS_SUCCESS;
  cast_encode_kernel<<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(
      elem == DA_DTYPE_BF16, a, n, prescale, 1.0f / prescale, out, residual);
  return launched("cast_encode");
}

extern "C" da_status da_gpu_cast_decode(int elem, const uint16_t* in, size_t n, float postscale,
                                        float* out, void* stream) {
  if (elem != DA_DTYPE_F16 && elem != DA_DTYPE_BF16)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "cast_decode: elem=%d is not f16 or bf16", elem);
  if (n == 0) return DA_STATUS_SUCCESS;
  cast_decode_kernel<<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(
      elem == DA_DTYPE_BF16, in, n, postscale, out);
  return launched("cast_decode");
}

extern "C" size_t da_gpu_select_workspace_bytes(size_t n) {
  size_t counts = (sizeof(BlockCount) * num_tiles(n) + 255) & ~(size_t)255;
  return 256 + sizeof(uint32_t) * kRadixBins + counts + sizeof(BlockOffset) * num_tiles(n) + 256;
}

static da_status check_sparse(const char* what, size_t n, size_t slots, const void* workspace) {
  if (n > DA_CX_MAX_SPARSE_ELEMENTS)
    return da_error_set(DA_STATUS_NOT_SUPPORTED, "%s: n=%zu exceeds the uint32 index range", what, n);
  if (slots < 1 || slots > n)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: k=%zu must be in [1, n=%zu]", what, slots, n);
  if (workspace == NULL)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s: workspace must not be NULL", what);
  return DA_STATUS_SUCCESS;
}

extern "C" da_status da_gpu_topk_encode(const float* a, size_t n, size_t k, uint32_t* idx, float* val,
                                        float* residual, void* workspace, void* stream) {
  da_status st = check_sparse("topk_encode", n, k, workspace);
  if (st != DA_STATUS_SUCCESS) return st;
  cudaStream_t s = as_stream(stream);
  Workspace w = carve(workspace, n);
  select_init_kernel<<<1, kRadixBins, 0, s>>>(w.state, w.histogram, k, k);
  const unsigned blocks = grid_for(n, kThreads);
  for (int shift = 24; shift >= 0; shift -= 8) {
    histogram_kernel<<<blocks, kThreads, 0, s>>>(a, n, w.state, w.histogram, shift);
    choose_digit_kernel<<<1, kRadixBins, 0, s>>>(w.state, w.histogram, shift);
  }
  st = launched("topk_encode (select)");
  if (st != DA_STATUS_SUCCESS) return st;
  return compact(a, n, w, idx, val, residual, k, s, "topk_encode (compact)");
}

extern "C" da_status da_gpu_threshold_encode(const float* a, size_t n, double ratio, size_t capacity,
                                             uint32_t* idx, float* val, float* residual,
                                             void* workspace, void* stream) {
  da_status st = check_sparse("threshold_encode", n, capacity, workspace);
  if (st != DA_STATUS_SUCCESS) return st;
  cudaStream_t s = as_stream(stream);
  Workspace w = carve(workspace, n);
  size_t samples = n < DA_CX_THRESHOLD_SAMPLES ? n : DA_CX_THRESHOLD_SAMPLES;
  size_t position = (size_t)floor((1.0 - ratio) * (double)samples);
  if (position >= samples) position = samples - 1;
  select_init_kernel<<<1, kRadixBins, 0, s>>>(w.state, w.histogram, 0, capacity);
  sample_threshold_kernel<<<1, kSampleThreads, 0, s>>>(a, n, samples, position, w.state);
  st = launched("threshold_encode (sample)");
  if (st != DA_STATUS_SUCCESS) return st;
  return compact(a, n, w, idx, val, residual, capacity, s, "threshold_encode (compact)");
}

extern "C" da_status da_gpu_randomk_encode(const float* a, size_t n, size_t k, uint64_t key, uint32_t* idx,
                                           float* val, float* residual, void* stream) {
  if (n > DA_CX_MAX_SPARSE_ELEMENTS)
    return da_error_set(DA_STATUS_NOT_SUPPORTED, "randomk_encode: n=%zu exceeds the uint32 index range", n);
  if (k < 1 || k > n)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "randomk_encode: k=%zu must be in [1, n=%zu]", k, n);
  cudaStream_t s = as_stream(stream);
  da_cx_permutation p;
  da_cx_permutation_init(&p, key, n);
  if (residual && residual != a) {
    cudaError_t err = cudaMemcpyAsync(residual, a, n * sizeof(float), cudaMemcpyDeviceToDevice, s);
    if (err != cudaSuccess)
      return da_error_set(DA_STATUS_CUDA_ERROR, "randomk_encode: cudaMemcpyAsync failed: %s",
                          cudaGetErrorString(err));
  }
  randomk_kernel<<<grid_for(k, kThreads), kThreads, 0, s>>>(a, k, p, idx, val);
  if (residual) zero_at_kernel<<<grid_for(k, kThreads), kThreads, 0, s>>>(residual, idx, k);
  return launched("randomk_encode");
}

extern "C" da_status da_gpu_int8_encode(const float* a, size_t n, size_t chunk, float* scales, int8_t* q,
                                        float* residual, void* stream) {
  if (chunk == 0) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "int8_encode: chunk must be positive");
  if (n == 0) return DA_STATUS_SUCCESS;
  size_t chunks = da_cx_int8_chunks(n, chunk);
  if (chunks > 0x7fffffffu)
    return da_error_set(DA_STATUS_NOT_SUPPORTED, "int8_encode: %zu chunks exceed the grid", chunks);
  int8_encode_kernel<<<(unsigned)chunks, kThreads, 0, as_stream(stream)>>>(a, n, chunk, scales, q, residual);
  return launched("int8_encode");
}

extern "C" da_status da_gpu_int8_decode_sum(float* out, size_t n, size_t chunk, const void* payloads,
                                            size_t payload_bytes, size_t scales_offset, size_t q_offset,
                                            int ranks, float postscale, void* stream) {
  if (chunk == 0 || ranks < 1)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "int8_decode_sum: chunk=%zu, ranks=%d must be positive",
                        chunk, ranks);
  if (n == 0) return DA_STATUS_SUCCESS;
  int8_decode_sum_kernel<<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(
      out, n, chunk, (const char*)payloads, payload_bytes, scales_offset, q_offset, ranks, postscale);
  return launched("int8_decode_sum");
}

extern "C" da_status da_gpu_sparse_accumulate(float* out, const uint32_t* idx, const float* val, size_t k,
                                              void* stream) {
  if (k == 0) return DA_STATUS_SUCCESS;
  sparse_accumulate_kernel<<<grid_for(k, kThreads), kThreads, 0, as_stream(stream)>>>(out, idx, val, k);
  return launched("sparse_accumulate");
}

extern "C" da_status da_gpu_scatter(float* out, const uint32_t* idx, const float* val, size_t k,
                                    void* stream) {
  if (k == 0) return DA_STATUS_SUCCESS;
  scatter_kernel<<<grid_for(k, kThreads), kThreads, 0, as_stream(stream)>>>(out, idx, val, k);
  return launched("scatter");
}
