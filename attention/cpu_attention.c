/* Exact dilated attention on the CPU: blocked online softmax, float32 with fp32
 * accumulation, OpenMP over independent (head, segment, tile) work items.
 *
 * A dilated segment is a dense sub-sequence of strided rows, so each pattern is
 * ordinary (causal) attention over tiles of those rows. One softmax over the
 * multiset union of all patterns is an online softmax whose key stream is the
 * concatenation of the patterns' key sets: the running (max, sum, accumulator)
 * of every query lives in global state (acc in `out`) and each pattern's pass
 * continues it. Within one pattern, every (query, head) belongs to exactly one
 * work item, so passes are race-free; patterns run one after another.
 *
 * Tiles are read in place: a dilated row t of a tensor is at first + t * r, so a
 * tile is a matrix with a row stride of r * heads * d floats, and the tile
 * products take that stride directly. Only the operand that stays fixed over a
 * work item's loop is transposed once into scratch (Q^T for forward and dQ, K^T
 * and V^T for dK/dV), so the scores of the forward are held key-major (S^T) and
 * the online softmax runs vectorised across 16 queries at a time.
 *
 * Backward: dK/dV per key tile (a work item owns the rows of one kv head at one
 * offset, so heads sharing a kv head and an offset are summed inside the item),
 * then dQ per query tile, both recomputing P from the global LSE. Every item runs
 * in a fixed order on one thread: results are bit-identical for any thread count. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "attention/dilated_attention.h"
#include "attention/params.h"
#include "common/error.h"

/* Query and key tile rows. The scores (64 x 128 fp32) and the transposed tiles
 * stay inside a 1 MiB L2 for head_dim up to 256; a wide query tile amortises its
 * one-time transpose over every key tile. Both are multiples of 64 (the width of
 * tile_matmul's register block). */
#define DA_CPU_TILE_Q 128
#define DA_CPU_TILE_K 64

/* Hot loops are compiled for AVX-512, AVX2 and baseline x86-64, picked at load
 * time. Sanitizer builds use the baseline only (ifunc resolvers run before the
 * sanitizer runtime is up). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__)
#define DA_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DA_CPU_CLONES
#endif

/* Helpers of the cloned hot functions must be inlined into each clone to be
 * compiled for its target. */
#define DA_INLINE static inline __attribute__((always_inline))

/* One (sequence, pattern, head, segment) slice: its selected rows are tokens
 * first + t * r for t in [0, count). */
typedef struct {
  int64_t first;  /* token of dilated index 0 */
  int64_t count;  /* selected rows in this segment */
  int64_t stride; /* r, in tokens */
} dilated_rows;

/* Resolves work item (head j, segment/tile index idx) of pattern i in sequence s.
 * Returns 0 when the item is empty (no such tile for this head's offset). */
static int item_rows(const da_attn_plan* plan, int64_t seq_start, int64_t n, int i, int j,
                     int64_t idx, int64_t tiles_per_segment, int64_t tile_rows,
                     dilated_rows* rows, int64_t* tile_begin) {
  if (!da_attn_uses_pattern(plan, i, j)) return 0;
  int64_t w = plan->w[i], r = plan->r[i];
  int64_t seg = idx / tiles_per_segment, tile = idx % tiles_per_segment;
  int64_t a = seg * w;
  if (a >= n) return 0;
  int o = da_attn_offset(plan, i, j);
  int64_t len = n - a < w ? n - a : w;
  rows->count = da_attn_selected(len, (int)r, o);
  rows->first = seq_start + a + o;
  rows->stride = r;
  *tile_begin = tile * tile_rows;
  return *tile_begin < rows->count;
}

/* Row t of head `head` of x: [tokens, heads, d], for dilated row index t. */
DA_INLINE const float* row_ptr(const float* x, const dilated_rows* rows, int64_t t, int heads,
                               int head, int d) {
  return x + ((size_t)(rows->first + t * rows->stride) * heads + head) * d;
}

/* Floats between consecutive dilated rows of a [tokens, heads, d] tensor. */
DA_INLINE size_t row_stride(const dilated_rows* rows, int heads, int d) {
  return (size_t)rows->stride * heads * d;
}

/* dst[c][t] = mul * x(row t0 + t)[c] for t < nt, 0 for nt <= t < width: the one
 * operand of a work item that is transposed (once per item). */
