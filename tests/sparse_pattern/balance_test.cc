// Load balance: the contiguous split is optimal (against exhaustive dynamic
// programming), its report is exact, the (1 + threshold) bound holds whenever it
// is achievable; the adaptive controller fires exactly when times are imbalanced
// beyond the threshold, and driving a generator with a simulated slow rank brings
// the measured imbalance under the threshold.
#include <math.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "tests/sparse_pattern/pattern_test_util.h"

namespace {

using da_pattern_test::Chance;
using da_pattern_test::Config;
using da_pattern_test::Create;
using da_pattern_test::Layout;
using da_pattern_test::Rejected;
using da_pattern_test::ScaledCount;
using da_pattern_test::UniformInt;
using da_pattern_test::View;

// The least possible heaviest part over all contiguous splits into `parts` parts.
int64_t BruteForceBound(const std::vector<int64_t>& work, int parts) {
  const size_t n = work.size();
  const int64_t inf = std::numeric_limits<int64_t>::max();
  // best[k][i]: rows [0, i) in k parts.
  std::vector<std::vector<int64_t>> best(parts + 1, std::vector<int64_t>(n + 1, inf));
  best[0][0] = 0;
  for (int k = 1; k <= parts; k++)
    for (size_t i = 0; i <= n; i++) {
      int64_t sum = 0;
      for (size_t j = i + 1; j-- > 0;) {  // last part [j, i)
        if (j < i) sum += work[j];
        if (best[k - 1][j] == inf) continue;
        best[k][i] = std::min(best[k][i], std::max(best[k - 1][j], sum));
      }
    }
  return best[parts][n];
}

struct Split {
  std::vector<int64_t> boundaries;
  da_pattern_partition_report report;
};

Split Partition(const std::vector<int64_t>& work, int parts, double threshold) {
  Split s;
  s.boundaries.assign(parts + 1, -1);
  EXPECT_EQ(da_pattern_partition_work(work.data(), work.size(), parts, threshold,
                                      s.boundaries.data(), &s.report),
            DA_STATUS_SUCCESS)
      << da_last_error();
  return s;
}

TEST(PartitionTest, OptimalExactAndBoundedOverRandomWork) {
  std::mt19937_64 rng(5);
  for (int it = 0; it < ScaledCount(600); it++) {
    const int rows = UniformInt(rng, 0, 24), parts = UniformInt(rng, 1, 9);
    std::vector<int64_t> work(rows);
    const int kind = UniformInt(rng, 0, 3);
    for (auto& w : work)
      w = kind == 0   ? UniformInt(rng, 0, 3)
          : kind == 1 ? UniformInt(rng, 0, 1000)
          : kind == 2 ? (Chance(rng, 0.1) ? 5000 : UniformInt(rng, 1, 50))
                      : 7;
    const double threshold = Chance(rng, 0.5) ? 0.15 : da_pattern_test::Uniform(rng, 0.0, 1.0);
    Split s = Partition(work, parts, threshold);
    // Valid boundaries.
    ASSERT_EQ(s.boundaries.front(), 0);
    ASSERT_EQ(s.boundaries.back(), rows);
    for (int p = 0; p < parts; p++) ASSERT_LE(s.boundaries[p], s.boundaries[p + 1]);
    // The report, recomputed.
    int64_t total = 0, heaviest_row = 0, max_part = 0,
            min_part = std::numeric_limits<int64_t>::max();
    for (int64_t w : work) {
      total += w;
      heaviest_row = std::max(heaviest_row, w);
    }
    for (int p = 0; p < parts; p++) {
      int64_t sum = 0;
      for (int64_t r = s.boundaries[p]; r < s.boundaries[p + 1]; r++) sum += work[r];
      max_part = std::max(max_part, sum);
      min_part = std::min(min_part, sum);
    }
    const double mean = (double)total / parts;
    EXPECT_EQ(s.report.total_work, total);
    EXPECT_EQ(s.report.max_part_work, max_part);
    EXPECT_EQ(s.report.min_part_work, min_part);
    EXPECT_DOUBLE_EQ(s.report.mean_work, mean);
    EXPECT_DOUBLE_EQ(s.report.imbalance, total > 0 ? max_part / mean - 1.0 : 0.0);
    EXPECT_EQ(s.report.bound_met, max_part <= (1.0 + threshold) * mean);
    // Optimal among contiguous splits.
    ASSERT_EQ(max_part, BruteForceBound(work, parts));
    // The bound holds whenever the sufficient condition says it is achievable.
    const int64_t ceil_mean = (total + parts - 1) / parts;
    if (ceil_mean + heaviest_row - 1 <= (1.0 + threshold) * mean) {
      EXPECT_TRUE(s.report.bound_met);
    }
    // No idle part while a part holds more than one row (when rows >= parts).
    if (rows >= parts) {
      for (int p = 0; p < parts; p++) EXPECT_LT(s.boundaries[p], s.boundaries[p + 1]);
    }
  }
}

TEST(PartitionTest, ReportsAnUnreachableBound) {
  // One row carries half of the work: no split of 4 parts gets under 2x the mean.
  std::vector<int64_t> work = {30, 5, 5, 5, 5, 5, 5};
  Split s = Partition(work, 4, 0.15);
  EXPECT_EQ(s.report.max_part_work, 30);
  EXPECT_DOUBLE_EQ(s.report.mean_work, 15.0);
  EXPECT_DOUBLE_EQ(s.report.imbalance, 1.0);
  EXPECT_FALSE(s.report.bound_met);
  // Uniform work splits perfectly.
  std::vector<int64_t> even(64, 3);
  Split e = Partition(even, 8, 0.0);
  EXPECT_DOUBLE_EQ(e.report.imbalance, 0.0);
  EXPECT_TRUE(e.report.bound_met);
  // More parts than rows: trailing parts are empty, and that is reported.
  Split many = Partition({4, 4}, 4, 0.15);
  EXPECT_EQ(many.boundaries, (std::vector<int64_t>{0, 1, 2, 2, 2}));
  EXPECT_EQ(many.report.min_part_work, 0);
  // No work at all.
  Split none = Partition({0, 0, 0}, 2, 0.15);
  EXPECT_DOUBLE_EQ(none.report.imbalance, 0.0);
  EXPECT_TRUE(none.report.bound_met);
}

TEST(PartitionTest, RejectsBadArguments) {
  std::vector<int64_t> work = {1, 2, 3}, b(3);
  EXPECT_TRUE(Rejected(da_pattern_partition_work(work.data(), 3, 0, 0.1, b.data(), nullptr),
                       "num_parts", "0"));
  EXPECT_TRUE(Rejected(da_pattern_partition_work(work.data(), -1, 2, 0.1, b.data(), nullptr),
                       "rows", "-1"));
  EXPECT_TRUE(
      Rejected(da_pattern_partition_work(nullptr, 3, 2, 0.1, b.data(), nullptr), "row_work"));
  EXPECT_TRUE(
      Rejected(da_pattern_partition_work(work.data(), 3, 2, 0.1, nullptr, nullptr), "boundaries"));
  EXPECT_TRUE(Rejected(da_pattern_partition_work(work.data(), 3, 2, -0.5, b.data(), nullptr),
                       "threshold", "-0.5"));
  work[1] = -4;
  EXPECT_TRUE(Rejected(da_pattern_partition_work(work.data(), 3, 2, 0.1, b.data(), nullptr),
                       "row_work", "-4"));
  std::vector<int64_t> huge = {std::numeric_limits<int64_t>::max(), 1};
  EXPECT_TRUE(
      Rejected(da_pattern_partition_work(huge.data(), 2, 2, 0.1, b.data(), nullptr), "row_work"));
}

TEST(PartitionTest, LayoutRowsSplitAcrossRanksAndThreadBlocks) {
  Config cfg;
  cfg.c.seqlen = 5000;
  cfg.c.block_size = 16;
  cfg.c.num_heads = 3;
  cfg.c.causal = 1;  // causal rows grow: an even row split would be unbalanced
  cfg.c.world_size = 4;
  cfg.c.row_begin = 20;
  cfg.c.row_end = 300;
  Layout layout = Create(cfg);
  const da_pattern_bsr b = View(layout.get());
  std::vector<int64_t> work(280);
  ASSERT_EQ(da_pattern_row_work(layout.get(), work.data()), DA_STATUS_SUCCESS);
  int64_t total = 0;
  for (int64_t i = 20; i < 300; i++) {
    int64_t sum = 0;
    for (int h = 0; h < 3; h++) sum += da_pattern_test::GetRow(b, h, i).cols.size();
    EXPECT_EQ(work[i - 20], sum);
    total += sum;
  }
  for (int parts : {4, 108}) {  // ranks, or thread blocks of a kernel
    std::vector<int64_t> bounds(parts + 1);
    da_pattern_partition_report report;
    ASSERT_EQ(da_pattern_partition_rows(layout.get(), parts, 0.15, bounds.data(), &report),
              DA_STATUS_SUCCESS);
    EXPECT_EQ(bounds.front(), 20);
    EXPECT_EQ(bounds.back(), 300);
    EXPECT_EQ(report.total_work, total);
    std::vector<int64_t> relative(bounds);
    for (auto& x : relative) x -= 20;
    Split s = Partition(work, parts, 0.15);
    EXPECT_EQ(s.boundaries, relative);
    if (parts == 4) {
      EXPECT_TRUE(report.bound_met) << report.imbalance;
    }
  }
}

// ------------------------------------------------------------------ adaptive

struct Adapted {
  std::vector<double> scales;
  da_pattern_adapt_report report;
};

void ExpectScales(const std::vector<double>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t p = 0; p < got.size(); p++) EXPECT_DOUBLE_EQ(got[p], want[p]) << "rank " << p;
}

