/* The gradient compressors on the host: plain loops over restrict pointers that gcc
 * vectorises at -O3; built with -ffp-contract=off so every float operation rounds as
 * the GPU kernels' explicit __fmul_rn / __fadd_rn do (the payloads match bit for bit).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "comm/compress.h"
#include "common/error.h"

size_t da_cx_k(size_t n, double ratio) {
  double k = floor(ratio * (double)n);
  if (k < 1.0) return n > 0 ? 1 : 0;
  if (k > (double)n) return n;
  return (size_t)k;
}

size_t da_cx_threshold_capacity(size_t n, double ratio) {
  double c = ceil(2.0 * ratio * (double)n);
  if (c < 1.0) return n > 0 ? 1 : 0;
  if (c > (double)n) return n;
  return (size_t)c;
}

size_t da_cx_int8_chunks(size_t n, size_t chunk) { return chunk ? (n + chunk - 1) / chunk : 0; }

static size_t round16(size_t bytes) { return (bytes + 15) & ~(size_t)15; }

da_cx_layout da_cx_payload_layout(const da_compress_config* config, size_t n) {
  da_cx_layout l;
  memset(&l, 0, sizeof l);
  switch (config->algorithm) {
    case DA_COMPRESS_NONE:
      l.bytes = n * sizeof(float);
      l.slots = n;
      break;
    case DA_COMPRESS_FP16:
    case DA_COMPRESS_BF16:
      l.bytes = n * sizeof(uint16_t);
      l.slots = n;
      break;
    case DA_COMPRESS_TOPK:
    case DA_COMPRESS_THRESHOLD:
      l.slots = config->algorithm == DA_COMPRESS_TOPK ? da_cx_k(n, config->ratio)
                                                      : da_cx_threshold_capacity(n, config->ratio);
      l.idx_offset = 0;
      l.val_offset = l.slots * sizeof(uint32_t);
      l.bytes = round16(l.slots * (sizeof(uint32_t) + sizeof(float)));
      l.gathered = 1;
      break;
    case DA_COMPRESS_RANDOMK:
      l.slots = da_cx_k(n, config->ratio);
      l.val_offset = 0;
      l.bytes = l.slots * sizeof(float);
      break;
    case DA_COMPRESS_INT8:
      l.chunks = da_cx_int8_chunks(n, config->int8_chunk);
      l.scales_offset = 0;
      l.q_offset = l.chunks * sizeof(float);
      l.bytes = round16(l.q_offset + n);
      l.gathered = 1;
      break;
  }
  return l;
}

size_t da_cx_payload_bytes(const da_compress_config* config, size_t n) {
  return da_cx_payload_layout(config, n).bytes;
}

da_status da_cx_check_config(const da_compress_config* c) {
  if (c->algorithm < DA_COMPRESS_NONE || c->algorithm > DA_COMPRESS_INT8)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "compress.algorithm=%d is not a da_compress_algorithm", (int)c->algorithm);
  int sparse = c->algorithm == DA_COMPRESS_TOPK || c->algorithm == DA_COMPRESS_RANDOMK ||
               c->algorithm == DA_COMPRESS_THRESHOLD;
  if (sparse && !(c->ratio > 0.0 && c->ratio <= 1.0))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "compress.ratio=%g must lie in (0, 1] for %s", c->ratio,
                        da_compress_algorithm_name(c->algorithm));
  if (c->algorithm == DA_COMPRESS_INT8 &&
      (c->int8_chunk < 16 || c->int8_chunk % 16 != 0 || c->int8_chunk > ((size_t)1 << 24)))
    return da_error_set(DA_STATUS_INVALID_ARGUMENT,
                        "compress.int8_chunk=%zu must be a multiple of 16 in [16, 2^24]",
                        c->int8_chunk);
  if (c->error_feedback != 0 && c->error_feedback != 1)
    return da_error_set(DA_STATUS_INVALID_ARGUMENT, "compress.error_feedback=%d must be 0 or 1",
                        c->error_feedback);
  return DA_STATUS_SUCCESS;
}

/* --- Random-k ------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t da_cx_randomk_key(uint64_t seed, uint64_t step, uint64_t bucket) {
  uint64_t state = seed;
  uint64_t a = splitmix64(&state);
  state ^= step * 0xd1b54a32d192ed03ull;
  uint64_t b = splitmix64(&state);
  state ^= bucket * 0x8cb92ba72f3d8dd7ull;
  return a ^ b ^ splitmix64(&state);
}

void da_cx_permutation_init(da_cx_permutation* p, uint64_t key, size_t n) {
  int bits = 2;
  while (bits < 32 && ((uint64_t)1 << bits) < (uint64_t)n) bits++;
  bits += bits & 1; /* two equal halves */
  if (bits > 32) bits = 32;
  p->half_bits = bits / 2;
  p->n = (uint32_t)(n > 0xffffffffu ? 0xffffffffu : n);
  uint64_t state = key;
  for (int r = 0; r < 4; r++) p->round_keys[r] = (uint32_t)splitmix64(&state);
}