DA_INLINE void load_transposed(float* dst, int width, const float* x, const dilated_rows* rows,
                               int64_t t0, int nt, int heads, int head, int d, float mul) {
  for (int t = 0; t < nt; t++) {
    const float* src = row_ptr(x, rows, t0 + t, heads, head, d);
    for (int c = 0; c < d; c++) dst[(size_t)c * width + t] = src[c] * mul;
  }
  if (nt < width)
    for (int c = 0; c < d; c++) memset(dst + (size_t)c * width + nt, 0, sizeof(float) * (width - nt));
}

/* 16 floats: one AVX-512 register, two AVX2 registers, four SSE registers; GCC
 * lowers the vector extension to whatever the clone's target has. */
typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

DA_INLINE f32x16 vload(const float* p) {
  f32x16 v;
  memcpy(&v, p, sizeof v);
  return v;
}

DA_INLINE void vstore(float* p, f32x16 v) { memcpy(p, &v, sizeof v); }

DA_INLINE f32x16 vsplat(float x) { return (f32x16){0} + x; }

/* mask ? a : b, lane by lane (mask lanes are 0 or -1, as comparisons give). */
DA_INLINE f32x16 vselect(i32x16 mask, f32x16 a, f32x16 b) {
  return (f32x16)(((i32x16)a & mask) | ((i32x16)b & ~mask));
}

DA_INLINE f32x16 vmax(f32x16 a, f32x16 b) { return vselect(a > b, a, b); }

DA_INLINE i32x16 lane_index(int first) {
  return (i32x16){0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15} + first;
}

DA_INLINE float hsum(f32x16 v) {
  float total = 0.0f;
  for (int lane = 0; lane < 16; lane++) total += v[lane];
  return total;
}

/* e^x for the softmax, 16 lanes, ~1 ulp: Cody-Waite reduction x = k ln2 + f with
 * k rounded to nearest by the 1.5 * 2^23 trick (so |f| <= ln2/2) and Cephes'
 * degree-6 polynomial for e^f; 2^k built in the exponent bits. x < -87 gives 0
 * (that includes -inf, i.e. masked scores); NaN stays NaN. */
DA_INLINE f32x16 vexp_softmax(f32x16 x) {
  const float round_magic = 12582912.0f; /* 1.5 * 2^23 */
  const i32x16 tiny = x < vsplat(-87.0f);
  const f32x16 xc = vselect(tiny, vsplat(-87.0f), x);
  const f32x16 t = xc * 1.44269504088896341f + round_magic;
  const f32x16 k = t - round_magic;
  const i32x16 k_int = (i32x16)t - 0x4B400000; /* bits of round_magic */
  const f32x16 f = xc - k * 0.693359375f - k * -2.12194440e-4f;
  f32x16 p = vsplat(1.9875691500e-4f);
  p = p * f + 1.3981999507e-3f;
  p = p * f + 8.3334519073e-3f;
  p = p * f + 4.1665795894e-2f;
  p = p * f + 1.6666665459e-1f;
  p = p * f + 5.0000001201e-1f;
  const f32x16 y = p * f * f + f + 1.0f;
  const f32x16 two_k = (f32x16)((k_int + 127) << 23);
  return vselect(tiny, vsplat(0.0f), y * two_k);
}

/* The one tile product every pass uses:
 *   C[i][0:n] (+)= sum_{l < kk} A(i, l) * B[l][0:n]   for i < m,
 * with A(i, l) = a[i * a_row + l * a_col] (so A may be read transposed, or be
 * dilated rows read in place) and B row-major with row stride ldb (dilated rows
 * in place, or scratch). Register-blocked 4 rows x 64 columns (16 accumulators);
 * columns past the last multiple of 64 run scalar. */
