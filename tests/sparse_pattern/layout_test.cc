// Layout generation against an independent model of the definitions in
// da_pattern.h / docs/sparse_pattern.md, over random configs: the BSR form,
// causality, one block per row at least, the global indices, each level's domain
// and exact error-diffused quota (hence "within one block of the requested fraction
// per row", and per rank in total), the local level's structure-first nearest-first
// choice, the inter-node links' even stride, and determinism across runs, thread
// counts and simulated ranks building their own rows.
#include <omp.h>
#include <string.h>

#include <algorithm>
#include <set>
#include <tuple>

#include "tests/sparse_pattern/pattern_test_util.h"

namespace {

using da_pattern_test::Chance;
using da_pattern_test::Config;
using da_pattern_test::Create;
using da_pattern_test::GetRow;
using da_pattern_test::Layout;
using da_pattern_test::RandomConfig;
using da_pattern_test::Row;
using da_pattern_test::ScaledCount;
using da_pattern_test::UniformInt;
using da_pattern_test::View;

// The definitions, written plainly (linear scans, token enumeration): no code shared
// with the library.
struct Model {
  const da_pattern_config& c;
  int64_t n, B, nb, W, Lw, g;
  std::vector<char> global;
  std::vector<int64_t> shard;  // W + 1 boundaries

  explicit Model(const da_pattern_config& cfg) : c(cfg) {
    n = c.seqlen;
    B = c.block_size;
    nb = (n + B - 1) / B;
    W = c.world_size;
    Lw = c.local_world_size;
    g = static_cast<int64_t>(floor(c.global_density * static_cast<double>(nb) + 0.5));
    global.assign(nb, 0);
    for (int64_t k = 0; k < g; k++) global[k * nb / g] = 1;
    for (int64_t p = 0; p <= W; p++) shard.push_back(p * nb / W);
  }
  int64_t Owner(int64_t block) const {
    for (int64_t p = 0; p < W; p++)
      if (block < shard[p + 1]) return p;
    return -1;
  }
  int64_t Hi(int64_t i) const { return c.causal ? i + 1 : nb; }
  int64_t NodeBegin(int64_t rank) const { return shard[rank / Lw * Lw]; }
  int64_t NodeEnd(int64_t rank) const { return shard[std::min(W, (rank / Lw + 1) * Lw)]; }
  double Scale(int64_t rank) const {
    return c.rank_density_scale ? c.rank_density_scale[rank] : 1.0;
  }
  double LocalDensity(int64_t rank) const { return std::min(1.0, c.local_density * Scale(rank)); }
  double InterDensity(int64_t rank) const {
    return std::min(1.0, c.inter_node_density * Scale(rank));
  }

  std::vector<int64_t> LocalDomain(int64_t i) const {
    std::vector<int64_t> d;
    int64_t p = Owner(i);
    for (int64_t j = shard[p]; j < std::min(shard[p + 1], Hi(i)); j++)
      if (!global[j]) d.push_back(j);
    return d;
  }
  // Tier 0: other ranks of the same node; tier 1: other nodes.
  std::vector<int64_t> RemoteTier(int64_t i, int tier) const {
    std::vector<int64_t> d;
    int64_t p = Owner(i);
    for (int64_t j = 0; j < Hi(i); j++) {
      if (global[j] || (j >= shard[p] && j < shard[p + 1])) continue;
      bool same_node = j >= NodeBegin(p) && j < NodeEnd(p);
      if (same_node == (tier == 0)) d.push_back(j);
    }
    return d;
  }
  std::vector<int64_t> InterDomain(int64_t i) const {
    std::vector<int64_t> d = RemoteTier(i, 0);
    if (c.type != DA_PATTERN_NODE_LOCAL) {
      std::vector<int64_t> far = RemoteTier(i, 1);
      d.insert(d.end(), far.begin(), far.end());
      std::sort(d.begin(), d.end());
    }
    return d;
  }

  static int HeadGroup(int j, int h, int k) {
    int base = h / k, extra = h % k, big = extra * (base + 1);
    return j < big ? j / (base + 1) : extra + (j - big) / base;
  }
  bool Uses(int p, int j) const {
    return c.mode == DA_MODE_LONGNET || HeadGroup(j, c.num_heads, c.num_patterns) == p;
  }
  int64_t Offset(int p, int j) const {
    int64_t r = c.dilation_rates[p];
    da_offset_policy policy = c.offset_policy;
    if (policy == DA_OFFSET_DEFAULT)
      policy = c.mode == DA_MODE_LONGNET ? DA_OFFSET_HEAD : DA_OFFSET_GROUP;
    if (policy == DA_OFFSET_GROUP) return HeadGroup(j, c.num_heads, c.num_patterns) % r;
    if (policy == DA_OFFSET_BLOCK) return j / ((c.num_heads + r - 1) / r);
    return j % r;
  }

