/* compress.h: the gradient compressors, host path (plain C, vectorisable), and the
 * payload formats the GPU path (gpu_compress.h) shares bit for bit. Library-internal;
 * visible to tests/comm and tools/comm_bench.
 *
 * Every encoder reads the error-compensated gradient a (= g + residual) and, when
 * `residual` is not NULL, writes residual = a - decode(payload): what this rank did not
 * send, to be added to the next step's gradient (error feedback). Decoders accumulate
 * the payloads of every rank, in rank order, so all ranks (and the GPU path) get
 * bit-identical sums.
 *
 * Formats (n = bucket elements):
 *   cast       n x uint16 (binary16 or bfloat16, round to nearest even); all-reduce.
 *   top-k      k indices (uint32, ascending) then k float values; all-gather.
 *   random-k   k float values at indices derived from a shared key; all-reduce.
 *   threshold  capacity indices (ascending, then DA_CX_NO_INDEX padding) then
 *              capacity values; all-gather.
 *   int8       nchunks float scales then n int8; all-gather. */
#ifndef DA_COMM_COMPRESS_H
#define DA_COMM_COMPRESS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "comm/da_comm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Padding index of a threshold payload: skipped by the decoders. */
#define DA_CX_NO_INDEX 0xffffffffu
/* Elements of |a| sampled to estimate the threshold's quantile. */
#define DA_CX_THRESHOLD_SAMPLES 4096
/* Largest bucket a sparse format can index (uint32 indices, one value reserved). */
#define DA_CX_MAX_SPARSE_ELEMENTS ((size_t)0xffffffffu)

/* --- Sizes ----------------------------------------------------------------------- */

/* Top-k / random-k: max(1, floor(ratio * n)), at most n. */
size_t da_cx_k(size_t n, double ratio);
/* Threshold: slots sent, min(n, max(1, ceil(2 * ratio * n))). */
size_t da_cx_threshold_capacity(size_t n, double ratio);
size_t da_cx_int8_chunks(size_t n, size_t chunk);
/* Where things sit in one rank's payload for a float32 bucket of n elements. Sizes of
 * gathered payloads are multiples of 16 bytes, so every rank's part stays aligned. */
typedef struct {
  size_t bytes;         /* what this rank contributes */
  size_t slots;         /* sparse: indices/values sent; cast: n */
  size_t idx_offset;    /* top-k, threshold: uint32 indices */
  size_t val_offset;    /* top-k, threshold, random-k: float values */
  size_t chunks;        /* int8 */
  size_t scales_offset; /* int8: float scales */
  size_t q_offset;      /* int8: int8 values */
  int gathered;         /* 1: exchanged by all-gather (size * bytes received) */
} da_cx_layout;

da_cx_layout da_cx_payload_layout(const da_compress_config* config, size_t n);
/* da_cx_payload_layout(config, n).bytes */
size_t da_cx_payload_bytes(const da_compress_config* config, size_t n);
/* Checks a compression config; sentence names the field. */
da_status da_cx_check_config(const da_compress_config* config);

/* --- Scalars (bit-exact with CUDA's __float2half_rn / __float2bfloat16_rn) ------- */