DA_INLINE void tile_matmul(float* c, size_t ldc, const float* a, size_t a_row, size_t a_col,
                           const float* b, size_t ldb, int m, int kk, int n, int accumulate) {
  const int n64 = n & ~63;
  for (int i0 = 0; i0 < m; i0 += 4) {
    const int mi = m - i0 < 4 ? m - i0 : 4;
    const float* arow[4];
    for (int r = 0; r < 4; r++) arow[r] = a + (size_t)(i0 + (r < mi ? r : mi - 1)) * a_row;
    for (int j0 = 0; j0 < n64; j0 += 64) {
      f32x16 acc[4][4];
#pragma GCC unroll 4
      for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++)
          acc[r][v] = accumulate && r < mi ? vload(c + (size_t)(i0 + r) * ldc + j0 + 16 * v)
                                           : vsplat(0.0f);
      for (int l = 0; l < kk; l++) {
        const float* brow = b + (size_t)l * ldb + j0;
        const f32x16 b0 = vload(brow), b1 = vload(brow + 16), b2 = vload(brow + 32),
                     b3 = vload(brow + 48);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
          const float av = arow[r][(size_t)l * a_col];
          acc[r][0] += av * b0;
          acc[r][1] += av * b1;
          acc[r][2] += av * b2;
          acc[r][3] += av * b3;
        }
      }
      for (int r = 0; r < mi; r++)
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) vstore(c + (size_t)(i0 + r) * ldc + j0 + 16 * v, acc[r][v]);
    }
    for (int r = 0; r < mi; r++) {
      float* crow = c + (size_t)(i0 + r) * ldc;
      for (int j = n64; j < n; j++) {
        float sum = accumulate ? crow[j] : 0.0f;
        for (int l = 0; l < kk; l++) sum += arow[r][(size_t)l * a_col] * b[(size_t)l * ldb + j];
        crow[j] = sum;
      }
    }
  }
}

/* Causal visibility in dilated index order: query q sees key t iff t <= q. Lanes
 * of 16 consecutive queries q0 + x0 .. + 15 against key k: visible iff
 * x >= k - q0 (all lanes when not causal). */
DA_INLINE i32x16 visible_queries(int causal, int x0, int64_t key_minus_q0) {
  if (!causal) return lane_index(0) == lane_index(0);
  const int64_t first = key_minus_q0 < -1 ? -1 : key_minus_q0 > DA_CPU_TILE_Q ? DA_CPU_TILE_Q
                                                                              : key_minus_q0;
  return lane_index(x0) >= (int)first;
}

/* Keys of a key-row tile (t < nk) that query q0 + x sees: all, or t <= q0 + x - k0. */
DA_INLINE int visible_keys(int causal, int64_t q, int64_t k0, int nk) {
  if (!causal) return nk;
  const int64_t v = q - k0 + 1;
  return v < 0 ? 0 : v > nk ? nk : (int)v;
}

/* p[t] = exp(mul * row[t] - shift) for t < visible, 0 for the rest of a TILE_K
 * row (in place); returns the sum. */
DA_INLINE float row_exp(float* row, float mul, float shift, int visible) {
  f32x16 sum = vsplat(0.0f);
  for (int t = 0; t < DA_CPU_TILE_K; t += 16) {
    const f32x16 p = vselect(lane_index(t) < visible,
                             vexp_softmax(vload(row + t) * mul - shift), vsplat(0.0f));
    vstore(row + t, p);
    sum += p;
  }
  return hsum(sum);
}

/* Per-thread scratch, all tiles of one work item. */
typedef struct {
  float* qT;    /* [d][TILE_Q]  scaled queries, transposed (forward, dQ)        */
  float* doT;   /* [d][TILE_Q]  output gradient, transposed (dQ)                */
  float* kT;    /* [d][TILE_K]  keys, transposed (dK/dV)                        */
  float* vT;    /* [d][TILE_K]  values, transposed (dK/dV)                      */
  float* s;     /* [TILE_K x TILE_Q] scores / probabilities                     */
  float* ds;    /* [TILE_K x TILE_Q] dP, then dS                                 */
  float* acc;   /* [TILE_Q][d]  output accumulator, or dQ                        */
  float* dk;    /* [TILE_K][d]                                                   */
  float* dv;    /* [TILE_K][d]                                                   */
  float* row_a; /* [TILE_Q]     running max, or LSE                              */
  float* row_b; /* [TILE_Q]     running sum, or D                                */
} workspace;

static size_t workspace_floats(int d) {
  size_t tq = DA_CPU_TILE_Q, tk = DA_CPU_TILE_K;
  return tq * d * 3 + tk * d * 4 + tq * tk * 2 + tq * 2 + 64;
}

static workspace workspace_at(float* base, int d) {
  size_t tq = DA_CPU_TILE_Q, tk = DA_CPU_TILE_K;
  workspace ws;
  ws.qT = base;
  ws.doT = ws.qT + tq * d;
  ws.acc = ws.doT + tq * d;
  ws.kT = ws.acc + tq * d;
  ws.vT = ws.kT + tk * d;
  ws.dk = ws.vT + tk * d;
  ws.dv = ws.dk + tk * d;
  ws.s = ws.dv + tk * d;
  ws.ds = ws.s + tq * tk;
  ws.row_a = ws.ds + tq * tk;
  ws.row_b = ws.row_a + tq;
  return ws;
}

