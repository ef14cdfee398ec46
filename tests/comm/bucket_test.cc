// The bucketing planner against DDP's rule, written again here independently:
// reverse walk, one open bucket per dtype, close at >= cap bytes or max tensors.
#include <algorithm>
#include <map>
#include <vector>

#include <gtest/gtest.h>

#include "comm/bucket.h"
#include "tests/comm/test_util.h"

namespace {

struct Plan {
  da_bucket_plan p{};
  ~Plan() { da_bucket_plan_free(&p); }
};

// Buckets as lists of tensor indices (in registration order), in launch order.
std::vector<std::vector<int>> reference(const std::vector<size_t>& counts, const std::vector<da_dtype>& dtypes,
                                        size_t cap, size_t first_cap, int max_tensors) {
  std::vector<std::vector<int>> buckets;
  std::map<int, int> open;       // dtype -> bucket index
  std::map<int, size_t> bytes;   // bucket -> bytes
  std::map<int, bool> had_first; // dtype -> first bucket closed
  for (int t = (int)counts.size() - 1; t >= 0; t--) {
    int key = dtypes[t];
    if (!open.count(key)) {
      open[key] = (int)buckets.size();
      buckets.push_back({});
    }
    int b = open[key];
    buckets[b].push_back(t);
    bytes[b] += counts[t] * da_dtype_size(dtypes[t]);
    size_t limit = had_first[key] ? cap : first_cap;
    if (bytes[b] >= limit || (int)buckets[b].size() >= max_tensors) {
      open.erase(key);
      had_first[key] = true;
    }
  }
  for (auto& b : buckets) std::sort(b.begin(), b.end());
  return buckets;
}

void expect_matches(const std::vector<size_t>& counts, const std::vector<da_dtype>& dtypes, size_t cap,
                    size_t first_cap, int max_tensors) {
  Plan plan;
  ASSERT_EQ(da_bucket_plan_build(counts.data(), dtypes.data(), (int)counts.size(), cap, first_cap,
                                 max_tensors, &plan.p),
            DA_STATUS_SUCCESS)
      << da_last_error();
  auto want = reference(counts, dtypes, cap, first_cap, max_tensors);
  ASSERT_EQ(plan.p.num_buckets, (int)want.size());
  std::vector<int> seen(counts.size(), 0);
  for (int b = 0; b < plan.p.num_buckets; b++) {
    const da_bucket& bk = plan.p.buckets[b];
    std::vector<int> got(plan.p.tensors + bk.first, plan.p.tensors + bk.first + bk.num_tensors);
    EXPECT_EQ(got, want[b]) << "bucket " << b;
    size_t offset = 0, count = 0;
    for (int t : got) {
      EXPECT_EQ(plan.p.bucket_of[t], b);
      EXPECT_EQ(plan.p.offset_of[t], offset);
      EXPECT_EQ(dtypes[t], bk.dtype);
      offset += counts[t];
      count += counts[t];
      seen[t]++;
    }
    EXPECT_EQ(bk.count, count);
  }
  for (size_t t = 0; t < counts.size(); t++) EXPECT_EQ(seen[t], 1) << "tensor " << t;
}

TEST(BucketPlan, FirstBucketHoldsTheLastTensorsAndIsSmall) {
  // 20 tensors of 256 KiB (float32): the first bucket closes at 1 MiB (4 tensors),
  // the next ones at 25 MiB (here: the remaining 16 fit in one).
  std::vector<size_t> counts(20, 65536);
  std::vector<da_dtype> dtypes(20, DA_DTYPE_F32);
  Plan plan;
  ASSERT_EQ(da_bucket_plan_build(counts.data(), dtypes.data(), 20, 25u << 20, 1u << 20, 32, &plan.p),
            DA_STATUS_SUCCESS);
  ASSERT_EQ(plan.p.num_buckets, 2);
  EXPECT_EQ(plan.p.buckets[0].num_tensors, 4);
  EXPECT_EQ(plan.p.tensors[plan.p.buckets[0].first], 16);  // registration order inside
  EXPECT_EQ(plan.p.bucket_of[19], 0);
  EXPECT_EQ(plan.p.bucket_of[0], 1);
  EXPECT_EQ(plan.p.buckets[1].num_tensors, 16);
}

TEST(BucketPlan, ClosesAtCapIncludingTheTensorThatCrossesIt) {
  // 3 MiB tensors against a 25 MiB cap: 9 tensors (27 MiB) per bucket, as DDP.
  std::vector<size_t> counts(30, 3u << 18);
  std::vector<da_dtype> dtypes(30, DA_DTYPE_F32);
  expect_matches(counts, dtypes, 25u << 20, 1u << 20, 32);
  Plan plan;
  ASSERT_EQ(da_bucket_plan_build(counts.data(), dtypes.data(), 30, 25u << 20, 1u << 20, 32, &plan.p),
            DA_STATUS_SUCCESS);
  EXPECT_EQ(plan.p.buckets[0].num_tensors, 1);  // 3 MiB >= 1 MiB at once
  EXPECT_EQ(plan.p.buckets[1].num_tensors, 9);
}

TEST(BucketPlan, AtMost32Tensors) {
  std::vector<size_t> counts(100, 10);
  std::vector<da_dtype> dtypes(100, DA_DTYPE_F32);
  Plan plan;
  ASSERT_EQ(da_bucket_plan_build(counts.data(), dtypes.data(), 100, 25u << 20, 1u << 20, 32, &plan.p),
            DA_STATUS_SUCCESS);
  ASSERT_EQ(plan.p.num_buckets, 4);
  for (int b = 0; b < 3; b++) EXPECT_EQ(plan.p.buckets[b].num_tensors, 32);
  EXPECT_EQ(plan.p.buckets[3].num_tensors, 4);
  EXPECT_EQ(plan.p.tensors[plan.p.buckets[3].first], 0);
}

TEST(BucketPlan, OneOpenBucketPerDtype) {
  std::vector<size_t> counts = {100, 200, 300, 400, 500, 600};
  std::vector<da_dtype> dtypes = {DA_DTYPE_F32, DA_DTYPE_F64, DA_DTYPE_F32,
                                  DA_DTYPE_BF16, DA_DTYPE_F64, DA_DTYPE_F32};
  expect_matches(counts, dtypes, 4096, 1024, 32);
  Plan plan;
  ASSERT_EQ(da_bucket_plan_build(counts.data(), dtypes.data(), 6, 4096, 1024, 32, &plan.p), DA_STATUS_SUCCESS);
  for (int b = 0; b < plan.p.num_buckets; b++)
    for (int j = 0; j < plan.p.buckets[b].num_tensors; j++)
      EXPECT_EQ(dtypes[plan.p.tensors[plan.p.buckets[b].first + j]], plan.p.buckets[b].dtype);
}

TEST(BucketPlan, RandomisedAgainstReference) {
  da_test::Rng rng(42);
  const da_dtype kinds[] = {DA_DTYPE_F32, DA_DTYPE_F16, DA_DTYPE_BF16, DA_DTYPE_F64};
  for (int trial = 0; trial < 300; trial++) {
    int n = 1 + rng.below(120);
    std::vector<size_t> counts(n);
    std::vector<da_dtype> dtypes(n);
    for (int i = 0; i < n; i++) {
      counts[i] = 1 + (size_t)rng.below(rng.below(4) == 0 ? 100000 : 1000);
      dtypes[i] = rng.below(3) == 0 ? kinds[rng.below(4)] : DA_DTYPE_F32;
    }
    size_t cap = 1 + (size_t)rng.below(200000), first = 1 + (size_t)rng.below(50000);
    int max_tensors = 1 + rng.below(40);
    SCOPED_TRACE(trial);
    expect_matches(counts, dtypes, cap, first, max_tensors);
  }
}

TEST(BucketPlan, EmptyAndBadArguments) {
  Plan plan;
  EXPECT_EQ(da_bucket_plan_build(nullptr, nullptr, 0, 1, 1, 1, &plan.p), DA_STATUS_SUCCESS);
  EXPECT_EQ(plan.p.num_buckets, 0);
  size_t c = 5;
  da_dtype d = DA_DTYPE_F32;
  Plan bad;
  EXPECT_EQ(da_bucket_plan_build(&c, &d, 1, 0, 1, 1, &bad.p), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "caps"), nullptr);
  EXPECT_EQ(da_bucket_plan_build(&c, &d, 1, 1, 1, 0, &bad.p), DA_STATUS_INVALID_ARGUMENT);
  size_t zero = 0;
  EXPECT_EQ(da_bucket_plan_build(&zero, &d, 1, 1, 1, 1, &bad.p), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "count 0"), nullptr);
  da_dtype wrong = (da_dtype)9;
  EXPECT_EQ(da_bucket_plan_build(&c, &wrong, 1, 1, 1, 1, &bad.p), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_bucket_plan_build(&c, &d, 1, 1, 1, 1, nullptr), DA_STATUS_INVALID_ARGUMENT);
}

}  // namespace