Adapted Adapt(const std::vector<double>& times, std::vector<double> scales, double threshold = 0.15,
              double rate = 0.05) {
  Adapted a;
  EXPECT_EQ(da_pattern_adapt_scales(times.data(), times.size(), threshold, rate, 0.05, 20.0,
                                    scales.data(), &a.report),
            DA_STATUS_SUCCESS)
      << da_last_error();
  a.scales = scales;
  return a;
}

TEST(AdaptTest, DoesNotFireWithinTheThreshold) {
  Adapted a = Adapt({1.0, 1.0, 1.0, 1.0}, {1, 1, 1, 1});
  EXPECT_FALSE(a.report.triggered);
  EXPECT_DOUBLE_EQ(a.report.imbalance, 0.0);
  // max / mean = 1.2 / 1.05 = 1.143: imbalanced, but within 15 %.
  a = Adapt({1.0, 1.0, 1.0, 1.2}, {1, 2, 1, 0.5});
  EXPECT_FALSE(a.report.triggered);
  EXPECT_NEAR(a.report.imbalance, 1.2 / 1.05 - 1.0, 1e-15);
  EXPECT_EQ(a.scales, (std::vector<double>{1, 2, 1, 0.5}));
  EXPECT_EQ(a.report.ranks_decreased + a.report.ranks_increased, 0);
}