/* Per-call allocation: one workspace per thread, 64-byte aligned. */
static float* workspaces_alloc(int threads, int d, size_t* stride) {
  *stride = (workspace_floats(d) + 15) & ~(size_t)15;
  return aligned_alloc(64, *stride * threads * sizeof(float));
}

/* Rows of a query tile: min(TILE_Q, count - q0); of a key tile likewise. */
DA_INLINE int tile_rows(int64_t count, int64_t t0, int tile) {
  return (int)(count - t0 < tile ? count - t0 : tile);
}

/* ---------------------------------------------------------------- forward */

/* Global online-softmax state of every (token, head): running max m and sum l;
 * the accumulator lives in out. */
typedef struct {
  float* m;
  float* l;
} softmax_state;

/* One query tile of head j against every key tile of its segment, continuing each
 * query's online softmax. Scores are key-major (S^T[t][x]) so the softmax runs
 * across 16 queries per vector. */
DA_CPU_CLONES
static void forward_item(const da_attn_plan* plan, const float* q, const float* k,
                         const float* v, float* out, softmax_state st, int j,
                         const dilated_rows* rows, int64_t q0, workspace ws) {
  const int h = plan->h, hk = plan->h_kv, d = plan->d, g = j / (h / hk);
  const int tq = DA_CPU_TILE_Q, nq = tile_rows(rows->count, q0, tq);
  const size_t kv_stride = row_stride(rows, hk, d);
  load_transposed(ws.qT, tq, q, rows, q0, nq, h, j, d, plan->scale);
  for (int x = 0; x < tq; x++) {
    if (x < nq) {
      size_t at = (size_t)(rows->first + (q0 + x) * rows->stride) * h + j;
      ws.row_a[x] = st.m[at];
      ws.row_b[x] = st.l[at];
      memcpy(ws.acc + (size_t)x * d, out + at * d, sizeof(float) * d);
    } else { /* padding lanes: finite, never stored */
      ws.row_a[x] = 0.0f;
      ws.row_b[x] = 0.0f;
    }
  }
  const int64_t key_end = plan->causal ? q0 + nq : rows->count;
  for (int64_t k0 = 0; k0 < key_end; k0 += DA_CPU_TILE_K) {
    const int nk = tile_rows(key_end, k0, DA_CPU_TILE_K);
    tile_matmul(ws.s, tq, row_ptr(k, rows, k0, hk, g, d), kv_stride, 1, ws.qT, tq, nk, d, tq, 0);
    for (int x0 = 0; x0 < tq; x0 += 16) {
      f32x16 best = vsplat(-INFINITY);
      for (int t = 0; t < nk; t++) {
        const i32x16 seen = visible_queries(plan->causal, x0, k0 + t - q0);
        best = vmax(best, vselect(seen, vload(ws.s + (size_t)t * tq + x0), vsplat(-INFINITY)));
      }
      const f32x16 m_old = vload(ws.row_a + x0);
      const f32x16 m_new = vmax(m_old, best);
      /* Lanes that have seen no key yet (m_new = -inf) keep alpha = 1, P = 0. */
      const i32x16 none = m_new == vsplat(-INFINITY);
      const f32x16 shift = vselect(none, vsplat(0.0f), m_new);
      const f32x16 alpha = vselect(none, vsplat(1.0f), vexp_softmax(m_old - shift));
      f32x16 sum = vsplat(0.0f);
      for (int t = 0; t < nk; t++) {
        const i32x16 seen = visible_queries(plan->causal, x0, k0 + t - q0);
        float* srow = ws.s + (size_t)t * tq + x0;
        const f32x16 p = vselect(seen, vexp_softmax(vload(srow) - shift), vsplat(0.0f));
        vstore(srow, p);
        sum += p;
      }
      vstore(ws.row_a + x0, m_new);
      vstore(ws.row_b + x0, vload(ws.row_b + x0) * alpha + sum);
      for (int x = x0; x < x0 + 16 && x < nq; x++) {
        const float ax = alpha[x - x0];
        float* acc = ws.acc + (size_t)x * d;
        for (int c = 0; c < d; c++) acc[c] *= ax;
      }
    }
    /* acc[x] += sum_t P^T[t][x] v[t]: A = S^T read transposed, B = V rows in place. */
    tile_matmul(ws.acc, d, ws.s, 1, tq, row_ptr(v, rows, k0, hk, g, d), kv_stride, nq, nk, d, 1);
  }
  for (int x = 0; x < nq; x++) {
    size_t at = (size_t)(rows->first + (q0 + x) * rows->stride) * h + j;
    st.m[at] = ws.row_a[x];
    st.l[at] = ws.row_b[x];
    memcpy(out + at * d, ws.acc + (size_t)x * d, sizeof(float) * d);
  }
}