/* --- Elementwise ------------------------------------------------------------------ */

void da_cx_add(float* restrict a, const float* restrict residual, size_t n) {
  for (size_t i = 0; i < n; i++) a[i] += residual[i];
}

void da_cx_scale(float* restrict x, size_t n, float factor) {
  for (size_t i = 0; i < n; i++) x[i] *= factor;
}

/* binary16 conversions: with F16C (x86 since 2012) one instruction per 8 floats,
 * round to nearest even as the scalar path (NaN payloads aside); chosen at run time
 * so the binary still runs on any x86-64. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DA_HAVE_F16C_PATH 1

static int has_f16c(void) {
  static int cached = -1;
  if (cached < 0) cached = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
  return cached;
}

__attribute__((target("avx,f16c"))) static size_t f16_encode_f16c(const float* a, size_t n, float prescale,
                                                                   float unscale, uint16_t* out,
                                                                   float* residual) {
  const __m256 p = _mm256_set1_ps(prescale), u = _mm256_set1_ps(unscale);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_loadu_ps(a + i);
    __m128i h = _mm256_cvtps_ph(_mm256_mul_ps(x, p), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128((__m128i*)(out + i), h);
    if (residual) _mm256_storeu_ps(residual + i, _mm256_sub_ps(x, _mm256_mul_ps(_mm256_cvtph_ps(h), u)));
  }
  return i;
}

__attribute__((target("avx,f16c"))) static size_t f16_decode_f16c(const uint16_t* in, size_t n, float postscale,
                                                                   float* out) {
  const __m256 s = _mm256_set1_ps(postscale);
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(in + i))), s));
  return i;
}
#endif

void da_cx_cast_encode(int elem, const float* restrict a, size_t n, float prescale,
                       uint16_t* restrict out, float* restrict residual) {
  const float unscale = 1.0f / prescale;
  if (elem == DA_DTYPE_BF16) {
    for (size_t i = 0; i < n; i++) out[i] = da_cx_f32_to_bf16(a[i] * prescale);
    if (residual)
      for (size_t i = 0; i < n; i++) residual[i] = a[i] - da_cx_bf16_to_f32(out[i]) * unscale;
    return;
  }
  size_t done = 0;
#ifdef DA_HAVE_F16C_PATH
  if (has_f16c()) done = f16_encode_f16c(a, n, prescale, unscale, out, residual);
#endif
  for (size_t i = done; i < n; i++) out[i] = da_cx_f32_to_f16(a[i] * prescale);
  if (residual)
    for (size_t i = done; i < n; i++) residual[i] = a[i] - da_cx_f16_to_f32(out[i]) * unscale;
}

void da_cx_cast_decode(int elem, const uint16_t* restrict in, size_t n, float postscale,
                       float* restrict out) {
  if (elem == DA_DTYPE_BF16) {
    for (size_t i = 0; i < n; i++) out[i] = da_cx_bf16_to_f32(in[i]) * postscale;
    return;
  }
  size_t done = 0;
#ifdef DA_HAVE_F16C_PATH
  if (has_f16c()) done = f16_decode_f16c(in, n, postscale, out);
#endif
  for (size_t i = done; i < n; i++) out[i] = da_cx_f16_to_f32(in[i]) * postscale;
}

#ifdef DA_HAVE_F16C_PATH
__attribute__((target("avx,f16c"))) static size_t f16_sum_f16c(const uint16_t* in, uint16_t* inout, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(in + i)));
    __m256 y = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(inout + i)));
    _mm_storeu_si128((__m128i*)(inout + i), _mm256_cvtps_ph(_mm256_add_ps(x, y), _MM_FROUND_TO_NEAREST_INT));
  }
  return i;
}
#endif

void da_cx_half_reduce(int elem, int op, const uint16_t* restrict in, uint16_t* restrict inout, size_t n) {
  size_t i = 0;
  if (elem == DA_DTYPE_BF16) {
    for (; i < n; i++) {
      float x = da_cx_bf16_to_f32(in[i]), y = da_cx_bf16_to_f32(inout[i]);
      inout[i] = da_cx_f32_to_bf16(op == 0 ? x + y : op == 1 ? (x > y ? x : y) : (x < y ? x : y));
    }
    return;
  }
#ifdef DA_HAVE_F16C_PATH
  if (op == 0 && has_f16c()) i = f16_sum_f16c(in, inout, n);
#endif
  for (; i < n; i++) {
    float x = da_cx_f16_to_f32(in[i]), y = da_cx_f16_to_f32(inout[i]);
    inout[i] = da_cx_f32_to_f16(op == 0 ? x + y : op == 1 ? (x > y ? x : y) : (x < y ? x : y));
  }
}

/* --- Top-k -------------------------------------------------------------------------- */

