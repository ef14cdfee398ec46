// cuda_geometry.h: which rows a CTA of the CUDA kernels owns and which tiles of
// the other side it streams for them (see cuda_kernels.cuh for the idea), as
// host-and-device functions: the kernels run them, the host sizes grids with
// them, and tests/attention/cuda_geometry_test.cc checks on the CPU that they
// cover exactly the (query, key) pairs of the semantics. Internal to attention/.
#ifndef DA_ATTENTION_CUDA_GEOMETRY_H
#define DA_ATTENTION_CUDA_GEOMETRY_H

#include "attention/cuda_launch.h"
#include "attention/params.h"

// Small helpers the kernels call per tile or per row: forced inline on the device
// as they were before they moved here.
#ifdef __CUDACC__
#define DA_GEOM_INLINE __host__ __device__ __forceinline__
#else
#define DA_GEOM_INLINE inline
#endif

namespace da_cuda {

constexpr int kMaxRowStride = 64;  // larger lcm: contiguous rows (L = 1), masked

// ---------------------------------------------------------------- geometry ----

DA_HD inline int gcd_int(int x, int y) {
  while (y != 0) {
    int t = x % y;
    x = y;
    y = t;
  }
  return x;
}

DA_HD inline unsigned long long all_residues(int L) {
  return L >= 64 ? ~0ULL : (1ULL << L) - 1;
}

// The heads' part of the geometry of the rows a CTA owns for heads
// [head_first, head_first + count): see HeadGeometry.
DA_HD inline HeadGeometry head_geometry(const KernelArgs& a, int head_first, int count) {
  long long L = 1;
  int G = 0;
  for (int j = head_first; j < head_first + count; ++j) {
    for (int i = 0; i < a.num_patterns; ++i) {
      if (!da_attn_head_uses_pattern((da_attention_mode)a.mode, i, j, a.h, a.num_patterns)) continue;
      int r = a.r[i];
      if (L <= kMaxRowStride) L = L / gcd_int((int)L, r) * r;
      G = gcd_int(G, a.w[i]);
    }
  }
  HeadGeometry g;
  g.L = L > kMaxRowStride ? 1 : (int)L;
  g.G = G;
  // The residues the patterns can select (see HeadGeometry).
  unsigned long long sel = 0;
  bool every = !a.compact_rows || g.L == 1 || (G != 0 && G % g.L != 0);
  for (int j = head_first; j < head_first + count && !every; ++j) {
    for (int i = 0; i < a.num_patterns && !every; ++i) {
      if (!da_attn_head_uses_pattern((da_attention_mode)a.mode, i, j, a.h, a.num_patterns)) continue;
      const int r = a.r[i];
      every = a.w[i] % r != 0;
      const int o = da_attn_head_offset((da_offset_policy)a.offset, j, a.h, a.num_patterns, r) % r;
      for (int rho = o; rho < g.L; rho += r) sel |= 1ULL << rho;
    }
  }
  g.sel = every ? all_residues(g.L) : sel;
  return g;
}

DA_HD inline int popcount64(unsigned long long x) {
  int c = 0;
  for (; x != 0; x &= x - 1) ++c;
  return c;
}

// The geometry for CTAs of `rows` rows: the chunks of rows * L positions are laid
// out inside blocks of G positions only when a chunk fits in one.
DA_HD inline RowGeometry row_geometry(HeadGeometry hg, int rows) {
  RowGeometry g;
  g.L = hg.L;
  long long chunk = (long long)rows * g.L;
  g.G = (hg.G == 0 || hg.G < chunk) ? 0x7fffffff : hg.G;
  g.sel = hg.sel;
  g.count = g.sel == all_residues(g.L) ? g.L : popcount64(g.sel);
  return g;
}

DA_HD inline RowGeometry row_geometry(const KernelArgs& a, int head_first, int count, int rows) {
  return row_geometry(head_geometry(a, head_first, count), rows);
}

// row_geometry as a CTA gets it: from the tables in KernelArgs when the head set
// has a slot there (a single query head, or the query heads of one kv head),
// else computed.
DA_HD inline RowGeometry cta_geometry(const KernelArgs& a, int head_first, int count, int rows) {
  if (count == 1 && head_first < kGeoSlots) return row_geometry(a.geo_q[head_first], rows);
  const int group = a.h / a.h_kv;
  if (count == group && head_first % group == 0 && head_first / group < kGeoSlots)
    return row_geometry(a.geo_kv[head_first / group], rows);
  return row_geometry(a, head_first, count, rows);
}

// The parameters the geometry and the kernels read, from a validated plan
// (tensors, sequences and the path choice are left to the caller). compact_rows:
// KernelArgs::compact_rows.
inline void args_from_plan(const da_attn_plan& plan, KernelArgs* a, int compact_rows = 1) {
  a->compact_rows = compact_rows;
  a->h = plan.h;
  a->h_kv = plan.h_kv;
  a->d = plan.d;
  a->scale = plan.scale;
  a->scale_log2 = plan.scale * 1.4426950408889634f;
  a->causal = plan.causal;
  a->mode = plan.mode;
  a->offset = plan.offset;
  a->num_patterns = plan.num_patterns;
  for (int i = 0; i < plan.num_patterns; ++i) {
    a->w[i] = plan.w[i];
    a->r[i] = plan.r[i];
  }
  const int group = plan.h / plan.h_kv;
  for (int j = 0; j < plan.h && j < kGeoSlots; ++j) a->geo_q[j] = head_geometry(*a, j, 1);
  for (int g = 0; g < plan.h_kv && g < kGeoSlots; ++g)
    a->geo_kv[g] = head_geometry(*a, g * group, group);
}

// CTAs per sequence of length n (monotone in n).
DA_HD inline int tiles_for(RowGeometry g, int rows, int n) {
  if (n <= 0) return 0;
  long long chunk = (long long)rows * g.L;
  long long blk = g.G < n ? g.G : n;
  long long nb = (n + blk - 1) / blk, cpb = (blk + chunk - 1) / chunk;
  return (int)(nb * cpb * g.count);
}

// The k-th residue (from 0) of g.sel.
DA_HD inline int nth_residue(const RowGeometry& g, int k) {
  if (g.count == g.L) return k;
  for (int rho = 0; rho < 64; ++rho)
    if ((g.sel >> rho) & 1ULL) {
      if (k == 0) return rho;
      --k;
    }
  return 0;  // k < g.count: not reached
}

// The positions [*first, *end) (sequence-relative) of CTA `tile`'s chunk of
// rows * L positions, for the chunk's first residue's CTA only (tile % count ==
// 0): its rows of the residues without CTAs are that CTA's to write (zeros), so
// each such row has one writer. False for the other CTAs, and where every
// residue gets CTAs. *first is a multiple of L (blocks of G positions are, where
// some residue has no CTAs).
DA_HD inline bool unowned_span(RowGeometry g, int rows, int n, int tile, int* first, int* end) {
  if (g.count == g.L || n <= 0 || tile % g.count != 0) return false;
  const long long chunk = (long long)rows * g.L;
  const long long blk = g.G < n ? g.G : n;
  const long long cpb = (blk + chunk - 1) / chunk;
  const long long b = tile / (cpb * g.count), c = (tile / g.count) % cpb;
  const long long lo = b * blk + c * chunk;
  long long hi = (b + 1) * blk < n ? (b + 1) * blk : n;
  if (lo + chunk < hi) hi = lo + chunk;
  if (lo >= hi) return false;
  *first = (int)lo;
  *end = (int)hi;
  return true;
}

// Whether position p (sequence-relative) has a residue that gets CTAs.
DA_HD inline bool residue_selected(const RowGeometry& g, long long p) {
  return (g.sel >> (int)(p % g.L)) & 1ULL;
}

// Whether the d = 64 Hopper forward should give its CTAs kFwdWideRows rows (three
// consumer warpgroups, ~4% faster per row: head-group mode at n = 128K measured
// 262-271 against 255-258 TFLOP/s) instead of kFwdRows. Only where that does not
// cost more rows than it saves time, for every head: the wide CTAs must fit the
// blocks of the head's geometry (else a CTA's rows straddle the segments of a
// pattern and it streams the tiles of two: a LongNet mixture, 128 own rows a
// segment at the lcm stride, measured 149 against 360), and rounding a block's
// rows up to whole CTAs may cost at most 4% more rows than with kFwdRows. A
// head's geometry depends on its patterns only: one evaluation in LongNet mode
// (every head uses every pattern), one per head group in head-group mode.
inline bool forward_rows_wide(const KernelArgs& a) {
  int last_group = -1;
  for (int j = 0; j < a.h; ++j) {
    const int group =
        a.mode == DA_MODE_LONGNET ? 0 : da_attn_head_group(j, a.h, a.num_patterns);
    if (group == last_group) continue;
    last_group = group;
    const HeadGeometry hg = j < kGeoSlots ? a.geo_q[j] : head_geometry(a, j, 1);
    if (hg.G == 0 || hg.G < (long long)kFwdWideRows * hg.L) return false;
    const long long blk = hg.G < a.n_max ? hg.G : a.n_max;
    const long long rows = (blk + hg.L - 1) / hg.L;
    auto padded = [rows](long long cta) { return (rows + cta - 1) / cta * cta; };
    if (padded(kFwdWideRows) * 100 > padded(kFwdRows) * 104) return false;
  }
  return true;
}

// Where work item `item` of a launch over every (head, sequence, tile) lies, for
// tiles_per_seq CTAs' worth of rows per sequence and `batch` sequences: the
// head slowest, then the sequence, then the tile (the order in which the
// one-item-per-CTA grids (tiles * batch, heads) are numbered). A persistent
// CTA takes item blockIdx.x, then items from a work counter in order; so CTAs
// running at once work on neighbouring tiles of one head and share its K/V in L2.
struct ItemPlace {
  int head, seq, tile;
};

DA_HD inline ItemPlace item_place(long long item, int tiles_per_seq, int batch) {
  const long long per_head = (long long)tiles_per_seq * batch;
  const long long x = item % per_head;
  ItemPlace p;
  p.head = (int)(item / per_head);
  p.seq = (int)(x / tiles_per_seq);
  p.tile = (int)(x % tiles_per_seq);
  return p;
}

// The rows of CTA `tile`: positions p0 + L * t, t < nrows (sequence-relative).
struct OwnRows {
  int p0, L, nrows;
};

DA_HD inline bool own_rows(RowGeometry g, int rows, int n, int tile, OwnRows* out) {
  if (n <= 0) return false;
  long long chunk = (long long)rows * g.L;
  long long blk = g.G < n ? g.G : n;
  long long cpb = (blk + chunk - 1) / chunk;
  long long b = tile / (cpb * g.count), c = (tile / g.count) % cpb;
  long long p0 = b * blk + c * chunk + nth_residue(g, tile % g.count);
  long long end = (b + 1) * blk < n ? (b + 1) * blk : n;
  if (p0 >= end) return false;
  long long nr = (end - p0 + g.L - 1) / g.L;
  out->p0 = (int)p0;
  out->L = g.L;
  out->nrows = (int)(nr < rows ? nr : rows);
  return true;
}

// ------------------------------------------------------------------- units ----

// One (head, pattern, segment) that selects some of the CTA's rows, and the
// range of the other side's dilated rows the CTA streams for it.
struct Unit {
  int j;          // query head
  int a, r, o;    // segment start (sequence-relative), dilation, offset
  int di_first;   // own dilated index of the first selected row
  int di_last;    // ... of the last selected row
  int t_lo, t_hi; // own rows inside the segment
  int uniform;    // every row in [t_lo, t_hi) is selected (r divides L)
  int all_rows;   // the selected rows are exactly all rows [0, nrows)
  int lo, hi;     // the other side's dilated rows [lo, hi)
  int ntiles;
};

struct UnitCursor {
  int jj, i, m;
};

DA_HD inline int ceil_div_pos(long long x, long long y) {  // y > 0, any x
  return (int)(x >= 0 ? (x + y - 1) / y : -((-x) / y));
}

// Advances cur to the next unit with work; false when none is left. kv_side: the
// own rows are keys (dK/dV) rather than queries.
DA_HD inline bool next_unit(const KernelArgs& a, int n, const OwnRows& own, int head_first,
                            int head_count, int kv_side, int tile_rows, UnitCursor* cur,
                            Unit* u) {
  const int p_last = own.p0 + own.L * (own.nrows - 1);
  for (; cur->jj < head_count; cur->jj++, cur->i = 0, cur->m = -1) {
    int j = head_first + cur->jj;
    for (; cur->i < a.num_patterns; cur->i++, cur->m = -1) {
      int i = cur->i;
      if (!da_attn_head_uses_pattern((da_attention_mode)a.mode, i, j, a.h, a.num_patterns)) continue;
      int w = a.w[i], r = a.r[i];
      int o = da_attn_head_offset((da_offset_policy)a.offset, j, a.h, a.num_patterns, r);
      int m_lo = own.p0 / w, m_hi = p_last / w;
      if (cur->m < m_lo) cur->m = m_lo;
      while (cur->m <= m_hi) {
        int m = cur->m++;
        int seg = m * w;
        int len = n - seg < w ? n - seg : w;
        if (o >= len) continue;
        int t_lo = ceil_div_pos((long long)seg - own.p0, own.L);
        int t_hi = ceil_div_pos((long long)seg + len - own.p0, own.L);
        if (t_lo < 0) t_lo = 0;
        if (t_hi > own.nrows) t_hi = own.nrows;
        if (t_lo >= t_hi) continue;
        int uniform = own.L % r == 0;
        int tf = -1, tl = -1;
        if (uniform) {
          // Every row has the same residue mod r; the selected ones are those at
          // or past the offset.
          int x = own.p0 + own.L * t_lo - seg - o;
          if (((x % r) + r) % r == 0) {
            int t_o = ceil_div_pos((long long)seg + o - own.p0, own.L);
            tf = t_o > t_lo ? t_o : t_lo;
            if (tf < t_hi) tl = t_hi - 1; else tf = -1;
          }
        } else {
          for (int t = t_lo; t < t_hi; ++t) {
            int x = own.p0 + own.L * t - seg - o;
            if (x >= 0 && x % r == 0) { tf = t; break; }
          }
          for (int t = t_hi - 1; t >= t_lo && tf >= 0; --t) {
            int x = own.p0 + own.L * t - seg - o;
            if (x >= 0 && x % r == 0) { tl = t; break; }
          }
        }
        if (tf < 0) continue;
        int count = (int)da_attn_selected(len, r, o);
        int di_first = (own.p0 + own.L * tf - seg - o) / r;
        int di_last = (own.p0 + own.L * tl - seg - o) / r;
        int lo, hi;
        if (!kv_side) {
          lo = 0;
          hi = a.causal ? (di_last + 1 < count ? di_last + 1 : count) : count;
        } else {
          lo = a.causal ? di_first : 0;
          hi = count;
        }
        if (lo >= hi) continue;
        u->j = j;
        u->a = seg;
        u->r = r;
        u->o = o;
        u->di_first = di_first;
        u->di_last = di_last;
        u->t_lo = t_lo;
        u->t_hi = t_hi;
        u->uniform = uniform && tf == t_lo;
        u->all_rows = u->uniform && t_lo == 0 && t_hi == own.nrows;
        u->lo = lo;
        u->hi = hi;
        u->ntiles = (hi - lo + tile_rows - 1) / tile_rows;
        return true;
      }
    }
  }
  return false;
}

// One tile of the other side (keys for forward/dQ, queries for dK/dV) and what
// the compute step needs to mask it. Written to a shared ring by the thread that
// issues its loads, read by every thread once the loads have landed.
struct TileDesc {
  long long token;  // absolute token of the tile's first row; rows are r tokens apart
  int k0;           // dilated index of the tile's first row
  int valid;        // rows in the tile
  int hi;           // end of the unit's other-side range
  int di_first, di_last, all_rows;
  int t_lo, t_hi, base, r;  // own row t is selected iff t in [t_lo, t_hi) and
                            // x = p0 + L t - base >= 0 with x % r == 0 (index x / r)
  int j;                    // query head of the unit
  int serial;               // unit number within the CTA's work item
};

// Own dilated index of row t for the tile's unit, or -1.
DA_GEOM_INLINE int desc_row_index(const TileDesc& d, const OwnRows& own, int t) {
  if (t < d.t_lo || t >= d.t_hi) return -1;
  int x = own.p0 + own.L * t - d.base;
  if (x < 0 || x % d.r != 0) return -1;
  return x / d.r;
}

// Whether own row t (own dilated index di, -1 when the tile's unit does not
// select it) and the other side's row kk (dilated index) form a pair: kk inside
// the unit's range [.., hi) and, when causal, the key not after the query
// (KV_SIDE: the own rows are the keys).
template <int KV_SIDE>
DA_GEOM_INLINE bool pair_selected(int di, int kk, int hi, int causal) {
  if (KV_SIDE) return di >= 0 && kk < hi && (!causal || kk >= di);
  return di >= 0 && kk < hi && (!causal || kk <= di);
}

// The tiles a CTA streams, in order: every tile of every unit that selects its
// rows (units in next_unit's order, tiles of bn rows of the other side).
struct TileStream {
  const KernelArgs& a;
  int n, head_first, head_count, kv_side, bn;
  const OwnRows& own;
  long long start;
  UnitCursor cursor = {0, 0, -1};
  Unit u;
  int t = 0, serial = 0;
  bool more;