static int64_t tiles_per_segment(const da_attn_plan* plan, int i, int tile_rows) {
  int64_t most = (plan->w[i] + plan->r[i] - 1) / plan->r[i];
  return (most + tile_rows - 1) / tile_rows;
}

static int64_t segments_of(int64_t n, int w) { return (n + w - 1) / w; }

/* --------------------------------------------------------------- backward */

/* dK, dV of one key tile of kv head g at one offset: sums over every query head
 * of g that uses pattern i at that offset and over all their query tiles. Only
 * the first such head (rep) owns the item, so rows are never written twice.
 * Scores are query-major here (S[x][t]) with K^T, V^T transposed once. */
DA_CPU_CLONES
static void backward_kv_item(const da_attn_plan* plan, int i, const float* q, const float* k,
                             const float* v, const float* dout, const float* lse,
                             const float* delta, float* dk, float* dv, int rep,
                             const dilated_rows* rows, int64_t k0, workspace ws) {
  const int h = plan->h, hk = plan->h_kv, d = plan->d, group = h / hk, g = rep / group;
  const int tk = DA_CPU_TILE_K;
  const int o = da_attn_offset(plan, i, rep);
  for (int j = g * group; j < rep; j++)
    if (da_attn_uses_pattern(plan, i, j) && da_attn_offset(plan, i, j) == o) return;
  const int nk = tile_rows(rows->count, k0, tk);
  const size_t q_stride = row_stride(rows, h, d);
  load_transposed(ws.kT, tk, k, rows, k0, nk, hk, g, d, 1.0f);
  load_transposed(ws.vT, tk, v, rows, k0, nk, hk, g, d, 1.0f);
  memset(ws.dk, 0, sizeof(float) * nk * d);
  memset(ws.dv, 0, sizeof(float) * nk * d);
  for (int j = rep; j < (g + 1) * group; j++) {
    if (!da_attn_uses_pattern(plan, i, j) || da_attn_offset(plan, i, j) != o) continue;
    const int64_t q_begin = plan->causal ? k0 - k0 % DA_CPU_TILE_Q : 0;
    for (int64_t q0 = q_begin; q0 < rows->count; q0 += DA_CPU_TILE_Q) {
      const int nq = tile_rows(rows->count, q0, DA_CPU_TILE_Q);
      const float* qb = row_ptr(q, rows, q0, h, j, d);
      const float* dob = row_ptr(dout, rows, q0, h, j, d);
      tile_matmul(ws.s, tk, qb, q_stride, 1, ws.kT, tk, nq, d, tk, 0);
      tile_matmul(ws.ds, tk, dob, q_stride, 1, ws.vT, tk, nq, d, tk, 0);
      for (int x = 0; x < nq; x++) {
        const size_t at = (size_t)(rows->first + (q0 + x) * rows->stride) * h + j;
        float* p = ws.s + (size_t)x * tk;
        float* ds = ws.ds + (size_t)x * tk;
        row_exp(p, plan->scale, lse[at], visible_keys(plan->causal, q0 + x, k0, nk));
        const float dd = delta[at];
        for (int t = 0; t < tk; t++) ds[t] = p[t] * (ds[t] - dd);
      }
      /* dV += P^T dO, dK += dS^T Q (scale applied once at the end). */
      tile_matmul(ws.dv, d, ws.s, 1, tk, dob, q_stride, nk, nq, d, 1);
      tile_matmul(ws.dk, d, ws.ds, 1, tk, qb, q_stride, nk, nq, d, 1);
    }
  }
  for (int t = 0; t < nk; t++) {
    size_t at = ((size_t)(rows->first + (k0 + t) * rows->stride) * hk + g) * d;
    for (int c = 0; c < d; c++) {
      dk[at + c] += plan->scale * ws.dk[(size_t)t * d + c];
      dv[at + c] += ws.dv[(size_t)t * d + c];
    }
  }
}