/* Radix select over the 31-bit magnitude keys, digits of 11 + 11 + 9 bits: each
 * pass histograms the keys that share the prefix found so far and picks the digit
 * holding the k-th largest. The first pass sees every key (four sub-histograms, so
 * that runs of equal exponents do not serialise on one counter); the keys in the
 * chosen first digit are then gathered, and the two later passes see only those.
 * Returns the k-th largest key; *take_equal = how many elements equal to it belong to
 * the top k (the lowest indices among them). */
static const int kShift[3] = {20, 9, 0};
static const int kWidth[3] = {11, 11, 9};

static uint32_t choose_digit(const size_t* hist, uint32_t digits, size_t* remaining) {
  size_t above = 0;
  uint32_t digit = digits - 1u;
  for (;;) {
    if (above + hist[digit] >= *remaining || digit == 0) break;
    above += hist[digit];
    digit--;
  }
  *remaining -= above;
  return digit;
}

/* Passes 1 and 2 over the keys the prefix (from pass 0) selects: `keys` holds just
 * those (stride 1) or, without memory for them, every element of a (keys NULL). */
static uint32_t refine(const uint32_t* keys, const float* a, size_t m, uint32_t prefix, size_t* remaining) {
  size_t hist[1 << 11];
  uint32_t prefix_mask = 0x7ffu << 20;
  for (int pass = 1; pass < 3; pass++) {
    const uint32_t digits = 1u << kWidth[pass], digit_mask = digits - 1u;
    memset(hist, 0, sizeof(size_t) * digits);
    for (size_t i = 0; i < m; i++) {
      uint32_t key = keys ? keys[i] : da_cx_key(a[i]);
      if ((key & prefix_mask) == prefix) hist[(key >> kShift[pass]) & digit_mask]++;
    }
    uint32_t digit = choose_digit(hist, digits, remaining);
    prefix |= digit << kShift[pass];
    prefix_mask |= digit_mask << kShift[pass];
  }
  return prefix;
}

static uint32_t select_kth_key(const float* restrict a, size_t n, size_t k, size_t* take_equal) {
  uint32_t h[4][1 << 11]; /* 32 KiB on the stack: callers may run on several threads */
  memset(h, 0, sizeof h);
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    h[0][da_cx_key(a[i]) >> 20]++;
    h[1][da_cx_key(a[i + 1]) >> 20]++;
    h[2][da_cx_key(a[i + 2]) >> 20]++;
    h[3][da_cx_key(a[i + 3]) >> 20]++;
  }
  for (; i < n; i++) h[0][da_cx_key(a[i]) >> 20]++;
  size_t hist[1 << 11];
  for (uint32_t d = 0; d < (1u << 11); d++) hist[d] = (size_t)h[0][d] + h[1][d] + h[2][d] + h[3][d];
  size_t remaining = k;
  const uint32_t digit = choose_digit(hist, 1u << 11, &remaining);
  const size_t m = hist[digit];
  uint32_t* keys = (uint32_t*)malloc(sizeof(uint32_t) * (m ? m : 1));
  uint32_t kth;
  if (keys != NULL) {
    size_t j = 0;
    for (i = 0; i < n; i++) {
      uint32_t key = da_cx_key(a[i]);
      if ((key >> 20) == digit) keys[j++] = key;
    }
    kth = refine(keys, NULL, m, digit << 20, &remaining);
    free(keys);
  } else {
    kth = refine(NULL, a, n, digit << 20, &remaining);
  }
  *take_equal = remaining;
  return kth;
}

uint32_t da_cx_topk_encode(const float* restrict a, size_t n, size_t k, uint32_t* restrict idx,
                           float* restrict val, float* restrict residual) {
  size_t take_equal = 0;
  const uint32_t kth = select_kth_key(a, n, k, &take_equal);
  /* What stays behind (vectorised), then the few elements sent (a rarely taken branch). */
  if (residual)
    for (size_t i = 0; i < n; i++) residual[i] = da_cx_key(a[i]) > kth ? 0.0f : a[i];
  size_t out = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t key = da_cx_key(a[i]);
    if (key < kth) continue;
    if (key == kth) {
      if (take_equal == 0) continue;
      take_equal--;
      if (residual) residual[i] = 0.0f;
    }
    idx[out] = (uint32_t)i;
    val[out] = a[i];
    out++;
  }
  return kth;
}

/* --- Random-k ----------------------------------------------------------------------- */