TEST(AdaptTest, FiresBeyondTheThresholdAndMovesDensity) {
  // mean 1.25: rank 3 (2.0 > 1.4375) is slowed down by 5 %, ranks under
  // 0.85 x 1.25 = 1.0625 get 5 % more.
  Adapted a = Adapt({1.0, 1.0, 1.0, 2.0}, {1, 1, 1, 1});
  EXPECT_TRUE(a.report.triggered);
  EXPECT_DOUBLE_EQ(a.report.mean_time, 1.25);
  EXPECT_DOUBLE_EQ(a.report.imbalance, 0.6);
  EXPECT_EQ(a.report.ranks_decreased, 1);
  EXPECT_EQ(a.report.ranks_increased, 3);
  ExpectScales(a.scales, {1.05, 1.05, 1.05, 0.95});
  // A rank between (1 - t) and (1 + t) of the mean keeps its scale.
  a = Adapt({1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.5}, std::vector<double>(8, 1.0));
  EXPECT_TRUE(a.report.triggered);
  EXPECT_EQ(a.report.ranks_increased, 0);
  EXPECT_EQ(a.report.ranks_decreased, 1);
  // Just past the threshold fires; the clamps hold.
  a = Adapt({1.0, 1.31}, {0.051, 19.99}, 0.1, 0.5);
  EXPECT_TRUE(a.report.triggered);
  ExpectScales(a.scales, {0.0765, 9.995});
  a = Adapt({1.0, 3.0}, {19.0, 0.06}, 0.1, 0.5);
  ExpectScales(a.scales, {20.0, 0.05});
}