/* dQ of one query tile of head j in one pattern; key-major scores as forward. */
DA_CPU_CLONES
static void backward_q_item(const da_attn_plan* plan, const float* q, const float* k,
                            const float* v, const float* dout, const float* lse,
                            const float* delta, float* dq, int j, const dilated_rows* rows,
                            int64_t q0, workspace ws) {
  const int h = plan->h, hk = plan->h_kv, d = plan->d, g = j / (h / hk);
  const int tq = DA_CPU_TILE_Q, nq = tile_rows(rows->count, q0, tq);
  const size_t kv_stride = row_stride(rows, hk, d);
  load_transposed(ws.qT, tq, q, rows, q0, nq, h, j, d, plan->scale);
  load_transposed(ws.doT, tq, dout, rows, q0, nq, h, j, d, 1.0f);
  for (int x = 0; x < tq; x++) {
    size_t at = (size_t)(rows->first + (q0 + x) * rows->stride) * h + j;
    ws.row_a[x] = x < nq ? lse[at] : 0.0f;
    ws.row_b[x] = x < nq ? delta[at] : 0.0f;
  }
  memset(ws.acc, 0, sizeof(float) * nq * d);
  const int64_t key_end = plan->causal ? q0 + nq : rows->count;
  for (int64_t k0 = 0; k0 < key_end; k0 += DA_CPU_TILE_K) {
    const int nk = tile_rows(key_end, k0, DA_CPU_TILE_K);
    const float* kb = row_ptr(k, rows, k0, hk, g, d);
    tile_matmul(ws.s, tq, kb, kv_stride, 1, ws.qT, tq, nk, d, tq, 0);
    tile_matmul(ws.ds, tq, row_ptr(v, rows, k0, hk, g, d), kv_stride, 1, ws.doT, tq, nk, d, tq,
                0);
    for (int x0 = 0; x0 < tq; x0 += 16) {
      const f32x16 lse_x = vload(ws.row_a + x0), delta_x = vload(ws.row_b + x0);
      for (int t = 0; t < nk; t++) {
        const i32x16 seen = visible_queries(plan->causal, x0, k0 + t - q0);
        float* prow = ws.s + (size_t)t * tq + x0;
        float* dsrow = ws.ds + (size_t)t * tq + x0;
        const f32x16 p = vselect(seen, vexp_softmax(vload(prow) - lse_x), vsplat(0.0f));
        vstore(dsrow, p * (vload(dsrow) - delta_x));
      }
    }
    /* dQ[x] += sum_t dS^T[t][x] k[t]. */
    tile_matmul(ws.acc, d, ws.ds, 1, tq, kb, kv_stride, nq, nk, d, 1);
  }
  for (int x = 0; x < nq; x++) {
    float* dst = dq + ((size_t)(rows->first + (q0 + x) * rows->stride) * h + j) * d;
    for (int c = 0; c < d; c++) dst[c] += plan->scale * ws.acc[(size_t)x * d + c];
  }
}

/* ------------------------------------------------------------- work items */

typedef enum { PASS_FORWARD, PASS_DKDV, PASS_DQ } pass_kind;

/* The tensors one pass reads and writes (unused ones NULL). */
typedef struct {
  pass_kind kind;
  const float *q, *k, *v, *dout, *lse, *delta;
  float *out, *dq, *dk, *dv;
  softmax_state st;
} pass;

/* Runs every work item of a pass, pattern after pattern (so no two items of
 * different patterns touch the same rows at once), OpenMP-dynamic inside each
 * (pattern, sequence). Call from inside a parallel region. */
static void run_pass(const da_attn_plan* plan, const pass* p, workspace ws) {
  const int tile = p->kind == PASS_DKDV ? DA_CPU_TILE_K : DA_CPU_TILE_Q;
  for (int i = 0; i < plan->num_patterns; i++) {
    const int64_t tps = tiles_per_segment(plan, i, tile);
    for (int64_t s = 0; s < plan->batch; s++) {
      const int64_t n = da_attn_seq_len(plan, s), start = da_attn_seq_start(plan, s);
      const int64_t items = segments_of(n, plan->w[i]) * tps;
#pragma omp for collapse(2) schedule(dynamic, 1)
      for (int j = 0; j < plan->h; j++) {
        for (int64_t idx = 0; idx < items; idx++) {
          dilated_rows rows;
          int64_t t0;
          if (!item_rows(plan, start, n, i, j, idx, tps, tile, &rows, &t0)) continue;
          switch (p->kind) {
            case PASS_FORWARD:
              forward_item(plan, p->q, p->k, p->v, p->out, p->st, j, &rows, t0, ws);
              break;
            case PASS_DKDV:
              backward_kv_item(plan, i, p->q, p->k, p->v, p->dout, p->lse, p->delta, p->dk, p->dv,
                               j, &rows, t0, ws);
              break;
            case PASS_DQ:
              backward_q_item(plan, p->q, p->k, p->v, p->dout, p->lse, p->delta, p->dq, j, &rows,
                              t0, ws);
              break;
          }
        }
      }
    }
  }
}