void da_cx_randomk_encode(const float* restrict a, size_t n, size_t k, uint64_t key,
                          uint32_t* restrict idx, float* restrict val, float* restrict residual) {
  da_cx_permutation p;
  da_cx_permutation_init(&p, key, n);
  for (size_t j = 0; j < k; j++) idx[j] = da_cx_permute(&p, (uint32_t)j);
  for (size_t j = 0; j < k; j++) val[j] = a[idx[j]];
  if (residual) {
    if (residual != a) memcpy(residual, a, n * sizeof(float));
    for (size_t j = 0; j < k; j++) residual[idx[j]] = 0.0f;
  }
}

/* --- Threshold ---------------------------------------------------------------------- */

static int compare_u32(const void* x, const void* y) {
  uint32_t a = *(const uint32_t*)x, b = *(const uint32_t*)y;
  return (a > b) - (a < b);
}

uint32_t da_cx_threshold_key(const float* a, size_t n, double ratio) {
  size_t s = n < DA_CX_THRESHOLD_SAMPLES ? n : DA_CX_THRESHOLD_SAMPLES;
  uint32_t sample[DA_CX_THRESHOLD_SAMPLES];
  for (size_t j = 0; j < s; j++) sample[j] = da_cx_key(a[(size_t)(((uint64_t)j * n) / s)]);
  qsort(sample, s, sizeof sample[0], compare_u32);
  size_t position = (size_t)floor((1.0 - ratio) * (double)s);
  if (position >= s) position = s - 1;
  return sample[position];
}

uint32_t da_cx_threshold_encode(const float* restrict a, size_t n, double ratio, size_t capacity,
                                uint32_t* restrict idx, float* restrict val,
                                float* restrict residual, size_t* sent) {
  uint32_t tau = da_cx_threshold_key(a, n, ratio);
  size_t out = 0;
  for (size_t i = 0; i < n; i++) {
    int selected = da_cx_key(a[i]) > tau && out < capacity;
    if (selected) {
      idx[out] = (uint32_t)i;
      val[out] = a[i];
      out++;
    }
    if (residual) residual[i] = selected ? 0.0f : a[i];
  }
  if (sent) *sent = out;
  for (size_t j = out; j < capacity; j++) {
    idx[j] = DA_CX_NO_INDEX;
    val[j] = 0.0f;
  }
  return tau;
}

/* --- Int8 ----------------------------------------------------------------------------- */

void da_cx_int8_encode(const float* restrict a, size_t n, size_t chunk, float* restrict scales,
                       int8_t* restrict q, float* restrict residual) {
  size_t chunks = da_cx_int8_chunks(n, chunk);
  for (size_t c = 0; c < chunks; c++) {
    size_t begin = c * chunk, end = begin + chunk < n ? begin + chunk : n;
    uint32_t max_key = 0;
    for (size_t i = begin; i < end; i++) {
      uint32_t key = da_cx_key(a[i]);
      max_key = key > max_key ? key : max_key;
    }
    float max_abs = da_cx_float(max_key);
    if (max_key == 0) {
      scales[c] = 0.0f;
      for (size_t i = begin; i < end; i++) q[i] = 0;
      if (residual)
        for (size_t i = begin; i < end; i++) residual[i] = a[i];
      continue;
    }
    float scale = max_key >= 0x7f800000u ? NAN : max_abs / 127.0f;
    float inverse = 127.0f / max_abs;
    scales[c] = scale;
    /* rint by the 1.5 * 2^23 trick (exact for |x| < 2^22, round to nearest even as
     * rintf and the GPU's rintf): a vectorisable add/sub instead of a libm call. */
    const float magic = 12582912.0f;
    for (size_t i = begin; i < end; i++) {
      float r = (a[i] * inverse + magic) - magic;
      r = r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r);
      q[i] = (int8_t)(r == r ? r : 0.0f);
    }
    if (residual)
      for (size_t i = begin; i < end; i++) residual[i] = a[i] - (float)q[i] * scale;
  }
}

/* --- Decoders ------------------------------------------------------------------------- */

void da_cx_sparse_accumulate(float* restrict out, const uint32_t* restrict idx,
                             const float* restrict val, size_t k) {
  for (size_t j = 0; j < k; j++)
    if (idx[j] != DA_CX_NO_INDEX) out[idx[j]] += val[j];
}

void da_cx_scatter(float* restrict out, const uint32_t* restrict idx, const float* restrict val,
                   size_t k) {
  for (size_t j = 0; j < k; j++) out[idx[j]] = val[j];
}

void da_cx_int8_accumulate(float* restrict out, size_t n, size_t chunk, const float* restrict scales,
                           const int8_t* restrict q) {
  size_t chunks = da_cx_int8_chunks(n, chunk);
  for (size_t c = 0; c < chunks; c++) {
    size_t begin = c * chunk, end = begin + chunk < n ? begin + chunk : n;
    const float scale = scales[c];
    for (size_t i = begin; i < end; i++) out[i] += (float)q[i] * scale;
  }
}