  // Window and dilated-pattern blocks of row i, head j, within the local domain.
  std::set<int64_t> Structure(int j, int64_t i) const {
    std::set<int64_t> s;
    const int64_t p_owner = Owner(i);
    const int64_t lo = shard[p_owner], hi = std::min(shard[p_owner + 1], Hi(i));
    auto add = [&](int64_t b) {
      if (b >= lo && b < hi && !global[b]) s.insert(b);
    };
    for (int64_t b = i - c.local_window_blocks; b <= i + c.local_window_blocks; b++) add(b);
    const int64_t q0 = i * B, q1 = std::min((i + 1) * B, n);
    for (int p = 0; p < c.num_patterns; p++) {
      if (!Uses(p, j)) continue;
      const int64_t w = c.segment_lengths[p], r = c.dilation_rates[p], o = Offset(p, j);
      for (int64_t m = q0 / w; m <= (q1 - 1) / w; m++) {
        const int64_t a = m * w, end = std::min(a + w, n);
        int64_t tq_max = -1;
        for (int64_t t = std::max(q0, a); t < std::min(q1, end); t++)
          if ((t - a) % r == o) tq_max = t;
        if (tq_max < 0) continue;
        for (int64_t t = a + o; t < end && (!c.causal || t <= tq_max); t += r) add(t / B);
      }
    }
    return s;
  }

