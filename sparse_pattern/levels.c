/* The blocks each level keeps in one row, in time linear in what it keeps.
 *
 * Local: candidates are ranked structure first (the diagonal window and the blocks
 * the dilated (w, r) patterns touch), nearest to the diagonal first (ties: the left
 * one), then the remaining blocks of the domain by the same distance order. The
 * structure is walked outward lazily: every window / (pattern, segment) pair is an
 * arithmetic progression of tokens t0 + k r <= t_last, whose blocks an iterator
 * yields in order in O(1) each, so taking q blocks costs O(q x iterators) and never
 * touches the rest of the domain.
 *
 * Inter-node: x links evenly strided over the remote domain (an ordered list of at
 * most four block intervals minus the global columns): position
 * floor((k M + c) / x) of the M candidates for k < x, with a phase c drawn from the
 * seed, the head and the row (never the rank). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sparse_pattern/pattern_internal.h"

/* 1 window + 2 segments (first and last that overlap the query block) per pattern;
 * segments strictly inside the query block only reach the diagonal, which the
 * window always holds. */
#define MAX_ITERS (1 + 2 * DA_MAX_PATTERNS)

typedef struct {
  int64_t cur;           /* current block, -1 once exhausted            */
  int64_t t0, r, t_last; /* tokens t0 + k r, t0 <= t <= t_last           */
  int64_t bound;         /* left: lowest block; right: one past highest   */
} block_iter;

/* Left iterators go down from the query block, right ones up from the next one. */
static void left_seek(block_iter* it, int64_t B, int64_t lim) {
  if (lim > it->t_last) lim = it->t_last;
  if (lim < it->t0) {
    it->cur = -1;
    return;
  }
  int64_t b = (it->t0 + (lim - it->t0) / it->r * it->r) / B;
  it->cur = b >= it->bound ? b : -1;
}

static void right_seek(block_iter* it, int64_t B, int64_t lo) {
  if (lo < it->t0) lo = it->t0;
  int64_t t = it->t0 + (lo - it->t0 + it->r - 1) / it->r * it->r;
  if (t > it->t_last) {
    it->cur = -1;
    return;
  }
  int64_t b = t / B;
  it->cur = b < it->bound ? b : -1;
}

typedef struct {
  block_iter left[MAX_ITERS], right[MAX_ITERS];
  int nl, nr;
} iter_set;

static void add_left(iter_set* set, const da_pattern_plan* plan, int64_t t0, int64_t r,
                     int64_t t_last, int64_t bound, int64_t start_block) {
  block_iter* it = &set->left[set->nl++];
  it->t0 = t0;
  it->r = r;
  it->t_last = t_last;
  it->bound = bound;
  left_seek(it, plan->B, (start_block + 1) * plan->B - 1);
}

static void add_right(iter_set* set, const da_pattern_plan* plan, int64_t t0, int64_t r,
                      int64_t t_last, int64_t bound, int64_t start_block) {
  block_iter* it = &set->right[set->nr++];
  it->t0 = t0;
  it->r = r;
  it->t_last = t_last;
  it->bound = bound;
  right_seek(it, plan->B, start_block * plan->B);
}

/* The structure of row i for head h restricted to the local domain [s, e_eff). */
static void structure_iters(const da_pattern_plan* plan, int h, int64_t i, int64_t s, int64_t e_eff,
                            iter_set* set) {
  const int64_t B = plan->B, n = plan->n;
  set->nl = set->nr = 0;
  /* Window: blocks [i - window, i + window] as the progression of block starts. */
  int64_t lo = i - plan->window < s ? s : i - plan->window;
  add_left(set, plan, lo * B, B, i * B, s, i);
  if (plan->window > 0 && i + 1 < e_eff) {
    int64_t hi = i + plan->window < e_eff - 1 ? i + plan->window : e_eff - 1;
    add_right(set, plan, (i + 1) * B, B, hi * B, e_eff, i + 1);
  }
  const int64_t q_begin = i * B, q_end = (i + 1) * B < n ? (i + 1) * B : n;
  for (int p = 0; p < plan->num_patterns; p++) {
    if (!da_pattern_uses_pattern(plan, p, h)) continue;
    const int64_t w = plan->w[p], r = plan->r[p], o = da_pattern_offset(plan, p, h);
    const int64_t m_first = q_begin / w, m_last = (q_end - 1) / w;
    for (int64_t m = m_first; m <= m_last; m = (m == m_last ? m + 1 : m_last)) {
      const int64_t a = m * w, seg_end = a + w < n ? a + w : n;
      const int64_t t_start = a + o;
      if (t_start >= seg_end) continue; /* nothing selected in this segment */
      const int64_t qlo = q_begin > a ? q_begin : a;
      const int64_t qhi = q_end < seg_end ? q_end : seg_end;
      if (qhi - 1 < t_start) continue;
      const int64_t tq_max = t_start + (qhi - 1 - t_start) / r * r;
      if (tq_max < qlo) continue; /* no selected query in this block */
      int64_t t_last = t_start + (seg_end - 1 - t_start) / r * r;
      if (plan->causal) t_last = tq_max;
      add_left(set, plan, t_start, r, t_last, s, i);
      if (!plan->causal) add_right(set, plan, t_start, r, t_last, e_eff, i + 1);
    }
  }
}