static da_status check_forward_buffers(const da_attn_plan* plan, const float* q, const float* k,
                                       const float* v, const float* out, const float* lse) {
  if (q == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "q must not be NULL");
  if (k == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "k must not be NULL");
  if (v == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "v must not be NULL");
  if (out == NULL) return da_error_set(DA_STATUS_INVALID_ARGUMENT, "out must not be NULL");
  size_t q_bytes = (size_t)plan->tokens * plan->h * plan->d * sizeof(float);
  size_t kv_bytes = (size_t)plan->tokens * plan->h_kv * plan->d * sizeof(float);
  size_t lse_bytes = (size_t)plan->tokens * plan->h * sizeof(float);
  da_status st = DA_STATUS_SUCCESS;
  if (!st) st = da_attn_check_disjoint(out, q_bytes, "out", q, q_bytes, "q");
  if (!st) st = da_attn_check_disjoint(out, q_bytes, "out", k, kv_bytes, "k");
  if (!st) st = da_attn_check_disjoint(out, q_bytes, "out", v, kv_bytes, "v");
  if (lse != NULL) {
    if (!st) st = da_attn_check_disjoint(lse, lse_bytes, "lse", out, q_bytes, "out");
    if (!st) st = da_attn_check_disjoint(lse, lse_bytes, "lse", q, q_bytes, "q");
    if (!st) st = da_attn_check_disjoint(lse, lse_bytes, "lse", k, kv_bytes, "k");
    if (!st) st = da_attn_check_disjoint(lse, lse_bytes, "lse", v, kv_bytes, "v");
  }
  return st;
}

da_status da_attention_forward_cpu(const da_attention_params* params,
                                   const da_attention_batch* batch, const float* q,
                                   const float* k, const float* v, float* out, float* lse) {
  da_error_clear();
  da_attn_plan plan = {0};
  da_status status = da_attn_plan_init(params, batch, &plan);
  if (status) return status;
  status = check_forward_buffers(&plan, q, k, v, out, lse);
  if (status) return status;

  const size_t rows_h = (size_t)plan.tokens * plan.h;
  const int d = plan.d;
  const int threads = omp_get_max_threads();
  size_t ws_stride = 0;
  softmax_state st = {malloc(rows_h * sizeof(float)), malloc(rows_h * sizeof(float))};
  float* ws_base = workspaces_alloc(threads, d, &ws_stride);
  if (st.m == NULL || st.l == NULL || ws_base == NULL) {
    status = da_error_set(DA_STATUS_OUT_OF_MEMORY,
                          "could not allocate %zu bytes of softmax state and workspace",
                          rows_h * 2 * sizeof(float) + ws_stride * threads * sizeof(float));
    goto done;
  }

#pragma omp parallel num_threads(threads)
  {
    workspace ws = workspace_at(ws_base + ws_stride * omp_get_thread_num(), d);
#pragma omp for schedule(static)
    for (size_t x = 0; x < rows_h; x++) {
      st.m[x] = -INFINITY;
      st.l[x] = 0.0f;
      memset(out + x * d, 0, sizeof(float) * d);
    }
    const pass forward = {.kind = PASS_FORWARD, .q = q, .k = k, .v = v, .out = out, .st = st};
    run_pass(&plan, &forward, ws);
#pragma omp for schedule(static)
    for (size_t x = 0; x < rows_h; x++) {
      const float l = st.l[x];
      if (l > 0.0f) {
        const float inv = 1.0f / l;
        for (int c = 0; c < d; c++) out[x * d + c] *= inv;
      }
      if (lse != NULL) lse[x] = l > 0.0f ? st.m[x] + logf(l) : -INFINITY;
    }
  }

done:
  free(st.m);
  free(st.l);
  free(ws_base);
  return status;
}

