// The CUDA kernels' row and tile geometry, checked on the CPU (no GPU needed, so
// a geometry bug fails CI). For each configuration, every CTA a launch covers is
// walked the way the kernels walk it (cta_geometry, tiles_for, own_rows,
// TileStream, desc_row_index, pair_selected) at the row and tile sizes the
// kernels use, on both sides: own rows are queries (forward, dQ) or keys (dK/dV,
// every query head of a kv head). The (head, query, key) pairs it produces must be
// exactly those of docs/semantics.md, each once per pattern that selects it
// (LongNet's multiset), and every position must be owned by exactly one CTA.
#include <gtest/gtest.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "attention/cuda_geometry.h"
#include "attention/tile_maps_cache.h"
#include "attention/params.h"
#include "tests/attention/test_util.h"

namespace {

using da_test::Config;

// counts[(j * n + q) * n + k]: how often query q of head j meets key k.
using PairCounts = std::vector<uint16_t>;

// The semantics by brute force over every (query, key) of one sequence.
PairCounts ExpectedPairs(const da_attn_plan& plan, int n) {
  PairCounts c(static_cast<size_t>(plan.h) * n * n, 0);
  for (int j = 0; j < plan.h; j++) {
    for (int i = 0; i < plan.num_patterns; i++) {
      if (!da_attn_uses_pattern(&plan, i, j)) continue;
      const int w = plan.w[i], r = plan.r[i], o = da_attn_offset(&plan, i, j);
      auto selected = [&](int p) {
        const int x = p % w - o;
        return x >= 0 && x % r == 0;
      };
      for (int q = 0; q < n; q++) {
        if (!selected(q)) continue;
        const int seg = q / w * w;
        for (int k = seg; k < n && k < seg + w; k++)
          if (selected(k) && (!plan.causal || k <= q)) c[(static_cast<size_t>(j) * n + q) * n + k]++;
      }
    }
  }
  return c;
}

struct Walk {
  PairCounts pairs;
  int failures = 0;  // structural problems, reported once each
};

// What the CTAs of one side produce for a sequence of n positions.
Walk KernelPairs(const da_cuda::KernelArgs& a, int n, int rows, int bn, int kv_side) {
  Walk out;
  out.pairs.assign(static_cast<size_t>(a.h) * n * n, 0);
  const int sets = kv_side ? a.h_kv : a.h, group = kv_side ? a.h / a.h_kv : 1;
  auto fail = [&](const std::string& what) {
    if (out.failures++ < 5) ADD_FAILURE() << what;
  };
  for (int s = 0; s < sets; s++) {
    std::vector<int> owned(n, 0), zeroed(n, 0);
    const da_cuda::RowGeometry g = da_cuda::cta_geometry(a, s * group, group, rows);
    const int tiles = da_cuda::tiles_for(g, rows, n);
    for (int tile = 0; tile < tiles; tile++) {
      int first, end;
      if (da_cuda::unowned_span(g, rows, n, tile, &first, &end)) {
        if (first < 0 || end > n || first % g.L != 0)
          fail("CTA " + std::to_string(tile) + " zeroes [" + std::to_string(first) + ", " +
               std::to_string(end) + ")");
        for (int p = std::max(first, 0); p < std::min(end, n); p++)
          if (!da_cuda::residue_selected(g, p)) zeroed[p]++;
      }
      da_cuda::OwnRows own;
      if (!da_cuda::own_rows(g, rows, n, tile, &own)) continue;
      if (own.nrows < 1 || own.nrows > rows || own.p0 < 0 ||
          own.p0 + static_cast<int64_t>(own.L) * (own.nrows - 1) >= n) {
        fail("CTA " + std::to_string(tile) + " owns rows outside the sequence");
        continue;
      }
      for (int t = 0; t < own.nrows; t++) owned[own.p0 + own.L * t]++;
      da_cuda::TileStream stream(a, n, own, s * group, group, kv_side, bn, 0);
      da_cuda::TileDesc d;
      while (stream.next(&d)) {
        if (d.valid < 1 || d.valid > bn || d.j < s * group || d.j >= (s + 1) * group) {
          fail("tile with " + std::to_string(d.valid) + " rows of head " + std::to_string(d.j));
          continue;
        }
        for (int t = 0; t < own.nrows; t++) {
          const int di = da_cuda::desc_row_index(d, own, t);
          const int mine = own.p0 + own.L * t;
          for (int c = 0; c < d.valid; c++) {
            const bool pair = kv_side ? da_cuda::pair_selected<1>(di, d.k0 + c, d.hi, a.causal)
                                      : da_cuda::pair_selected<0>(di, d.k0 + c, d.hi, a.causal);
            if (!pair) continue;
            const int64_t other = d.token + static_cast<int64_t>(d.r) * c;
            if (other < 0 || other >= n) {
              fail("a pair with position " + std::to_string(other) + " outside the sequence");
              continue;
            }
            const int64_t q = kv_side ? other : mine, k = kv_side ? mine : other;
            out.pairs[(static_cast<size_t>(d.j) * n + q) * n + k]++;
          }
        }
      }
    }
    // Positions of a residue no pattern of the set selects get no CTA (their
    // zeros come from zero_unselected_kernel, or in the Hopper forward from the
    // CTA whose unowned_span holds them); the pair counts above then show that
    // no pattern selected them after all.
    for (int p = 0; p < n; p++) {
      if (owned[p] != (da_cuda::residue_selected(g, p) ? 1 : 0))
        fail("position " + std::to_string(p) + " of head set " + std::to_string(s) + " is owned " +
             std::to_string(owned[p]) + " times");
      if (zeroed[p] != (da_cuda::residue_selected(g, p) ? 0 : 1))
        fail("position " + std::to_string(p) + " of head set " + std::to_string(s) +
             " is in the unowned span of " + std::to_string(zeroed[p]) + " CTAs");
    }
  }
  return out;
}

// The plan and kernel arguments of configuration c (false, with a test failure,
// when the plan is rejected).
bool PlanAndArgs(const Config& c, da_attn_plan* plan, da_cuda::KernelArgs* a) {
  const da_attention_params p = c.Params();
  const da_attention_batch b = c.Batch();
  const da_status st = da_attn_plan_init(&p, &b, plan);
  EXPECT_EQ(st, DA_STATUS_SUCCESS) << da_last_error();
  if (st != DA_STATUS_SUCCESS) return false;
  *a = {};
  da_cuda::args_from_plan(*plan, a);
  return true;
}

// Both sides at the kernels' sizes: forward 128 rows (64- and 128-key tiles: the
// portable and the Hopper kernels) and 192 rows with 64-key tiles (the d = 64
// Hopper forward with three consumers), dQ and dK/dV 64 rows (one-role kernels)
// and 128 rows (warp-specialized Hopper kernels) with 64-row tiles.
void CheckGeometry(const Config& c) {
  da_attn_plan plan;
  da_cuda::KernelArgs a;
  if (!PlanAndArgs(c, &plan, &a)) return;
  struct Side {
    int rows, bn, kv_side;
  };
  const Side sides[] = {{da_cuda::kFwdRows, da_cuda::kOtherRows, 0},
                        {da_cuda::kFwdRows, 128, 0},
                        {da_cuda::kFwdWideRows, da_cuda::kOtherRows, 0},
                        {da_cuda::kBwdRows, da_cuda::kOtherRows, 0},
                        {da_cuda::kBwdRows, da_cuda::kOtherRows, 1},
                        {da_cuda::kBwdWsRows, da_cuda::kOtherRows, 0},
                        {da_cuda::kBwdWsRows, da_cuda::kOtherRows, 1}};
  for (int64_t s = 0; s < plan.batch; s++) {
    const int n = static_cast<int>(da_attn_seq_len(&plan, s));
    if (n == 0) continue;
    const PairCounts want = ExpectedPairs(plan, n);
    for (const Side& side : sides) {
      const Walk got = KernelPairs(a, n, side.rows, side.bn, side.kv_side);
      size_t wrong = 0, first = 0;
      for (size_t x = 0; x < want.size(); x++)
        if (got.pairs[x] != want[x] && wrong++ == 0) first = x;
      if (wrong > 0 || got.failures > 0) {
        const size_t j = first / (static_cast<size_t>(n) * n), q = first / n % n, k = first % n;
        ADD_FAILURE() << wrong << " (head, query, key) counts differ, first head " << j
                      << " query " << q << " key " << k << ": " << got.pairs[first]
                      << " instead of " << want[first] << " (rows " << side.rows << ", tiles "
                      << side.bn << (side.kv_side ? ", key side" : ", query side")
                      << ", sequence " << s << " of length " << n << ")\n"
                      << c.Describe();
        return;
      }
    }
  }
}

TEST(CudaGeometry, CoversExactlyTheSemanticPairsOnRandomConfigs) {
  std::mt19937_64 rng(0x6e0e7e01);
  const int configs = da_test::ScaledCount(600);
  for (int i = 0; i < configs && !HasFailure(); i++) CheckGeometry(da_test::RandomConfig(rng, 4e6));
}

// Shapes where the rows line up with every pattern (G = gcd(w) >= rows * lcm(r)),
// so the kernels take their unmasked path, plus lcm(r) > 64 and segments that are
// not multiples of the chunk.
TEST(CudaGeometry, CoversExactlyTheSemanticPairsOnAlignedAndAdversarialShapes) {
  std::vector<Config> cases = {
      da_test::Chosen({2048, 4096, 8192, 16384, 32768}, {1, 2, 4, 8, 16}, 2300, 2, 64),
      da_test::Chosen({512, 1024}, {1, 2}, 3000, 3, 64),
      da_test::Chosen({1024, 2048}, {2, 8}, 2100, 2, 64),
      da_test::Chosen({700, 1400}, {5, 7}, 1500, 2, 64),     // lcm 35, unaligned
      da_test::Chosen({990, 1980}, {9, 11}, 2000, 2, 64),    // lcm 99 > 64: L = 1
      da_test::Chosen({96, 200}, {3, 5}, 1111, 2, 64),
  };
  Config hg = da_test::Chosen({2048, 4096, 8192, 16384, 32768}, {1, 2, 4, 8, 16}, 2100, 5, 64);
  hg.mode = DA_MODE_HEAD_GROUP;
  cases.push_back(hg);
  Config gqa = da_test::Chosen({512, 1024}, {1, 2}, 1900, 4, 64);
  gqa.h_kv = 2;
  cases.push_back(gqa);
  for (Config c : cases) {
    for (int causal = 0; causal <= 1; causal++) {
      c.causal = causal;
      CheckGeometry(c);
      if (HasFailure()) return;
    }
  }
}

// The per-head tables in KernelArgs (what a CTA reads instead of recomputing the
// lcm and gcd over its patterns) equal the computed geometry for every head set,
// including head sets past the tables' kGeoSlots entries (computed in the CTA),
// in both modes, with GQA groups whose query heads use different patterns.
TEST(CudaGeometry, HeadTablesMatchTheComputedGeometry) {
  const int heads = 3 * (da_cuda::kGeoSlots + 3);  // kv heads past the slots too
  for (int mode = 0; mode < 2; mode++) {
    for (int group : {1, 3}) {
      Config c = da_test::Chosen({96, 200, 2048, 4096, 700}, {3, 5, 2, 8, 7}, 64, heads, 64);
      c.mode = mode ? DA_MODE_HEAD_GROUP : DA_MODE_LONGNET;
      c.h_kv = heads / group;
      da_attn_plan plan;
      da_cuda::KernelArgs a;
      ASSERT_TRUE(PlanAndArgs(c, &plan, &a));
      for (int rows : {da_cuda::kBwdRows, da_cuda::kFwdRows, da_cuda::kFwdWideRows}) {
        for (int kv_side = 0; kv_side <= 1; kv_side++) {
          const int sets = kv_side ? plan.h_kv : plan.h, g = kv_side ? group : 1;
          for (int s = 0; s < sets; s++) {
            const da_cuda::RowGeometry want = da_cuda::row_geometry(a, s * g, g, rows);
            const da_cuda::RowGeometry got = da_cuda::cta_geometry(a, s * g, g, rows);
            ASSERT_TRUE(want.L == got.L && want.G == got.G)
                << "head set " << s << " (" << g << " heads, rows " << rows << ", mode " << mode
                << "): L " << got.L << " G " << got.G << " instead of " << want.L << " " << want.G;
          }
        }
      }
    }
  }
}

// Where the d = 64 Hopper forward takes kFwdWideRows-row CTAs: never where they
// would straddle a pattern's segments, only where rounding a block's rows up
// costs at most 4% more than kFwdRows-row CTAs.
TEST(CudaGeometry, WideForwardRowsOnlyWhereTheyPay) {
  auto wide = [](std::vector<int> w, std::vector<int> r, da_attention_mode mode, int64_t n) {
    Config c = da_test::Chosen(w, r, n, 16, 64);
    c.mode = mode;
    da_attn_plan plan;
    da_cuda::KernelArgs a;
    if (!PlanAndArgs(c, &plan, &a)) return false;
    a.n_max = static_cast<int>(n);
    return da_cuda::forward_rows_wide(a);
  };
  const std::vector<int> w = {2048, 4096, 8192, 16384, 32768}, r = {1, 2, 4, 8, 16};
  // Head groups of one pattern each: 2048 own rows a segment, 2112 with 192-row CTAs.
  EXPECT_TRUE(wide(w, r, DA_MODE_HEAD_GROUP, 131072));
  // The LongNet mixture: 128 own rows a segment at stride 16; a 192-row CTA straddles.
  EXPECT_FALSE(wide(w, r, DA_MODE_LONGNET, 131072));
  // A head group with 128 own rows a segment straddles too.
  EXPECT_FALSE(wide({2048, 2048}, {1, 16}, DA_MODE_HEAD_GROUP, 65536));
  // One segment length, stride 2: 1024 rows a block become 1152 (12.5% more).
  EXPECT_FALSE(wide({2048, 2048}, {1, 2}, DA_MODE_LONGNET, 65536));
  // ... 4096 rows a block become 4224 (3.1% more).
  EXPECT_TRUE(wide({8192, 8192}, {1, 2}, DA_MODE_LONGNET, 65536));
  // Sequences shorter than the block: 300 rows become 384 against 384.
  EXPECT_TRUE(wide({8192}, {1}, DA_MODE_LONGNET, 300));
}

// The tensor-map cache's key holds everything the encoder reads: changing any
// one of them gives another key, the same inputs the same key.
// Head-group mode with segment lengths that are multiples of the dilations: a
// head of dilation r gets CTAs for one residue mod r only (its offset's), and a
// pattern whose w is not a multiple of r keeps every residue (its selected
// positions' residues move from segment to segment). CoversExactly... checks
// that the rows left out are never selected.
TEST(CudaGeometry, CtasOnlyForSelectableResidues) {
  Config c;
  c.w = {64, 128, 256};
  c.r = {1, 2, 4};
  c.mode = DA_MODE_HEAD_GROUP;
  c.h = 6;
  c.seqlen = 512;
  for (da_offset_policy offset : {DA_OFFSET_HEAD, DA_OFFSET_GROUP, DA_OFFSET_BLOCK}) {
    c.offset = offset;
    da_attn_plan plan;
    static da_cuda::KernelArgs a;  // kilobytes
    if (!PlanAndArgs(c, &plan, &a)) return;
    for (int j = 0; j < plan.h; j++) {
      const int r = plan.r[da_attn_head_group(j, plan.h, plan.num_patterns)];
      const da_cuda::RowGeometry g = da_cuda::cta_geometry(a, j, 1, da_cuda::kFwdRows);
      EXPECT_EQ(g.L, r) << "head " << j;
      EXPECT_EQ(g.count, 1) << "head " << j << " (dilation " << r << ")";
      const int o = da_attn_head_offset(plan.offset, j, plan.h, plan.num_patterns, r);
      EXPECT_EQ(g.sel, 1ULL << (o % r)) << "head " << j;
    }
  }
  c.w = {64, 96};  // 96 is not a multiple of its dilation 5
  c.r = {1, 5};
  c.h = 2;
  c.offset = DA_OFFSET_GROUP;
  da_attn_plan plan;
  static da_cuda::KernelArgs a;
  if (!PlanAndArgs(c, &plan, &a)) return;
  const da_cuda::RowGeometry g = da_cuda::cta_geometry(a, 1, 1, da_cuda::kFwdRows);
  EXPECT_EQ(g.L, 5);
  EXPECT_EQ(g.count, 5) << "w = 96, r = 5: every residue";
}

// The persistent forward's CTAs take items blockIdx.x, blockIdx.x + gridDim.x,
// ... < items; item_place must map those onto every (head, sequence, tile)
// exactly once, for any grid, with the head slowest and the tile fastest.
TEST(CudaGeometry, WorkItemsVisitEveryCtaOnce) {
  struct Launch {
    int tiles_per_seq, batch, heads;
  };
  const Launch launches[] = {{1, 1, 1}, {7, 3, 5}, {64, 1, 16}, {33, 4, 3}};
  for (const Launch& l : launches) {
    const long long items = static_cast<long long>(l.tiles_per_seq) * l.batch * l.heads;
    for (long long grid : {1LL, 2LL, 7LL, 132LL, items}) {
      std::vector<int> seen(static_cast<size_t>(items), 0);
      for (long long cta = 0; cta < grid && cta < items; cta++) {
        for (long long item = cta; item < items; item += grid) {
          const da_cuda::ItemPlace p = da_cuda::item_place(item, l.tiles_per_seq, l.batch);
          ASSERT_TRUE(p.head >= 0 && p.head < l.heads && p.seq >= 0 && p.seq < l.batch &&
                      p.tile >= 0 && p.tile < l.tiles_per_seq)
              << "item " << item;
          seen[(static_cast<size_t>(p.head) * l.batch + p.seq) * l.tiles_per_seq + p.tile]++;
        }
      }
      for (long long x = 0; x < items; x++)
        ASSERT_EQ(seen[static_cast<size_t>(x)], 1)
            << "(head, sequence, tile) number " << x << " with a grid of " << grid;
    }
  }
}

TEST(TileMapsCache, KeysDifferInEverythingTheEncoderReads) {
  const Config c = da_test::Chosen({64, 128, 256}, {1, 2, 4}, 1024, 4, 64);
  da_attn_plan plan;
  da_cuda::KernelArgs a;
  ASSERT_TRUE(PlanAndArgs(c, &plan, &a));
  int t0 = 0, t1 = 0, other = 0;
  auto key = [&](const da_cuda::KernelArgs& args, const void* p0, const void* p1, int dtype,
                 int heads, int d, int box) {
    return da_cuda::tile_maps_key(args, p0, p1, dtype, heads, d, box);
  };
  auto same = [](const da_cuda::TileMapsKey& x, const da_cuda::TileMapsKey& y) {
    return memcmp(&x, &y, sizeof x) == 0;
  };
  const da_cuda::TileMapsKey base = key(a, &t0, &t1, 9, 4, 64, 128);
  EXPECT_TRUE(same(base, key(a, &t0, &t1, 9, 4, 64, 128)));
  EXPECT_FALSE(same(base, key(a, &other, &t1, 9, 4, 64, 128)));
  EXPECT_FALSE(same(base, key(a, &t0, &other, 9, 4, 64, 128)));
  EXPECT_FALSE(same(base, key(a, &t1, &t0, 9, 4, 64, 128)));
  EXPECT_FALSE(same(base, key(a, &t0, &t1, 10, 4, 64, 128)));
  EXPECT_FALSE(same(base, key(a, &t0, &t1, 9, 2, 64, 128)));
  EXPECT_FALSE(same(base, key(a, &t0, &t1, 9, 4, 128, 128)));
  EXPECT_FALSE(same(base, key(a, &t0, &t1, 9, 4, 64, 64)));
  da_cuda::KernelArgs b = a;
  b.tokens += 1;
  EXPECT_FALSE(same(base, key(b, &t0, &t1, 9, 4, 64, 128)));
  b = a;
  b.r[2] = 8;
  EXPECT_FALSE(same(base, key(b, &t0, &t1, 9, 4, 64, 128)));
  b = a;
  b.num_patterns = 2;
  EXPECT_FALSE(same(base, key(b, &t0, &t1, 9, 4, 64, 128)));
  b = a;
  b.w[0] = 32;  // segment lengths are not in a map
  EXPECT_TRUE(same(base, key(b, &t0, &t1, 9, 4, 64, 128)));
}

// Hits return the inserted maps; past kEntries keys the oldest is dropped first.
TEST(TileMapsCache, FindsWhatWasInsertedAndDropsTheOldest) {
  const Config c = da_test::Chosen({64, 128}, {1, 2}, 512, 2, 64);
  da_attn_plan plan;
  da_cuda::KernelArgs a;
  ASSERT_TRUE(PlanAndArgs(c, &plan, &a));
  constexpr int kKeys = da_cuda::TileMapsCache::kEntries + 1;
  static int tensors[kKeys];
  auto key = [&](int i) {
    return da_cuda::tile_maps_key(a, &tensors[i], &tensors[0], 9, 2, 64, 64);
  };
  static da_cuda::TileMapsCache cache;  // a TileMaps is kilobytes: not on the stack
  static da_cuda::TileMaps maps;
  EXPECT_FALSE(cache.Find(key(0), &maps));
  for (int i = 0; i < kKeys; i++) {
    memset(&maps, 0, sizeof maps);
    maps.count = 100 + i;
    maps.rows[0] = i;
    cache.Insert(key(i), maps);
    for (int k = 0; k <= i; k++) {
      const bool kept = i - k < da_cuda::TileMapsCache::kEntries;
      memset(&maps, 0, sizeof maps);
      ASSERT_EQ(cache.Find(key(k), &maps), kept) << "key " << k << " after " << i + 1 << " inserts";
      if (kept) {
        EXPECT_TRUE(maps.count == 100 + k && maps.rows[0] == k) << "key " << k;
      }
    }
  }
}

}  // namespace