static int64_t best_left(const iter_set* set) {
  int64_t best = -1;
  for (int x = 0; x < set->nl; x++)
    if (set->left[x].cur > best) best = set->left[x].cur;
  return best;
}

static int64_t best_right(const iter_set* set) {
  int64_t best = -1;
  for (int x = 0; x < set->nr; x++)
    if (set->right[x].cur >= 0 && (best < 0 || set->right[x].cur < best)) best = set->right[x].cur;
  return best;
}

/* Takes up to `limit` non-global structure blocks nearest first: left ones into sl
 * (decreasing), right ones into sr (increasing). Returns whether the structure is
 * exhausted (every one of its blocks was taken). */
static int take_structure(const da_pattern_plan* plan, int64_t i, iter_set* set, int64_t limit,
                          int32_t* sl, int64_t* nsl, int32_t* sr, int64_t* nsr) {
  const int64_t B = plan->B;
  int64_t bl = best_left(set), br = best_right(set), taken = 0;
  *nsl = *nsr = 0;
  while (taken < limit && (bl >= 0 || br >= 0)) {
    if (br < 0 || (bl >= 0 && i - bl <= br - i)) {
      for (int x = 0; x < set->nl; x++)
        if (set->left[x].cur == bl) left_seek(&set->left[x], B, bl * B - 1);
      if (!da_pattern_is_global(plan, bl)) {
        sl[(*nsl)++] = (int32_t)bl;
        taken++;
      }
      bl = best_left(set);
    } else {
      for (int x = 0; x < set->nr; x++)
        if (set->right[x].cur == br) right_seek(&set->right[x], B, (br + 1) * B);
      if (!da_pattern_is_global(plan, br)) {
        sr[(*nsr)++] = (int32_t)br;
        taken++;
      }
      br = best_right(set);
    }
  }
  return bl < 0 && br < 0;
}

/* The local domain of row i: the owner's shard, cut at the causal limit. */
static void local_domain(const da_pattern_plan* plan, int64_t i, int64_t* s, int64_t* e_eff) {
  const int64_t owner = da_pattern_owner(plan, i);
  const int64_t hi = da_pattern_allowed_end(plan, i);
  const int64_t e = da_pattern_shard_begin(plan, owner + 1);
  *s = da_pattern_shard_begin(plan, owner);
  *e_eff = e < hi ? e : hi;
}

/* Scratch layout: six arrays of `capacity` entries. */
enum { SL, SR, FL, FR, LOC, REM, NUM_ARRAYS };

static int32_t* scratch_array(da_pattern_scratch* scratch, int which) {
  return scratch->buffer + (size_t)which * (size_t)scratch->capacity;
}

da_status da_pattern_scratch_init(da_pattern_scratch* scratch, int64_t nb) {
  scratch->capacity = nb;
  scratch->buffer = malloc(sizeof(int32_t) * (size_t)NUM_ARRAYS * (size_t)nb);
  return scratch->buffer != NULL ? DA_STATUS_SUCCESS : DA_STATUS_OUT_OF_MEMORY;
}

void da_pattern_scratch_free(da_pattern_scratch* scratch) {
  free(scratch->buffer);
  scratch->buffer = NULL;
}

int64_t da_pattern_structure_blocks(const da_pattern_plan* plan, int h, int64_t i, int32_t* out) {
  int64_t s, e_eff, nsl, nsr;
  local_domain(plan, i, &s, &e_eff);
  iter_set set;
  structure_iters(plan, h, i, s, e_eff, &set);
  /* Left blocks come decreasing into out and are reversed; right ones follow. */
  int32_t* tmp = malloc(sizeof(int32_t) * (size_t)plan->nb);
  if (tmp == NULL) return -1;
  take_structure(plan, i, &set, INT64_MAX, out, &nsl, tmp, &nsr);
  for (int64_t a = 0, b = nsl - 1; a < b; a++, b--) {
    int32_t t = out[a];
    out[a] = out[b];
    out[b] = t;
  }
  memcpy(out + nsl, tmp, sizeof(int32_t) * (size_t)nsr);
  free(tmp);
  return nsl + nsr;
}