static da_status check_backward_buffers(const da_attn_plan* plan, const float* q,
                                        const float* k, const float* v, const float* out,
                                        const float* lse, const float* dout, const float* dq,
                                        const float* dk, const float* dv) {
  const struct {
    const void* p;
    const char* name;
  } required[] = {{q, "q"},       {k, "k"},   {v, "v"},   {out, "out"}, {lse, "lse"},
                  {dout, "dout"}, {dq, "dq"}, {dk, "dk"}, {dv, "dv"}};
  for (size_t x = 0; x < sizeof required / sizeof required[0]; x++)
    if (required[x].p == NULL)
      return da_error_set(DA_STATUS_INVALID_ARGUMENT, "%s must not be NULL", required[x].name);
  size_t q_bytes = (size_t)plan->tokens * plan->h * plan->d * sizeof(float);
  size_t kv_bytes = (size_t)plan->tokens * plan->h_kv * plan->d * sizeof(float);
  size_t lse_bytes = (size_t)plan->tokens * plan->h * sizeof(float);
  const struct {
    const void* p;
    size_t bytes;
    const char* name;
  } outputs[] = {{dq, q_bytes, "dq"}, {dk, kv_bytes, "dk"}, {dv, kv_bytes, "dv"}},
    others[] = {{q, q_bytes, "q"},         {k, kv_bytes, "k"},     {v, kv_bytes, "v"},
                {out, q_bytes, "out"},     {lse, lse_bytes, "lse"}, {dout, q_bytes, "dout"},
                {dq, q_bytes, "dq"},       {dk, kv_bytes, "dk"},   {dv, kv_bytes, "dv"}};
  for (size_t a = 0; a < 3; a++)
    for (size_t b = 0; b < sizeof others / sizeof others[0]; b++) {
      if (others[b].p == outputs[a].p && others[b].name == outputs[a].name) continue;
      da_status st = da_attn_check_disjoint(outputs[a].p, outputs[a].bytes, outputs[a].name,
                                            others[b].p, others[b].bytes, others[b].name);
      if (st) return st;
    }
  return DA_STATUS_SUCCESS;
}

da_status da_attention_backward_cpu(const da_attention_params* params,
                                    const da_attention_batch* batch, const float* q,
                                    const float* k, const float* v, const float* out,
                                    const float* lse, const float* dout, float* dq, float* dk,
                                    float* dv) {
  da_error_clear();
  da_attn_plan plan = {0};
  da_status status = da_attn_plan_init(params, batch, &plan);
  if (status) return status;
  status = check_backward_buffers(&plan, q, k, v, out, lse, dout, dq, dk, dv);
  if (status) return status;

  const size_t rows_h = (size_t)plan.tokens * plan.h, rows_kv = (size_t)plan.tokens * plan.h_kv;
  const int d = plan.d;
  const int threads = omp_get_max_threads();
  size_t ws_stride = 0;
  float* delta = malloc(rows_h * sizeof(float));
  float* ws_base = workspaces_alloc(threads, d, &ws_stride);
  if (delta == NULL || ws_base == NULL) {
    status = da_error_set(DA_STATUS_OUT_OF_MEMORY,
                          "could not allocate %zu bytes of backward workspace",
                          rows_h * sizeof(float) + ws_stride * threads * sizeof(float));
    goto done;
  }

#pragma omp parallel num_threads(threads)
  {
    workspace ws = workspace_at(ws_base + ws_stride * omp_get_thread_num(), d);
#pragma omp for schedule(static)
    for (size_t x = 0; x < rows_h; x++) {
      double dot = 0.0;
      for (int c = 0; c < d; c++) dot += (double)dout[x * d + c] * out[x * d + c];
      delta[x] = (float)dot;
      memset(dq + x * d, 0, sizeof(float) * d);
    }
#pragma omp for schedule(static)
    for (size_t x = 0; x < rows_kv; x++) {
      memset(dk + x * d, 0, sizeof(float) * d);
      memset(dv + x * d, 0, sizeof(float) * d);
    }
    const pass dkdv = {.kind = PASS_DKDV, .q = q, .k = k, .v = v, .dout = dout, .lse = lse,
                       .delta = delta, .dk = dk, .dv = dv};
    run_pass(&plan, &dkdv, ws);
    const pass dq_pass = {.kind = PASS_DQ, .q = q, .k = k, .v = v, .dout = dout, .lse = lse,
                          .delta = delta, .dq = dq};
    run_pass(&plan, &dq_pass, ws);
  }

done:
  free(delta);
  free(ws_base);
  return status;
}