  // The first q local candidates: structure first, then by distance, left first.
  std::vector<int64_t> ExpectedLocal(int j, int64_t i, int64_t q) const {
    std::set<int64_t> s = Structure(j, i);
    std::vector<std::tuple<int, int64_t, int, int64_t>> ranked;
    for (int64_t b : LocalDomain(i))
      ranked.emplace_back(s.count(b) ? 0 : 1, std::llabs(i - b), b > i ? 1 : 0, b);
    std::sort(ranked.begin(), ranked.end());
    std::vector<int64_t> out;
    for (int64_t x = 0; x < q && x < (int64_t)ranked.size(); x++)
      out.push_back(std::get<3>(ranked[x]));
    std::sort(out.begin(), out.end());
    return out;
  }
};

int64_t RoundCount(double density, int64_t count) {
  return static_cast<int64_t>(floor(density * static_cast<double>(count) + 0.5));
}

// Positions of `picked` in the sorted candidate list must step by floor(M/x) or
// ceil(M/x), the wrap-around included: an even stride with some phase.
::testing::AssertionResult EvenlyStrided(const std::vector<int64_t>& candidates,
                                         const std::vector<int64_t>& picked) {
  const int64_t m = candidates.size(), x = picked.size();
  if (x == 0) return ::testing::AssertionSuccess();
  std::vector<int64_t> pos;
  for (int64_t b : picked) {
    auto it = std::lower_bound(candidates.begin(), candidates.end(), b);
    if (it == candidates.end() || *it != b)
      return ::testing::AssertionFailure() << "block " << b << " is not a candidate";
    pos.push_back(it - candidates.begin());
  }
  const int64_t lo = m / x, hi = (m + x - 1) / x;
  for (int64_t k = 0; k < x; k++) {
    int64_t gap = k + 1 < x ? pos[k + 1] - pos[k] : pos[0] + m - pos[x - 1];
    if (gap < lo || gap > hi)
      return ::testing::AssertionFailure()
             << "gap " << gap << " after position " << pos[k] << " is not in [" << lo << ", " << hi
             << "] (M=" << m << ", x=" << x << ")";
  }
  return ::testing::AssertionSuccess();
}

// Every property of one layout against the model. Returns the number of failures
// (so a bad config stops after the first few messages).
int CheckLayout(Config& cfg, const da_pattern_layout* layout) {
  const da_pattern_config& c = cfg.c;
  Model model(c);
  const da_pattern_bsr b = View(layout);
  int failures = 0;
  auto fail = [&](const std::string& what) {
    if (failures++ < 3) ADD_FAILURE() << what << "\n" << cfg.Describe();
  };
  if (b.num_blocks != model.nb || b.num_heads != c.num_heads || b.causal != (c.causal != 0) ||
      b.seqlen != c.seqlen || b.block_size != c.block_size)
    fail("BSR header does not match the config");
  const int64_t row_end = c.row_end == 0 ? model.nb : c.row_end;
  if (b.row_begin != c.row_begin || b.row_end != row_end) fail("BSR rows do not match");
  const int64_t rows = b.row_end - b.row_begin;
  if (b.row_offsets[0] != 0 || b.row_offsets[(size_t)c.num_heads * (rows + 1) - 1] != b.nnz)
    fail("row offsets do not span [0, nnz]");

  // Quotas by the documented error diffusion, restarted at each shard's first row.
  std::vector<int64_t> q_local(model.nb), q_inter(model.nb);
  std::vector<char> forced(model.nb, 0);
  for (int64_t p = 0; p < model.W; p++) {
    int64_t sum_l = 0, sum_x = 0;
    for (int64_t i = model.shard[p]; i < model.shard[p + 1]; i++) {
      if (model.global[i]) continue;
      int64_t dl = model.LocalDomain(i).size(), dx = model.InterDomain(i).size();
      double ld = model.LocalDensity(p), xd = model.InterDensity(p);
      q_local[i] = RoundCount(ld, sum_l + dl) - RoundCount(ld, sum_l);
      q_inter[i] = RoundCount(xd, sum_x + dx) - RoundCount(xd, sum_x);
      sum_l += dl;
      sum_x += dx;
      int64_t globals = 0;
      for (int64_t j = 0; j < model.Hi(i); j++) globals += model.global[j];
      if (globals + q_local[i] + q_inter[i] == 0) {
        q_local[i] = 1;
        forced[i] = 1;
      }
    }
  }

  int64_t kept[DA_PATTERN_NUM_LEVELS] = {0, 0, 0};
  for (int h = 0; h < c.num_heads && failures == 0; h++) {
    for (int64_t i = b.row_begin; i < b.row_end && failures == 0; i++) {
      const Row row = GetRow(b, h, i);
      const std::string where = "head " + std::to_string(h) + " row " + std::to_string(i);
      const int64_t hi = model.Hi(i);
      if (row.cols.empty()) fail(where + " keeps no block");
      for (size_t x = 0; x < row.cols.size(); x++) {
        if (row.cols[x] < 0 || row.cols[x] >= hi)
          fail(where + ": column " + std::to_string(row.cols[x]) + " is not allowed");
        if (x > 0 && row.cols[x] <= row.cols[x - 1]) fail(where + ": columns not increasing");
        if (row.levels[x] >= DA_PATTERN_NUM_LEVELS)
          fail(where + ": bad level");
        else
          kept[row.levels[x]]++;
      }
      if (failures) break;
      if (model.global[i]) {
        bool full = (int64_t)row.cols.size() == hi;
        for (size_t x = 0; x < row.cols.size(); x++)
          full = full && row.levels[x] == DA_PATTERN_LEVEL_GLOBAL;
        if (!full) fail(where + " is a global row but does not keep every allowed block as global");
        continue;
      }
      std::vector<int64_t> glob, local, inter;
      for (size_t x = 0; x < row.cols.size(); x++) {
        if (row.levels[x] == DA_PATTERN_LEVEL_GLOBAL) glob.push_back(row.cols[x]);
        if (row.levels[x] == DA_PATTERN_LEVEL_LOCAL) local.push_back(row.cols[x]);
        if (row.levels[x] == DA_PATTERN_LEVEL_INTER_NODE) inter.push_back(row.cols[x]);
      }
      std::vector<int64_t> want_glob;
      for (int64_t j = 0; j < hi; j++)
        if (model.global[j]) want_glob.push_back(j);
      if (glob != want_glob) fail(where + ": global columns are not the allowed global indices");

      // Local: exact quota, within one block of density x domain, the model's choice.
      const int64_t owner = model.Owner(i);
      const std::vector<int64_t> ldom = model.LocalDomain(i);
      const double lwant = model.LocalDensity(owner) * ldom.size();
      if ((int64_t)local.size() != q_local[i])
        fail(where + ": local keeps " + std::to_string(local.size()) + ", quota " +
             std::to_string(q_local[i]));
      if (fabs(local.size() - lwant) > 1.0 + 1e-9)
        fail(where + ": local keeps " + std::to_string(local.size()) + " of " +
             std::to_string(ldom.size()) + ", not within one block of " + std::to_string(lwant));
      if (local != model.ExpectedLocal(h, i, local.size()))
        fail(where + ": local blocks are not the structure-first, nearest-first choice");

      // Inter-node: exact quota, within one block, in the domain, evenly strided.
      const std::vector<int64_t> xdom = model.InterDomain(i);
      const double xwant = model.InterDensity(owner) * xdom.size();
      if ((int64_t)inter.size() != q_inter[i])
        fail(where + ": inter-node keeps " + std::to_string(inter.size()) + ", quota " +
             std::to_string(q_inter[i]));
      if (fabs(inter.size() - xwant) > 1.0 + 1e-9)
        fail(where + ": inter-node count not within one block of " + std::to_string(xwant));
      if (c.type == DA_PATTERN_BANDWIDTH_AWARE) {
        std::vector<int64_t> near = model.RemoteTier(i, 0), far = model.RemoteTier(i, 1);
        std::vector<int64_t> in_near, in_far;
        for (int64_t j : inter)
          (std::binary_search(near.begin(), near.end(), j) ? in_near : in_far).push_back(j);
        if ((int64_t)in_near.size() != std::min<int64_t>(inter.size(), near.size()))
          fail(where + ": bandwidth-aware links do not fill the same node first");
        EXPECT_TRUE(EvenlyStrided(near, in_near)) << where << "\n" << cfg.Describe();
        EXPECT_TRUE(EvenlyStrided(far, in_far)) << where << "\n" << cfg.Describe();
      } else {
        ::testing::AssertionResult r = EvenlyStrided(xdom, inter);
        if (!r) fail(where + ": inter-node links: " + r.message());
      }
    }
  }
  // Per rank, a level's total is within half a block of density x domain (plus the
  // forced diagonals), for ranks whose rows the layout holds entirely.
  for (int64_t p = 0; p < model.W && failures == 0; p++) {
    if (model.shard[p] < b.row_begin || model.shard[p + 1] > b.row_end) continue;
    int64_t kept_l = 0, dom_l = 0, kept_x = 0, dom_x = 0, n_forced = 0;
    for (int64_t i = model.shard[p]; i < model.shard[p + 1]; i++) {
      if (model.global[i]) continue;
      kept_l += q_local[i];
      kept_x += q_inter[i];
      n_forced += forced[i];
      dom_l += model.LocalDomain(i).size();
      dom_x += model.InterDomain(i).size();
    }
    if (fabs(kept_l - n_forced - model.LocalDensity(p) * dom_l) > 0.5 + 1e-9 ||
        fabs(kept_x - model.InterDensity(p) * dom_x) > 0.5 + 1e-9)
      fail("rank " + std::to_string(p) + ": level totals are not within half a block");
  }
  // Stats agree with the arrays, and da_pattern_count with the stats.
  da_pattern_stats st, counted;
  EXPECT_EQ(da_pattern_layout_stats(layout, &st), DA_STATUS_SUCCESS);
  EXPECT_EQ(da_pattern_count(cfg.get(), &counted), DA_STATUS_SUCCESS) << da_last_error();
  for (int l = 0; l < DA_PATTERN_NUM_LEVELS; l++) {
    if (st.kept[l] != kept[l]) fail("stats.kept[" + std::to_string(l) + "] disagrees");
    if (counted.kept[l] != st.kept[l] || counted.domain[l] != st.domain[l])
      fail("da_pattern_count disagrees with the layout's stats");
  }
  if (st.nnz != b.nnz || counted.nnz != st.nnz || counted.bytes != st.bytes ||
      counted.allowed != st.allowed || st.global_indices != model.g)
    fail("stats totals disagree");
  if (st.min_row_blocks < 1) fail("stats.min_row_blocks < 1");
  return failures;
}

TEST(LayoutTest, RandomConfigsMatchTheModel) {
  std::mt19937_64 rng(20261124);
  const int iterations = ScaledCount(800);
  for (int it = 0; it < iterations; it++) {
    Config cfg = RandomConfig(rng, it % 4 == 0 ? 200 : 60);
    if (Chance(rng, 0.25)) {  // a sub-range of rows, as a rank would ask
      int64_t nb = (cfg.c.seqlen + cfg.c.block_size - 1) / cfg.c.block_size;
      cfg.c.row_begin = UniformInt(rng, 0, (int)nb - 1);
      cfg.c.row_end = UniformInt(rng, (int)cfg.c.row_begin + 1, (int)nb);
    }
    Layout layout = Create(cfg);
    ASSERT_NE(layout, nullptr);
    if (CheckLayout(cfg, layout.get()) > 0) return;
  }
}

TEST(LayoutTest, DefaultDensitiesAtScale) {
  // The defaults on 8 ranks of 2 nodes, 2048 blocks, with LongNet patterns.
  Config cfg;
  cfg.c.seqlen = 2048 * 16 - 5;
  cfg.c.block_size = 16;
  cfg.c.num_heads = 2;
  cfg.c.world_size = 8;
  cfg.c.local_world_size = 4;
  const int w[] = {256, 512, 1024}, r[] = {1, 2, 32};
  cfg.c.num_patterns = 3;
  for (int p = 0; p < 3; p++) {
    cfg.c.segment_lengths[p] = w[p];
    cfg.c.dilation_rates[p] = r[p];
  }
  for (int causal = 0; causal < 2; causal++) {
    cfg.c.causal = causal;
    Layout layout = Create(cfg);
    ASSERT_NE(layout, nullptr);
    // The model is quadratic per row; check a spread of rows only.
    da_pattern_stats st;
    ASSERT_EQ(da_pattern_layout_stats(layout.get(), &st), DA_STATUS_SUCCESS);
    EXPECT_NEAR((double)st.kept[DA_PATTERN_LEVEL_LOCAL] / st.domain[DA_PATTERN_LEVEL_LOCAL], 0.4,
                1e-3);
    EXPECT_NEAR(
        (double)st.kept[DA_PATTERN_LEVEL_INTER_NODE] / st.domain[DA_PATTERN_LEVEL_INTER_NODE], 0.05,
        1e-3);
    EXPECT_EQ(st.global_indices, 205);  // round(0.1 * 2048)
    EXPECT_EQ(st.forced_rows, 0);
    EXPECT_GE(st.min_row_blocks, 1);
  }
}

// Bit-identical arrays.
::testing::AssertionResult SameLayout(const da_pattern_layout* a, const da_pattern_layout* b) {
  da_pattern_bsr x = View(a), y = View(b);
  const int64_t rows = x.row_end - x.row_begin;
  if (x.nnz != y.nnz || x.row_begin != y.row_begin || x.row_end != y.row_end)
    return ::testing::AssertionFailure() << "shapes differ";
  if (memcmp(x.row_offsets, y.row_offsets, sizeof(int64_t) * x.num_heads * (rows + 1)) != 0 ||
      memcmp(x.col_indices, y.col_indices, sizeof(int32_t) * x.nnz) != 0 ||
      memcmp(x.levels, y.levels, x.nnz) != 0)
    return ::testing::AssertionFailure() << "arrays differ";
  return ::testing::AssertionSuccess();
}

TEST(LayoutTest, DeterministicAcrossRunsAndThreads) {
  std::mt19937_64 rng(7);
  const int saved = omp_get_max_threads();
  for (int it = 0; it < ScaledCount(60); it++) {
    Config cfg = RandomConfig(rng, 150);
    omp_set_num_threads(1);
    Layout one = Create(cfg);
    omp_set_num_threads(3);
    Layout three = Create(cfg);
    Layout again = Create(cfg);
    ASSERT_TRUE(SameLayout(one.get(), three.get())) << cfg.Describe();
    ASSERT_TRUE(SameLayout(three.get(), again.get())) << cfg.Describe();
  }
  // Layouts big enough to be built by several threads (over 2^18 blocks).
  for (int type = 0; type < 4; type++) {
    Config cfg;
    cfg.c.seqlen = 3000 * 8 + 3;
    cfg.c.block_size = 8;
    cfg.c.num_heads = 3;
    cfg.c.causal = type % 2;
    cfg.c.type = static_cast<da_pattern_type>(type);
    cfg.c.world_size = 8;
    cfg.c.local_world_size = 4;
    cfg.c.num_patterns = 2;
    cfg.c.segment_lengths[0] = 512;
    cfg.c.dilation_rates[0] = 4;
    cfg.c.segment_lengths[1] = 4096;
    cfg.c.dilation_rates[1] = 16;
    omp_set_num_threads(1);
    Layout one = Create(cfg);
    omp_set_num_threads(3);
    Layout three = Create(cfg);
    da_pattern_stats st;
    ASSERT_EQ(da_pattern_layout_stats(one.get(), &st), DA_STATUS_SUCCESS);
    ASSERT_GT(st.nnz, 1 << 18);
    ASSERT_TRUE(SameLayout(one.get(), three.get())) << cfg.Describe();
    for (int rank = 0; rank < 8; rank++) {  // and each rank's own rows
      Config mine = cfg;
      ASSERT_EQ(da_pattern_shard_rows(mine.get(), rank, &mine.c.row_begin, &mine.c.row_end),
                DA_STATUS_SUCCESS);
      Layout part = Create(mine);
      const da_pattern_bsr wb = View(three.get()), pb = View(part.get());
      for (int h = 0; h < 3; h++)
        for (int64_t i = mine.c.row_begin; i < mine.c.row_end; i += 7) {
          ASSERT_EQ(GetRow(wb, h, i).cols, GetRow(pb, h, i).cols) << "rank " << rank;
          ASSERT_EQ(GetRow(wb, h, i).levels, GetRow(pb, h, i).levels) << "rank " << rank;
        }
    }
  }
  omp_set_num_threads(saved);
}

// Every simulated rank builds only its own rows; together they are the full layout,
// bit for bit, row by row.
TEST(LayoutTest, RanksBuildSlicesOfTheSameLayout) {
  std::mt19937_64 rng(11);
  for (int it = 0; it < ScaledCount(80); it++) {
    Config full = RandomConfig(rng, 150);
    Layout whole = Create(full);
    ASSERT_NE(whole, nullptr);
    const da_pattern_bsr wb = View(whole.get());
    for (int rank = 0; rank < full.c.world_size; rank++) {
      Config mine = full;
      int64_t begin = -1, end = -1;
      ASSERT_EQ(da_pattern_shard_rows(mine.get(), rank, &begin, &end), DA_STATUS_SUCCESS);
      if (begin == end) continue;  // an empty shard (more ranks than blocks)
      mine.c.row_begin = begin;
      mine.c.row_end = end;
      Layout part = Create(mine);
      ASSERT_NE(part, nullptr);
      const da_pattern_bsr pb = View(part.get());
      for (int h = 0; h < full.c.num_heads; h++)
        for (int64_t i = begin; i < end; i++) {
          Row a = GetRow(wb, h, i), b = GetRow(pb, h, i);
          ASSERT_EQ(a.cols, b.cols) << "rank " << rank << " head " << h << " row " << i << "\n"
                                    << full.Describe();
          ASSERT_EQ(a.levels, b.levels);
        }
    }
  }
}

TEST(LayoutTest, SeedMovesOnlyTheInterNodeLinks) {
  Config cfg;
  cfg.c.seqlen = 4096;
  cfg.c.block_size = 16;
  cfg.c.num_heads = 2;
  cfg.c.world_size = 4;
  cfg.c.inter_node_density = 0.2;
  cfg.c.seed = 1;
  Layout a = Create(cfg);
  cfg.c.seed = 2;
  Layout b = Create(cfg);
  const da_pattern_bsr x = View(a.get()), y = View(b.get());
  ASSERT_EQ(x.nnz, y.nnz);
  int64_t rows_differ = 0;
  for (int h = 0; h < 2; h++)
    for (int64_t i = 0; i < x.num_blocks; i++) {
      Row rx = GetRow(x, h, i), ry = GetRow(y, h, i);
      std::vector<int32_t> kx[3], ky[3];
      for (size_t k = 0; k < rx.cols.size(); k++) kx[rx.levels[k]].push_back(rx.cols[k]);
      for (size_t k = 0; k < ry.cols.size(); k++) ky[ry.levels[k]].push_back(ry.cols[k]);
      ASSERT_EQ(kx[DA_PATTERN_LEVEL_LOCAL], ky[DA_PATTERN_LEVEL_LOCAL]);
      ASSERT_EQ(kx[DA_PATTERN_LEVEL_GLOBAL], ky[DA_PATTERN_LEVEL_GLOBAL]);
      ASSERT_EQ(kx[DA_PATTERN_LEVEL_INTER_NODE].size(), ky[DA_PATTERN_LEVEL_INTER_NODE].size());
      rows_differ += kx[DA_PATTERN_LEVEL_INTER_NODE] != ky[DA_PATTERN_LEVEL_INTER_NODE];
    }
  EXPECT_GT(rows_differ, x.num_blocks / 2);
  // Heads get different phases too.
  Row h0 = GetRow(x, 0, 200), h1 = GetRow(x, 1, 200);
  EXPECT_NE(h0.cols, h1.cols);
}

TEST(LayoutTest, NodeLocalNeverCrossesANode) {
  Config cfg;
  cfg.c.seqlen = 3000;
  cfg.c.block_size = 8;
  cfg.c.num_heads = 1;
  cfg.c.world_size = 6;
  cfg.c.local_world_size = 2;
  cfg.c.type = DA_PATTERN_NODE_LOCAL;
  cfg.c.inter_node_density = 1.0;
  Layout layout = Create(cfg);
  const da_pattern_bsr b = View(layout.get());
  Model model(cfg.c);
  int64_t links = 0;
  for (int64_t i = 0; i < b.num_blocks; i++) {
    const int64_t owner = model.Owner(i);
    Row row = GetRow(b, 0, i);
    for (size_t x = 0; x < row.cols.size(); x++) {
      if (row.levels[x] != DA_PATTERN_LEVEL_INTER_NODE) continue;
      links++;
      EXPECT_EQ(model.Owner(row.cols[x]) / 2, owner / 2) << "row " << i;
    }
  }
  EXPECT_GT(links, 0);
}

TEST(LayoutTest, EveryRowKeepsABlockEvenAtZeroDensity) {
  Config cfg;
  cfg.c.seqlen = 1000;
  cfg.c.block_size = 4;
  cfg.c.num_heads = 3;
  cfg.c.local_density = 0.0;
  cfg.c.global_density = 0.0;
  cfg.c.inter_node_density = 0.0;
  cfg.c.world_size = 4;
  for (int causal = 0; causal < 2; causal++) {
    cfg.c.causal = causal;
    Layout layout = Create(cfg);
    da_pattern_stats st;
    ASSERT_EQ(da_pattern_layout_stats(layout.get(), &st), DA_STATUS_SUCCESS);
    EXPECT_EQ(st.nnz, 3 * 250);
    EXPECT_EQ(st.forced_rows, 3 * 250);
    const da_pattern_bsr b = View(layout.get());
    for (int64_t i = 0; i < 250; i++)
      EXPECT_EQ(GetRow(b, 1, i).cols, std::vector<int32_t>{(int32_t)i});
    ASSERT_EQ(CheckLayout(cfg, layout.get()), 0);
  }
}

TEST(LayoutTest, FullDensityKeepsEverythingAllowed) {
  Config cfg;
  cfg.c.seqlen = 777;
  cfg.c.block_size = 8;
  cfg.c.num_heads = 2;
  cfg.c.local_density = 1.0;
  cfg.c.inter_node_density = 1.0;
  cfg.c.world_size = 3;
  for (int causal = 0; causal < 2; causal++) {
    cfg.c.causal = causal;
    Layout layout = Create(cfg);
    da_pattern_stats st;
    ASSERT_EQ(da_pattern_layout_stats(layout.get(), &st), DA_STATUS_SUCCESS);
    EXPECT_EQ(st.nnz, st.allowed);
    EXPECT_DOUBLE_EQ(st.density, 1.0);
  }
}

// ------------------------------------------------------ caller-made layouts

struct Bsr {
  std::vector<int64_t> off;
  std::vector<int32_t> cols;
  std::vector<uint8_t> levels;
  da_pattern_bsr b;
  Bsr() {
    // 2 heads, 3 blocks of 4 tokens (n = 10), causal.
    // head 0: {0} {0,1} {2}; head 1: {0} {} {0,2}
    off = {0, 1, 3, 4, 4, 5, 5, 7};
    cols = {0, 0, 1, 2, 0, 0, 2};
    levels = {0, 1, 0, 2, 0, 1, 0};
    memset(&b, 0, sizeof b);
    b.seqlen = 10;
    b.block_size = 4;
    b.num_heads = 2;
    b.causal = 1;
    b.num_blocks = 3;
    b.row_begin = 0;
    b.row_end = 3;
    Point();
  }
  void Point() {
    b.row_offsets = off.data();
    b.col_indices = cols.data();
    b.levels = levels.data();
    b.nnz = cols.size();
  }
};

da_status FromBsr(const Bsr& x) {
  da_pattern_layout* l = nullptr;
  da_status st = da_pattern_layout_from_bsr(&x.b, &l);
  da_pattern_layout_release(l);
  return st;
}

TEST(FromBsrTest, AcceptsAValidLayoutAndCopiesIt) {
  Bsr x;
  da_pattern_layout* l = nullptr;
  ASSERT_EQ(da_pattern_layout_from_bsr(&x.b, &l), DA_STATUS_SUCCESS) << da_last_error();
  x.cols[0] = 99;  // the layout holds a copy
  da_pattern_bsr v = View(l);
  EXPECT_EQ(v.col_indices[0], 0);
  da_pattern_stats st;
  ASSERT_EQ(da_pattern_layout_stats(l, &st), DA_STATUS_SUCCESS);
  EXPECT_EQ(st.nnz, 7);
  EXPECT_EQ(st.kept[DA_PATTERN_LEVEL_LOCAL], 4);
  EXPECT_EQ(st.kept[DA_PATTERN_LEVEL_INTER_NODE], 1);
  EXPECT_EQ(st.kept[DA_PATTERN_LEVEL_GLOBAL], 2);
  EXPECT_EQ(st.min_row_blocks, 0);
  EXPECT_EQ(st.allowed, 12);
  da_pattern_layout_release(l);
  Bsr empty_levels;
  empty_levels.b.levels = nullptr;
  EXPECT_EQ(FromBsr(empty_levels), DA_STATUS_SUCCESS);
}

TEST(FromBsrTest, RejectsEveryBrokenRule) {
  using da_pattern_test::Rejected;
  {
    Bsr x;
    x.b.seqlen = 0;
    EXPECT_TRUE(Rejected(FromBsr(x), "seqlen", "0"));
  }
  {
    Bsr x;
    x.b.block_size = 3;
    EXPECT_TRUE(Rejected(FromBsr(x), "block_size", "3"));
  }
  {
    Bsr x;
    x.b.num_blocks = 4;
    EXPECT_TRUE(Rejected(FromBsr(x), "num_blocks", "4"));
  }
  {
    Bsr x;
    x.b.num_heads = 0;
    EXPECT_TRUE(Rejected(FromBsr(x), "num_heads", "0"));
  }
  {
    Bsr x;
    x.b.row_end = 4;
    EXPECT_TRUE(Rejected(FromBsr(x), "row_end", "4"));
  }
  {
    Bsr x;
    x.b.row_offsets = nullptr;
    EXPECT_TRUE(Rejected(FromBsr(x), "row_offsets"));
  }
  {
    Bsr x;
    x.off[0] = 1;
    x.Point();
    EXPECT_TRUE(Rejected(FromBsr(x), "row_offsets"));
  }
  {
    Bsr x;
    x.off[2] = 0;
    x.Point();
    EXPECT_TRUE(Rejected(FromBsr(x), "row_offsets"));
  }
  {
    Bsr x;
    x.off[4] = 5;
    x.Point();
    EXPECT_TRUE(Rejected(FromBsr(x), "row_offsets"));
  }
  {
    Bsr x;
    x.cols[2] = 0;
    x.Point();
    EXPECT_TRUE(Rejected(FromBsr(x), "col_indices", "0"));
  }
  {
    Bsr x;
    x.cols[3] = 7;
    x.Point();
    EXPECT_TRUE(Rejected(FromBsr(x), "col_indices", "7"));
  }
  {
    Bsr x;
    x.cols[0] = 1;
    x.Point();
    EXPECT_TRUE(Rejected(FromBsr(x), "col_indices", "above"));
  }
  {
    Bsr x;
    x.levels[1] = 3;
    x.Point();
    EXPECT_TRUE(Rejected(FromBsr(x), "levels", "3"));
  }
  {
    Bsr x;
    x.b.nnz = 9;
    EXPECT_TRUE(Rejected(FromBsr(x), "nnz", "9"));
  }
  {
    Bsr x;
    x.b.col_indices = nullptr;
    EXPECT_TRUE(Rejected(FromBsr(x), "col_indices"));
  }
  EXPECT_NE(da_pattern_layout_from_bsr(nullptr, nullptr), DA_STATUS_SUCCESS);
}

TEST(LayoutTest, RetainAndReleaseCount) {
  Config cfg;
  cfg.c.seqlen = 100;
  cfg.c.num_heads = 1;
  cfg.c.block_size = 4;
  Layout layout = Create(cfg);
  da_pattern_layout* extra = da_pattern_layout_retain(layout.get());
  EXPECT_EQ(extra, layout.get());
  da_pattern_layout_release(extra);
  EXPECT_EQ(View(layout.get()).num_blocks, 25);  // still alive
  EXPECT_EQ(da_pattern_layout_retain(nullptr), nullptr);
  da_pattern_layout_release(nullptr);
}

}  // namespace