/* The q local blocks of row i, increasing, into out. */
static int64_t local_blocks(const da_pattern_plan* plan, int h, int64_t i, int64_t q,
                            da_pattern_scratch* scratch, int32_t* out) {
  if (q == 0) return 0;
  int64_t s, e_eff, nsl, nsr, nfl = 0, nfr = 0;
  local_domain(plan, i, &s, &e_eff);
  int32_t *sl = scratch_array(scratch, SL), *sr = scratch_array(scratch, SR);
  int32_t *fl = scratch_array(scratch, FL), *fr = scratch_array(scratch, FR);
  iter_set set;
  structure_iters(plan, h, i, s, e_eff, &set);
  const int exhausted = take_structure(plan, i, &set, q, sl, &nsl, sr, &nsr);
  int64_t need = q - nsl - nsr;
  if (need > 0 && exhausted) {
    /* The nearest blocks outside the structure, skipping it and global columns.
     * gl / gr track the nearest global column on each side (k_left / k_right its
     * index), so the walk does no division per block. */
    int64_t lp = i, rp = i + 1, a = 0, b = 0;
    int64_t k_left = da_pattern_globals_below(plan, lp + 1) - 1;
    int64_t k_right = da_pattern_globals_below(plan, rp);
    int64_t gl = k_left >= 0 ? da_pattern_global_index(plan, k_left) : -1;
    int64_t gr = k_right < plan->g ? da_pattern_global_index(plan, k_right) : INT64_MAX;
    for (;;) {
      while (lp >= s) {
        if (a < nsl && sl[a] == lp) {
          a++;
        } else if (lp == gl) {
          gl = --k_left >= 0 ? da_pattern_global_index(plan, k_left) : -1;
        } else {
          break;
        }
        lp--;
      }
      while (rp < e_eff) {
        if (b < nsr && sr[b] == rp) {
          b++;
        } else if (rp == gr) {
          gr = ++k_right < plan->g ? da_pattern_global_index(plan, k_right) : INT64_MAX;
        } else {
          break;
        }
        rp++;
      }
      if (need == 0 || (lp < s && rp >= e_eff)) break;
      if (rp >= e_eff || (lp >= s && i - lp <= rp - i)) {
        fl[nfl++] = (int32_t)lp--;
      } else {
        fr[nfr++] = (int32_t)rp++;
      }
      need--;
    }
  }
  /* Left: two decreasing lists, merged from the largest into out's left part from
   * its end. Right: two increasing lists merged after it. */
  const int64_t nleft = nsl + nfl;
  int64_t x = 0, y = 0;
  for (int64_t k = nleft - 1; k >= 0; k--)
    out[k] = (y >= nfl || (x < nsl && sl[x] > fl[y])) ? sl[x++] : fl[y++];
  x = y = 0;
  for (int64_t k = nleft; k < nleft + nsr + nfr; k++)
    out[k] = (y >= nfr || (x < nsr && sr[x] < fr[y])) ? sr[x++] : fr[y++];
  return nleft + nsr + nfr;
}

/* ------------------------------------------------------------ inter-node */

typedef struct {
  int64_t a, b;  /* blocks [a, b)               */
  int64_t count; /* non-global blocks in it     */
} interval;

static int64_t non_global(const da_pattern_plan* plan, int64_t a, int64_t b) {
  return b <= a ? 0
                : (b - a) - (da_pattern_globals_below(plan, b) - da_pattern_globals_below(plan, a));
}

static void push_interval(const da_pattern_plan* plan, interval* list, int* count, int64_t a,
                          int64_t b, int64_t hi) {
  if (b > hi) b = hi;
  if (b <= a) return;
  interval* x = &list[(*count)++];
  x->a = a;
  x->b = b;
  x->count = non_global(plan, a, b);
}

/* The p-th (from 0) non-global block at or after a: the least fixed point of
 * j = a + p + (globals in [a, j]), reached from below. */
static int64_t nth_non_global(const da_pattern_plan* plan, int64_t a, int64_t p) {
  const int64_t before = da_pattern_globals_below(plan, a);
  int64_t j = a + p;
  for (;;) {
    int64_t next = a + p + (da_pattern_globals_below(plan, j + 1) - before);
    if (next == j) return j;
    j = next;
  }
}

static uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/* x blocks strided over the intervals (M candidates in all), increasing, into out. */
static int64_t strided(const da_pattern_plan* plan, const interval* list, int count, int64_t x,
                       uint64_t phase, int32_t* out) {
  int64_t m = 0;
  for (int k = 0; k < count; k++) m += list[k].count;
  if (x > m) x = m;
  if (x == 0) return 0;
  const int64_t c = (int64_t)(phase % (uint64_t)m);
  int which = 0;
  int64_t before = 0; /* candidates in the intervals before `which` */
  for (int64_t k = 0; k < x; k++) {
    const int64_t p = (k * m + c) / x;
    while (p >= before + list[which].count) before += list[which++].count;
    out[k] = (int32_t)nth_non_global(plan, list[which].a, p - before);
  }
  return x;
}