static inline uint32_t da_cx_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}
static inline float da_cx_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* Round to nearest even; overflow to infinity; NaN stays NaN (0x7e00 | sign). All
 * three cases are computed and one is selected, without branches, so loops over it
 * vectorise (comparisons on int32: the magnitude's top bit is clear). */
static inline uint16_t da_cx_f32_to_f16(float value) {
  const int32_t f32_infinity = 255 << 23;
  const int32_t f16_overflow = (127 + 16) << 23; /* 65536: rounds to infinity */
  const uint32_t denormal_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  uint32_t u = da_cx_bits(value);
  uint32_t sign = u & 0x80000000u;
  int32_t f = (int32_t)(u ^ sign);
  /* Normal: rebias, round to nearest even on bit 13. */
  uint32_t normal = ((uint32_t)f + ((uint32_t)(15 - 127) << 23) + 0xfffu + (((uint32_t)f >> 13) & 1u)) >> 13;
  /* Below 2^-14: let the FPU round into the denormal range (needs no FTZ). */
  uint32_t denormal = da_cx_bits(da_cx_float((uint32_t)f) + da_cx_float(denormal_magic)) - denormal_magic;
  uint32_t special = f > f32_infinity ? 0x7e00u : 0x7c00u;
  uint32_t out = f >= f16_overflow ? special : (f < (113 << 23) ? denormal : normal);
  return (uint16_t)(out | (sign >> 16));
}

static inline float da_cx_f16_to_f32(uint16_t h) {
  const uint32_t shifted_exponent = 0x7c00u << 13;
  uint32_t out = ((uint32_t)h & 0x7fffu) << 13;
  uint32_t exponent = shifted_exponent & out;
  out += (uint32_t)(127 - 15) << 23;
  uint32_t special = out + ((uint32_t)(128 - 16) << 23); /* infinity or NaN */
  /* denormal: renormalise through the FPU */
  uint32_t denormal = da_cx_bits(da_cx_float(out + (1u << 23)) - da_cx_float(113u << 23));
  out = exponent == shifted_exponent ? special : (exponent == 0 ? denormal : out);
  out |= ((uint32_t)h & 0x8000u) << 16;
  return da_cx_float(out);
}

/* Round to nearest even; NaN stays a quiet NaN. */
static inline uint16_t da_cx_f32_to_bf16(float value) {
  uint32_t u = da_cx_bits(value);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline float da_cx_bf16_to_f32(uint16_t h) { return da_cx_float((uint32_t)h << 16); }

/* Magnitude key: |x| as ordered uint32 bits (NaN above infinity). */
static inline uint32_t da_cx_key(float x) { return da_cx_bits(x) & 0x7fffffffu; }

/* --- Random-k index sets ----------------------------------------------------------- */

/* The key of (seed, step, bucket): identical on every rank and on the GPU. */
uint64_t da_cx_randomk_key(uint64_t seed, uint64_t step, uint64_t bucket);

/* A bijection of [0, 2^bits) (4-round Feistel network over two halves of bits/2),
 * walked until it lands in [0, n): a permutation of [0, n) that needs no memory, so
 * the GPU computes index j independently. */
typedef struct {
  uint32_t round_keys[4];
  int half_bits;
  uint32_t n;
} da_cx_permutation;

void da_cx_permutation_init(da_cx_permutation* p, uint64_t key, size_t n);

static inline uint32_t da_cx_mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

static inline uint32_t da_cx_permute(const da_cx_permutation* p, uint32_t j) {
  const uint32_t mask = (1u << p->half_bits) - 1u;
  uint32_t x = j;
  do {
    uint32_t left = x >> p->half_bits, right = x & mask;
    for (int r = 0; r < 4; r++) {
      uint32_t next = left ^ (da_cx_mix32(right ^ p->round_keys[r]) & mask);
      left = right;
      right = next;
    }
    x = (left << p->half_bits) | right;
  } while (x >= p->n);
  return x;
}

/* --- Encoders ---------------------------------------------------------------------- */

/* a += residual (error compensation). */
void da_cx_add(float* a, const float* residual, size_t n);
/* x *= factor. */
void da_cx_scale(float* x, size_t n, float factor);

/* elem DA_DTYPE_F16 or DA_DTYPE_BF16. out[i] = cast(a[i] * prescale); residual[i] =
 * a[i] - float(out[i]) * (1 / prescale) (1 / prescale rounded to float once). */
void da_cx_cast_encode(int elem, const float* a, size_t n, float prescale, uint16_t* out,
                       float* residual);
/* out[i] = float(in[i]) * postscale. */
void da_cx_cast_decode(int elem, const uint16_t* in, size_t n, float postscale, float* out);

/* Exact top-k by magnitude (NaN counts as largest; ties go to the lower index):
 * radix select over the 31-bit magnitude keys, then one ordered pass. idx ascending.
 * k in [1, n], n <= DA_CX_MAX_SPARSE_ELEMENTS. Returns the k-th largest key. */
uint32_t da_cx_topk_encode(const float* a, size_t n, size_t k, uint32_t* idx, float* val,
                           float* residual);

/* idx[j] = permutation(j), val[j] = a[idx[j]], residual = a with zeros at idx. */
void da_cx_randomk_encode(const float* a, size_t n, size_t k, uint64_t key, uint32_t* idx,
                          float* val, float* residual);

/* Threshold tau = the floor((1 - ratio) * s)-th smallest magnitude key of s =
 * min(n, DA_CX_THRESHOLD_SAMPLES) strided samples a[floor(j * n / s)]; sends the first
 * `capacity` elements (in index order) with key > tau, pads with DA_CX_NO_INDEX.
 * Returns tau as a key (every residual element not sent has |r| <= tau, unless it was
 * cut by the capacity). *sent = elements sent. */
uint32_t da_cx_threshold_encode(const float* a, size_t n, double ratio, size_t capacity,
                                uint32_t* idx, float* val, float* residual, size_t* sent);
/* The threshold key alone (what the encoder uses). */
uint32_t da_cx_threshold_key(const float* a, size_t n, double ratio);

/* Per chunk c of `chunk` elements: scale = max|a| / 127, q = rint(a * 127 / max|a|)
 * (0 where max|a| = 0; a non-finite max gives a NaN scale, so the sum is NaN, as an
 * exact all-reduce of that gradient would be). residual = a - q * scale. */
void da_cx_int8_encode(const float* a, size_t n, size_t chunk, float* scales, int8_t* q,
                       float* residual);

/* --- Reductions on 2-byte floats (the MPI engine's user-defined ops) --------------- */

/* inout[i] = round(op(float(in[i]), float(inout[i]))) for elem DA_DTYPE_F16 or
 * DA_DTYPE_BF16; op 0 sum, 1 max, 2 min. */
void da_cx_half_reduce(int elem, int op, const uint16_t* in, uint16_t* inout, size_t n);

/* --- Decoders (accumulate one rank's payload into out) ----------------------------- */

/* out[idx[j]] += val[j] for j < k (DA_CX_NO_INDEX skipped). */
void da_cx_sparse_accumulate(float* out, const uint32_t* idx, const float* val, size_t k);
/* out[idx[j]] = val[j]. */
void da_cx_scatter(float* out, const uint32_t* idx, const float* val, size_t k);
/* out[i] += q[i] * scales[i / chunk]. */
void da_cx_int8_accumulate(float* out, size_t n, size_t chunk, const float* scales,
                           const int8_t* q);

#ifdef __cplusplus
}
#endif

#endif /* DA_COMM_COMPRESS_H */