  DA_HD TileStream(const KernelArgs& a_, int n_, const OwnRows& own_, int head_first_,
                        int head_count_, int kv_side_, int bn_, long long start_)
      : a(a_), n(n_), head_first(head_first_), head_count(head_count_), kv_side(kv_side_),
        bn(bn_), own(own_), start(start_) {
    more = next_unit(a, n, own, head_first, head_count, kv_side, bn, &cursor, &u);
  }

  // The next tile into *d; false when the stream is exhausted.
  DA_HD bool next(TileDesc* d) {
    if (!more) return false;
    d->k0 = u.lo + t * bn;
    d->valid = u.hi - d->k0 < bn ? u.hi - d->k0 : bn;
    d->token = start + u.a + u.o + (long long)u.r * d->k0;
    d->hi = u.hi;
    d->di_first = u.di_first;
    d->di_last = u.di_last;
    d->all_rows = u.all_rows;
    d->t_lo = u.t_lo;
    d->t_hi = u.t_hi;
    d->base = u.a + u.o;
    d->r = u.r;
    d->j = u.j;
    d->serial = serial;
    if (++t >= u.ntiles) {
      t = 0;
      ++serial;
      more = next_unit(a, n, own, head_first, head_count, kv_side, bn, &cursor, &u);
    }
    return true;
  }
};

}  // namespace da_cuda

#endif  // DA_ATTENTION_CUDA_GEOMETRY_H