static uint64_t link_phase(const da_pattern_plan* plan, int h, int64_t i, int tier) {
  return splitmix64(plan->seed ^
                    splitmix64(((uint64_t)h << 32) ^ (uint64_t)i ^ ((uint64_t)tier << 62)));
}

/* The q inter-node blocks of row i for head h, increasing, into out. */
static int64_t inter_blocks(const da_pattern_plan* plan, int h, int64_t i, int64_t q,
                            da_pattern_scratch* scratch, int32_t* out) {
  if (q == 0) return 0;
  const int64_t hi = da_pattern_allowed_end(plan, i);
  const int64_t owner = da_pattern_owner(plan, i), node = owner / plan->Lw;
  const int64_t s = da_pattern_shard_begin(plan, owner);
  const int64_t e = da_pattern_shard_begin(plan, owner + 1);
  const int64_t node_last = (node + 1) * plan->Lw < plan->W ? (node + 1) * plan->Lw : plan->W;
  const int64_t ns = da_pattern_shard_begin(plan, node * plan->Lw);
  const int64_t ne = da_pattern_shard_begin(plan, node_last);
  interval same_node[2], other_nodes[2], all[2];
  int n_same = 0, n_other = 0, n_all = 0;
  push_interval(plan, same_node, &n_same, ns, s, hi);
  push_interval(plan, same_node, &n_same, e, ne, hi);
  push_interval(plan, other_nodes, &n_other, 0, ns, hi);
  push_interval(plan, other_nodes, &n_other, ne, plan->nb, hi);
  push_interval(plan, all, &n_all, 0, s, hi);
  push_interval(plan, all, &n_all, e, plan->nb, hi);
  switch (plan->type) {
    case DA_PATTERN_NODE_LOCAL:
      return strided(plan, same_node, n_same, q, link_phase(plan, h, i, 0), out);
    case DA_PATTERN_BANDWIDTH_AWARE: {
      int64_t m_same = 0;
      for (int k = 0; k < n_same; k++) m_same += same_node[k].count;
      const int64_t x_same = q < m_same ? q : m_same;
      int32_t* near = scratch_array(scratch, SL);
      int32_t* far = scratch_array(scratch, SR);
      int64_t a = strided(plan, same_node, n_same, x_same, link_phase(plan, h, i, 0), near);
      int64_t b = strided(plan, other_nodes, n_other, q - x_same, link_phase(plan, h, i, 1), far);
      int64_t x = 0, y = 0;
      for (int64_t k = 0; k < a + b; k++)
        out[k] = (y >= b || (x < a && near[x] < far[y])) ? near[x++] : far[y++];
      return a + b;
    }
    default:
      return strided(plan, all, n_all, q, link_phase(plan, h, i, 0), out);
  }
}

/* ------------------------------------------------------------------- rows */

void da_pattern_build_row(const da_pattern_plan* plan, int h, int64_t i,
                          const da_pattern_row_quota* quota, da_pattern_scratch* scratch,
                          int32_t* cols, uint8_t* levels) {
  const int64_t hi = da_pattern_allowed_end(plan, i);
  if (quota->is_global_row) {
    for (int64_t j = 0; j < hi; j++) {
      cols[j] = (int32_t)j;
      levels[j] = DA_PATTERN_LEVEL_GLOBAL;
    }
    return;
  }
  int32_t* loc = scratch_array(scratch, LOC);
  int32_t* rem = scratch_array(scratch, REM);
  const int64_t nloc = local_blocks(plan, h, i, quota->local, scratch, loc);
  const int64_t nrem = inter_blocks(plan, h, i, quota->inter, scratch, rem);
  const int64_t nglob = quota->global;
  /* Three disjoint increasing lists; globals are computed on the fly. */
  int64_t a = 0, b = 0, k = 0, out = 0;
  int64_t next_global = nglob > 0 ? da_pattern_global_index(plan, 0) : INT64_MAX;
  while (a < nloc || b < nrem || k < nglob) {
    int64_t vl = a < nloc ? loc[a] : INT64_MAX;
    int64_t vr = b < nrem ? rem[b] : INT64_MAX;
    if (next_global < vl && next_global < vr) {
      cols[out] = (int32_t)next_global;
      levels[out++] = DA_PATTERN_LEVEL_GLOBAL;
      k++;
      next_global = k < nglob ? da_pattern_global_index(plan, k) : INT64_MAX;
    } else if (vl < vr) {
      cols[out] = (int32_t)vl;
      levels[out++] = DA_PATTERN_LEVEL_LOCAL;
      a++;
    } else {
      cols[out] = (int32_t)vr;
      levels[out++] = DA_PATTERN_LEVEL_INTER_NODE;
      b++;
    }
  }
}