TEST(AdaptTest, RejectsBadArguments) {
  std::vector<double> t = {1, 2}, s = {1, 1};
  auto call = [&](const double* times, int w, double thr, double rate, double lo, double hi,
                  double* scales) {
    return da_pattern_adapt_scales(times, w, thr, rate, lo, hi, scales, nullptr);
  };
  EXPECT_TRUE(Rejected(call(t.data(), 0, 0.1, 0.1, 0.1, 2, s.data()), "world_size", "0"));
  EXPECT_TRUE(Rejected(call(nullptr, 2, 0.1, 0.1, 0.1, 2, s.data()), "times_ms"));
  EXPECT_TRUE(Rejected(call(t.data(), 2, 0.1, 0.1, 0.1, 2, nullptr), "scales"));
  EXPECT_TRUE(Rejected(call(t.data(), 2, -1, 0.1, 0.1, 2, s.data()), "threshold", "-1"));
  EXPECT_TRUE(Rejected(call(t.data(), 2, 0.1, 1.0, 0.1, 2, s.data()), "rate", "1"));
  EXPECT_TRUE(Rejected(call(t.data(), 2, 0.1, 0.1, 0.0, 2, s.data()), "min_scale", "0"));
  EXPECT_TRUE(Rejected(call(t.data(), 2, 0.1, 0.1, 0.1, 0.5, s.data()), "max_scale", "0.5"));
  std::vector<double> bad = {1, NAN};
  EXPECT_TRUE(Rejected(call(bad.data(), 2, 0.1, 0.1, 0.1, 2, s.data()), "times_ms", "nan"));
  std::vector<double> zero = {0, 0};
  EXPECT_TRUE(Rejected(call(zero.data(), 2, 0.1, 0.1, 0.1, 2, s.data()), "times_ms"));
}

// Work of each rank's rows in a layout (kept blocks, all heads).
std::vector<int64_t> RankWork(da_pattern_layout* layout, const da_pattern_config& c) {
  std::vector<int64_t> row_work(View(layout).num_blocks), out;
  EXPECT_EQ(da_pattern_row_work(layout, row_work.data()), DA_STATUS_SUCCESS);
  for (int rank = 0; rank < c.world_size; rank++) {
    int64_t begin, end, sum = 0;
    EXPECT_EQ(da_pattern_shard_rows(&c, rank, &begin, &end), DA_STATUS_SUCCESS);
    for (int64_t i = begin; i < end; i++) sum += row_work[i];
    out.push_back(sum);
  }
  return out;
}

TEST(AdaptTest, GeneratorBalancesASlowRank) {
  da_pattern_config c = da_pattern_config_default();
  c.seqlen = 512 * 16;
  c.block_size = 16;
  c.num_heads = 2;
  c.type = DA_PATTERN_ADAPTIVE_LOAD_BALANCED;
  c.global_density = 0.0;  // global work does not scale with density: keep it out
  c.world_size = 4;
  c.local_world_size = 2;
  da_pattern_generator_options o = da_pattern_generator_options_default();
  o.cache_bytes = 64 << 20;
  da_pattern_generator* gen = nullptr;
  ASSERT_EQ(da_pattern_generator_create(&c, &o, &gen), DA_STATUS_SUCCESS) << da_last_error();
  const double slowness[] = {2.0, 1.0, 1.0, 1.0};  // rank 0 runs at half speed
  int64_t first_work0 = -1;
  int steps = 0, fired = 0;
  double imbalance = 0.0;
  for (; steps < 60; steps++) {
    da_pattern_layout* layout = nullptr;
    ASSERT_EQ(da_pattern_generator_get(gen, 0, 0, &layout), DA_STATUS_SUCCESS) << da_last_error();
    std::vector<int64_t> work = RankWork(layout, c);
    da_pattern_layout_release(layout);
    if (first_work0 < 0) first_work0 = work[0];
    std::vector<double> times(4);
    for (int p = 0; p < 4; p++) times[p] = slowness[p] * work[p] * 1e-3;
    da_pattern_adapt_report report;
    ASSERT_EQ(da_pattern_generator_adapt(gen, times.data(), 4, &report), DA_STATUS_SUCCESS)
        << da_last_error();
    if (steps == 0) {
      EXPECT_TRUE(report.triggered);
      EXPECT_NEAR(report.imbalance, 2.0 / 1.25 - 1.0, 0.02);
    }
    fired += report.triggered;
    imbalance = report.imbalance;
    if (!report.triggered) break;
  }
  EXPECT_GT(fired, 3);
  EXPECT_LT(steps, 40) << "did not converge";
  EXPECT_LE(imbalance, 0.15);
  std::vector<double> scales(4);
  ASSERT_EQ(da_pattern_generator_scales(gen, scales.data(), 4), DA_STATUS_SUCCESS);
  EXPECT_LT(scales[0], 1.0);
  EXPECT_GT(scales[1], 1.0);
  // Rank 0 now keeps fewer blocks than it started with.
  da_pattern_layout* layout = nullptr;
  ASSERT_EQ(da_pattern_generator_get(gen, 0, 0, &layout), DA_STATUS_SUCCESS);
  EXPECT_LT(RankWork(layout, c)[0], first_work0 * 0.8);
  da_pattern_layout_release(layout);
  // Balanced times do not move anything any more.
  const std::vector<double> even = {1.0, 1.0, 1.0, 1.0};
  da_pattern_adapt_report report;
  ASSERT_EQ(da_pattern_generator_adapt(gen, even.data(), 4, &report), DA_STATUS_SUCCESS);
  EXPECT_FALSE(report.triggered);
  std::vector<double> after(4);
  ASSERT_EQ(da_pattern_generator_scales(gen, after.data(), 4), DA_STATUS_SUCCESS);
  EXPECT_EQ(after, scales);
  EXPECT_TRUE(
      Rejected(da_pattern_generator_adapt(gen, even.data(), 3, nullptr), "world_size", "3"));
  da_pattern_generator_destroy(gen);
}

TEST(AdaptTest, OnlyTheAdaptiveTypeAdapts) {
  da_pattern_config c = da_pattern_config_default();
  c.seqlen = 1024;
  c.num_heads = 1;
  c.block_size = 16;
  c.world_size = 2;
  da_pattern_generator* gen = nullptr;
  ASSERT_EQ(da_pattern_generator_create(&c, nullptr, &gen), DA_STATUS_SUCCESS);
  const double times[] = {1.0, 5.0};
  EXPECT_TRUE(Rejected(da_pattern_generator_adapt(gen, times, 2, nullptr), "hierarchical"));
  double scales[2] = {0, 0};
  ASSERT_EQ(da_pattern_generator_scales(gen, scales, 2), DA_STATUS_SUCCESS);
  EXPECT_EQ(scales[0], 1.0);
  EXPECT_EQ(scales[1], 1.0);
  da_pattern_generator_destroy(gen);
  da_pattern_generator_options o = da_pattern_generator_options_default();
  o.adaptive_rate = 1.0;
  EXPECT_TRUE(Rejected(da_pattern_generator_create(&c, &o, &gen), "adaptive_rate", "1"));
  o = da_pattern_generator_options_default();
  o.load_balance_threshold = -1;
  EXPECT_TRUE(Rejected(da_pattern_generator_create(&c, &o, &gen), "load_balance_threshold"));
  o = da_pattern_generator_options_default();
  o.min_scale = 2.0;
  EXPECT_TRUE(Rejected(da_pattern_generator_create(&c, &o, &gen), "min_scale", "2"));
  c.block_size = 5;
  EXPECT_TRUE(Rejected(da_pattern_generator_create(&c, nullptr, &gen), "block_size", "5"));
}

}  // namespace
