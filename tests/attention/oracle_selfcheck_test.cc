// The dense oracle checked on its own: against softmaxes written out by hand for
// tiny cases (segments, ragged tails, dilation offsets under every policy, head
// groups, duplicate patterns, GQA, packed batches), its backward against central
// finite differences of its forward, and its pair count against the library's.
#include <math.h>
#include <string.h>

#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "attention/dense_oracle.h"
#include "attention/dilated_attention.h"
#include "tests/attention/test_util.h"

namespace {

using da_test::Chosen;
using da_test::Config;

using Result = da_test::OracleOutputs;
using da_test::OracleForward;

// Softmax over an explicit key list (repeats allowed) for query token p, head j,
// kv head g: the semantics' formula written directly.
void ExplicitSoftmax(const Config& c, const std::vector<double>& q, const std::vector<double>& k,
                     const std::vector<double>& v, int p, int j, int g,
                     const std::vector<int>& keys, std::vector<double>* out, double* lse) {
  const int d = c.d, hk = c.KvHeads();
  const double s = c.scale == 0.0f ? 1.0 / sqrt(d) : c.scale;
  out->assign(d, 0.0);
  if (keys.empty()) {
    *lse = -INFINITY;
    return;
  }
  double denom = 0.0;
  std::vector<double> weights;
  for (int t : keys) {
    double dotp = 0.0;
    for (int x = 0; x < d; x++) dotp += q[(p * c.h + j) * d + x] * k[(t * hk + g) * d + x];
    weights.push_back(exp(s * dotp));
    denom += weights.back();
  }
  for (size_t m = 0; m < keys.size(); m++)
    for (int x = 0; x < d; x++) (*out)[x] += weights[m] / denom * v[(keys[m] * hk + g) * d + x];
  *lse = log(denom);
}

// Checks the oracle's row (p, j) against ExplicitSoftmax over `keys`.
void ExpectRow(const Config& c, const std::vector<double>& q, const std::vector<double>& k,
               const std::vector<double>& v, const Result& r, int p, int j,
               const std::vector<int>& keys) {
  SCOPED_TRACE(testing::Message() << "query " << p << " head " << j);
  std::vector<double> want;
  double want_lse;
  ExplicitSoftmax(c, q, k, v, p, j, j / (c.h / c.KvHeads()), keys, &want, &want_lse);
  for (int x = 0; x < c.d; x++) EXPECT_NEAR(r.out[(p * c.h + j) * c.d + x], want[x], 1e-12);
  if (keys.empty()) {
    EXPECT_TRUE(std::isinf(r.lse[p * c.h + j]) && r.lse[p * c.h + j] < 0) << r.lse[p * c.h + j];
  } else {
    EXPECT_NEAR(r.lse[p * c.h + j], want_lse, 1e-12);
  }
}

struct Tensors {
  std::vector<double> q, k, v;
};

Tensors RandomDoubles(const Config& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  da_test::Inputs in = da_test::RandomInputs(rng, c);
  return {in.qd, in.kd, in.vd};
}

TEST(OracleHandComputed, OneSegmentPatternTwoTokensPerSegment) {
  Config c = Chosen({2}, {1}, 4, 1, 2);
  c.scale = 0.5f;
  Tensors t = {{0.3, -1.0, 2.0, 0.5, -0.7, 1.1, 0.2, 0.9},
               {1.0, 0.4, -0.6, 1.5, 0.8, -0.3, 2.0, 0.1},
               {1.0, 2.0, 3.0, 4.0, -1.0, 0.5, 0.25, -2.0}};
  Result r = OracleForward(c, t.q, t.k, t.v);
  // Query 0: keys 0 and 1, written out in full.
  double s00 = 0.5 * (0.3 * 1.0 + -1.0 * 0.4), s01 = 0.5 * (0.3 * -0.6 + -1.0 * 1.5);
  double z = exp(s00) + exp(s01);
  EXPECT_NEAR(r.out[0], (exp(s00) * 1.0 + exp(s01) * 3.0) / z, 1e-14);
  EXPECT_NEAR(r.out[1], (exp(s00) * 2.0 + exp(s01) * 4.0) / z, 1e-14);
  EXPECT_NEAR(r.lse[0], log(z), 1e-14);
  const std::vector<std::vector<int>> keys = {{0, 1}, {0, 1}, {2, 3}, {2, 3}};
  for (int p = 0; p < 4; p++) ExpectRow(c, t.q, t.k, t.v, r, p, 0, keys[p]);

  c.causal = 1;
  r = OracleForward(c, t.q, t.k, t.v);
  EXPECT_NEAR(r.out[0], 1.0, 1e-15);  // query 0 sees key 0 only: out = v_0
  EXPECT_NEAR(r.out[1], 2.0, 1e-15);
  EXPECT_NEAR(r.lse[0], s00, 1e-15);
  const std::vector<std::vector<int>> causal_keys = {{0}, {0, 1}, {2}, {2, 3}};
  for (int p = 0; p < 4; p++) ExpectRow(c, t.q, t.k, t.v, r, p, 0, causal_keys[p]);
}

TEST(OracleHandComputed, RaggedTailAndSequenceShorterThanSegment) {
  Config c = Chosen({2, 8}, {1, 1}, 5, 1, 3);
  Tensors t = RandomDoubles(c, 1);
  Result r = OracleForward(c, t.q, t.k, t.v);
  // Pattern (2,1): segments [0,2) [2,4) [4,5); pattern (8,1): one segment [0,5).
  const std::vector<std::vector<int>> keys = {{0, 1, 0, 1, 2, 3, 4},
                                              {0, 1, 0, 1, 2, 3, 4},
                                              {2, 3, 0, 1, 2, 3, 4},
                                              {2, 3, 0, 1, 2, 3, 4},
                                              {4, 0, 1, 2, 3, 4}};
  for (int p = 0; p < 5; p++) ExpectRow(c, t.q, t.k, t.v, r, p, 0, keys[p]);
}

TEST(OracleHandComputed, DuplicatePatternCountsEveryKeyTwice) {
  Config once = Chosen({3}, {1}, 7, 2, 4);
  Config twice = Chosen({3, 3}, {1, 1}, 7, 2, 4);
  Tensors t = RandomDoubles(once, 2);
  Result a = OracleForward(once, t.q, t.k, t.v), b = OracleForward(twice, t.q, t.k, t.v);
  for (size_t i = 0; i < a.out.size(); i++) EXPECT_NEAR(a.out[i], b.out[i], 1e-14);
  for (size_t i = 0; i < a.lse.size(); i++) EXPECT_NEAR(b.lse[i], a.lse[i] + log(2.0), 1e-13);
}

TEST(OracleHandComputed, DilationWithHeadOffsets) {
  // w = 6, r = 2, h = 2, offset o = j mod 2: head 0 owns the even positions,
  // head 1 the odd ones; the other queries of each head are uncovered.
  for (int causal = 0; causal <= 1; causal++) {
    Config c = Chosen({6}, {2}, 6, 2, 3);
    c.causal = causal;
    c.offset = DA_OFFSET_HEAD;
    Tensors t = RandomDoubles(c, 3);
    Result r = OracleForward(c, t.q, t.k, t.v);
    for (int p = 0; p < 6; p++) {
      for (int j = 0; j < 2; j++) {
        std::vector<int> keys;
        if (p % 2 == j)
          for (int key = j; key < 6; key += 2)
            if (!causal || key <= p) keys.push_back(key);
        ExpectRow(c, t.q, t.k, t.v, r, p, j, keys);
      }
    }
  }
}

// Which queries of one segment [0, n) each head covers, from the lse.
std::vector<std::vector<int>> Covered(const Config& c, const Result& r) {
  std::vector<std::vector<int>> covered(c.h);
  for (int p = 0; p < c.seqlen; p++)
    for (int j = 0; j < c.h; j++)
      if (std::isfinite(r.lse[p * c.h + j])) covered[j].push_back(p);
  return covered;
}

TEST(OracleHandComputed, OffsetPolicies) {
  // Block (torchscale): h = 4, r = 2: ceil(4/2) = 2 heads per offset.
  Config c = Chosen({4}, {2}, 4, 4, 2);
  c.offset = DA_OFFSET_BLOCK;
  Tensors t = RandomDoubles(c, 4);
  std::vector<std::vector<int>> want = {{0, 2}, {0, 2}, {1, 3}, {1, 3}};
  EXPECT_EQ(Covered(c, OracleForward(c, t.q, t.k, t.v)), want);

  // Block with h = 5, r = 4: ceil(5/4) = 2, offsets 0 0 1 1 2; offset 3 unused.
  c = Chosen({8}, {4}, 8, 5, 2);
  c.offset = DA_OFFSET_BLOCK;
  t = RandomDoubles(c, 5);
  want = {{0, 4}, {0, 4}, {1, 5}, {1, 5}, {2, 6}};
  EXPECT_EQ(Covered(c, OracleForward(c, t.q, t.k, t.v)), want);

  // Head with r > h: h = 2, r = 3: offsets 0 and 1; positions 2 mod 3 uncovered.
  c = Chosen({6}, {3}, 6, 2, 2);
  c.offset = DA_OFFSET_HEAD;
  t = RandomDoubles(c, 6);
  want = {{0, 3}, {1, 4}};
  EXPECT_EQ(Covered(c, OracleForward(c, t.q, t.k, t.v)), want);

  // Default in LongNet mode is the head offset.
  c.offset = DA_OFFSET_DEFAULT;
  EXPECT_EQ(Covered(c, OracleForward(c, t.q, t.k, t.v)), want);

  // Group offset in LongNet mode: k = 2 patterns split h = 5 into {0,1,2} {3,4};
  // both patterns are (4, 2), so group g has offset g mod 2 in each.
  c = Chosen({4, 4}, {2, 2}, 4, 5, 2);
  c.offset = DA_OFFSET_GROUP;
  t = RandomDoubles(c, 7);
  want = {{0, 2}, {0, 2}, {0, 2}, {1, 3}, {1, 3}};
  Result r = OracleForward(c, t.q, t.k, t.v);
  EXPECT_EQ(Covered(c, r), want);
  ExpectRow(c, t.q, t.k, t.v, r, 3, 4, {1, 3, 1, 3});
}

TEST(OracleHandComputed, HeadGroupMode) {
  // h = 3, k = 2: groups {0,1} (pattern (2,1)) and {2} (pattern (4,2), default =
  // group offset 1 mod 2 = 1).
  Config c = Chosen({2, 4}, {1, 2}, 4, 3, 3);
  c.mode = DA_MODE_HEAD_GROUP;
  Tensors t = RandomDoubles(c, 8);
  Result r = OracleForward(c, t.q, t.k, t.v);
  const std::vector<std::vector<int>> pair_keys = {{0, 1}, {0, 1}, {2, 3}, {2, 3}};
  for (int p = 0; p < 4; p++) {
    ExpectRow(c, t.q, t.k, t.v, r, p, 0, pair_keys[p]);
    ExpectRow(c, t.q, t.k, t.v, r, p, 1, pair_keys[p]);
    ExpectRow(c, t.q, t.k, t.v, r, p, 2, p % 2 == 1 ? std::vector<int>{1, 3} : std::vector<int>{});
  }
  // With the head offset instead, head 2 uses offset 2 mod 2 = 0.
  c.offset = DA_OFFSET_HEAD;
  r = OracleForward(c, t.q, t.k, t.v);
  for (int p = 0; p < 4; p++)
    ExpectRow(c, t.q, t.k, t.v, r, p, 2, p % 2 == 0 ? std::vector<int>{0, 2} : std::vector<int>{});

  // h = 7, k = 3: groups of 3, 2, 2 heads (the first 7 mod 3 = 1 group larger).
  c = Chosen({8, 8, 8}, {1, 2, 4}, 8, 7, 1);
  c.mode = DA_MODE_HEAD_GROUP;
  t = RandomDoubles(c, 9);
  std::vector<std::vector<int>> want = {{0, 1, 2, 3, 4, 5, 6, 7},
                                        {0, 1, 2, 3, 4, 5, 6, 7},
                                        {0, 1, 2, 3, 4, 5, 6, 7},
                                        {1, 3, 5, 7},
                                        {1, 3, 5, 7},
                                        {2, 6},
                                        {2, 6}};
  EXPECT_EQ(Covered(c, OracleForward(c, t.q, t.k, t.v)), want);

  // h = 2 < k = 3: one head per group; the third pattern is used by no head.
  c = Chosen({8, 8, 1}, {1, 2, 1}, 8, 2, 2);
  c.mode = DA_MODE_HEAD_GROUP;
  t = RandomDoubles(c, 10);
  want = {{0, 1, 2, 3, 4, 5, 6, 7}, {1, 3, 5, 7}};
  r = OracleForward(c, t.q, t.k, t.v);
  EXPECT_EQ(Covered(c, r), want);
  ExpectRow(c, t.q, t.k, t.v, r, 5, 1, {1, 3, 5, 7});
}

TEST(OracleHandComputed, UncoveredQueriesGetZeroAndMinusInfinity) {
  Config c = Chosen({4}, {2}, 6, 1, 3);
  Tensors t = RandomDoubles(c, 11);
  Result r = OracleForward(c, t.q, t.k, t.v);
  for (int p = 0; p < 6; p++) {
    std::vector<int> keys;
    if (p % 2 == 0) keys = p < 4 ? std::vector<int>{0, 2} : std::vector<int>{4};
    ExpectRow(c, t.q, t.k, t.v, r, p, 0, keys);
  }
  // No gradient reaches the uncovered queries, nor keys only they could see.
  da_test::Grads g =
      da_test::OracleBackward(c, t.q, t.k, t.v, std::vector<double>(c.QElems(), 1.0));
  for (int x = 0; x < c.d; x++) {
    EXPECT_EQ(g.dq[1 * c.d + x], 0.0);
    EXPECT_EQ(g.dk[1 * c.d + x], 0.0);
    EXPECT_EQ(g.dv[3 * c.d + x], 0.0);
    EXPECT_NE(g.dv[2 * c.d + x], 0.0);
  }
}

TEST(OracleHandComputed, GroupedQueryAttentionReadsKvHeadJOverGroupSize) {
  // h = 4, h_kv = 2 (and 1) must equal h_kv = h with each kv head duplicated.
  for (int h_kv : {1, 2}) {
    Config gqa = Chosen({3, 5}, {1, 2}, 9, 4, 5);
    gqa.h_kv = h_kv;
    gqa.causal = 1;
    Config full = gqa;
    full.h_kv = 4;
    Tensors t = RandomDoubles(gqa, 12);
    Tensors wide = t;
    wide.k.assign(full.KvElems(), 0.0);
    wide.v.assign(full.KvElems(), 0.0);
    const int group = 4 / h_kv;
    for (int tok = 0; tok < 9; tok++)
      for (int j = 0; j < 4; j++)
        for (int x = 0; x < 5; x++) {
          wide.k[(tok * 4 + j) * 5 + x] = t.k[(tok * h_kv + j / group) * 5 + x];
          wide.v[(tok * 4 + j) * 5 + x] = t.v[(tok * h_kv + j / group) * 5 + x];
        }
    Result a = OracleForward(gqa, t.q, t.k, t.v), b = OracleForward(full, wide.q, wide.k, wide.v);
    EXPECT_EQ(a.out, b.out);
    EXPECT_EQ(a.lse, b.lse);
  }
}

TEST(OracleHandComputed, PackedSequencesAreSegmentedFromTheirOwnStart) {
  Config packed = Chosen({4, 3}, {1, 3}, 0, 2, 3);
  packed.batch = 4;
  packed.cu = {0, 5, 5, 12, 13};  // lengths 5, 0, 7, 1
  packed.causal = 1;
  Tensors t = RandomDoubles(packed, 13);
  Result whole = OracleForward(packed, t.q, t.k, t.v);
  const int hd = packed.h * packed.d;
  const int starts[] = {0, 5, 12}, lengths[] = {5, 7, 1};
  for (int s = 0; s < 3; s++) {
    Config one = packed;
    one.cu.clear();
    one.batch = 1;
    one.seqlen = lengths[s];
    auto slice = [&](const std::vector<double>& x) {
      return std::vector<double>(x.begin() + starts[s] * hd,
                                 x.begin() + (starts[s] + lengths[s]) * hd);
    };
    Result alone = OracleForward(one, slice(t.q), slice(t.k), slice(t.v));
    for (size_t i = 0; i < alone.out.size(); i++)
      EXPECT_EQ(alone.out[i], whole.out[starts[s] * hd + i]);
    for (size_t i = 0; i < alone.lse.size(); i++)
      EXPECT_EQ(alone.lse[i], whole.lse[starts[s] * packed.h + i]);
  }
  // A fixed-length batch is the packed batch with equal lengths.
  Config fixed = Chosen({4, 3}, {1, 3}, 6, 2, 3);
  fixed.batch = 2;
  Config same = fixed;
  same.cu = {0, 6, 12};
  Tensors u = RandomDoubles(fixed, 14);
  Result a = OracleForward(fixed, u.q, u.k, u.v), b = OracleForward(same, u.q, u.k, u.v);
  EXPECT_EQ(a.out, b.out);
  EXPECT_EQ(a.lse, b.lse);
}

TEST(OracleHandComputed, TokenSliceMatchesTheFullRun) {
  Config c = Chosen({5, 2}, {2, 1}, 11, 3, 4);
  c.batch = 2;
  Tensors t = RandomDoubles(c, 15);
  Result full = OracleForward(c, t.q, t.k, t.v);
  da_attention_params p = c.Params();
  da_attention_batch b = c.Batch();
  const int64_t begin = 7, end = 16;
  std::vector<double> out((end - begin) * c.h * c.d, NAN), lse((end - begin) * c.h, NAN);
  ASSERT_EQ(da_oracle_forward(&p, &b, t.q.data(), t.k.data(), t.v.data(), begin, end, out.data(),
                              lse.data()),
            DA_STATUS_SUCCESS);
  for (size_t i = 0; i < out.size(); i++) EXPECT_EQ(out[i], full.out[begin * c.h * c.d + i]);
  for (size_t i = 0; i < lse.size(); i++) EXPECT_EQ(lse[i], full.lse[begin * c.h + i]);
  // An empty slice is fine; one past the end is not.
  EXPECT_EQ(
      da_oracle_forward(&p, &b, t.q.data(), t.k.data(), t.v.data(), 3, 3, out.data(), lse.data()),
      DA_STATUS_SUCCESS);
  EXPECT_EQ(
      da_oracle_forward(&p, &b, t.q.data(), t.k.data(), t.v.data(), 0, 23, out.data(), lse.data()),
      DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "token_end"), nullptr) << da_last_error();
}

TEST(OracleHandComputed, HugeLogitsStayFinite) {
  Config c = Chosen({16, 4}, {1, 2}, 16, 2, 8);
  Tensors t = RandomDoubles(c, 16);
  for (double& x : t.q) x *= 1000.0;  // logits ~ 1e3: e^logit overflows without the max shift
  Result r = OracleForward(c, t.q, t.k, t.v);
  double v_max = 0.0;
  for (double x : t.v) v_max = std::max(v_max, fabs(x));
  for (double x : r.out) EXPECT_LE(fabs(x), v_max);  // a convex combination of v rows
  for (double x : r.lse) EXPECT_TRUE(std::isfinite(x)) << x;
}

TEST(OracleCountPairs, HandCounts) {
  Config c = Chosen({2}, {1}, 4, 1, 1);
  da_attention_params p = c.Params();
  da_attention_batch b = c.Batch();
  int64_t pairs = -1;
  ASSERT_EQ(da_oracle_count_pairs(&p, &b, &pairs), DA_STATUS_SUCCESS);
  EXPECT_EQ(pairs, 8);
  p.causal = 1;
  ASSERT_EQ(da_oracle_count_pairs(&p, &b, &pairs), DA_STATUS_SUCCESS);
  EXPECT_EQ(pairs, 6);  // 1 + 2 + 1 + 2
  // Uncovered: (w=4, r=2), n = 6, h = 2: head 0 queries 0,2 see 2 keys, 4 sees 1;
  // head 1 queries 1,3 see 2, 5 sees 1 (segment [4,6): 5 - 4 = 1 = o).
  c = Chosen({4}, {2}, 6, 2, 1);
  p = c.Params();
  b = c.Batch();
  ASSERT_EQ(da_oracle_count_pairs(&p, &b, &pairs), DA_STATUS_SUCCESS);
  EXPECT_EQ(pairs, 10);
}

TEST(OracleCountPairs, MatchesLibraryCount) {
  std::mt19937_64 rng(20240601);
  const int configs = da_test::ScaledCount(400);
  for (int i = 0; i < configs; i++) {
    Config c = da_test::RandomConfig(rng, 4e6);
    SCOPED_TRACE(c.Describe());
    da_attention_params p = c.Params();
    da_attention_batch b = c.Batch();
    int64_t oracle = -1, library = -2;
    ASSERT_EQ(da_oracle_count_pairs(&p, &b, &oracle), DA_STATUS_SUCCESS) << da_last_error();
    ASSERT_EQ(da_attention_count_pairs(&p, &b, &library), DA_STATUS_SUCCESS) << da_last_error();
    ASSERT_EQ(oracle, library);
    double flops = 0.0;
    ASSERT_EQ(da_attention_count_flops(&p, &b, 0, &flops), DA_STATUS_SUCCESS);
    EXPECT_DOUBLE_EQ(flops, 4.0 * c.d * static_cast<double>(oracle));
    ASSERT_EQ(da_attention_count_flops(&p, &b, 1, &flops), DA_STATUS_SUCCESS);
    EXPECT_DOUBLE_EQ(flops, 3.5 * 4.0 * c.d * static_cast<double>(oracle));
  }
}

// Oracle backward vs central differences of the oracle forward, L = sum(out * G).
void ExpectBackwardMatchesFiniteDifferences(const Config& c, uint64_t seed) {
  SCOPED_TRACE(c.Describe());
  std::mt19937_64 rng(seed);
  da_test::Inputs in = da_test::RandomInputs(rng, c);
  std::vector<double> g = da_test::ToDouble(da_test::RandomTensor(rng, c.QElems()));
  da_test::Grads got = da_test::OracleBackward(c, in.qd, in.kd, in.vd, g);
  da_test::Grads fd = da_test::FiniteDifferenceGrads(c, in.qd, in.kd, in.vd, g);
  EXPECT_TRUE(da_test::GradsClose(got.dq, got.dk, got.dv, fd, 1e-6));
}

TEST(OracleBackward, MatchesFiniteDifferencesOnChosenConfigs) {
  std::vector<Config> configs;
  configs.push_back(Chosen({2}, {1}, 4, 1, 2));
  Config c = Chosen({4, 2}, {2, 1}, 7, 2, 3);  // ragged n = 7
  c.causal = 1;
  configs.push_back(c);
  c = Chosen({3, 3}, {1, 1}, 5, 2, 2);  // duplicate pattern: keys count twice
  configs.push_back(c);
  c = Chosen({6, 4}, {3, 1}, 6, 4, 2);  // GQA h = 4, h_kv = 2, custom scale
  c.h_kv = 2;
  c.scale = 0.7f;
  configs.push_back(c);
  c = Chosen({5}, {5}, 9, 2, 2);  // r > h, many uncovered queries, MQA
  c.h_kv = 1;
  configs.push_back(c);
  c = Chosen({4, 6}, {2, 3}, 8, 3, 2);  // head-group mode, group offsets
  c.mode = DA_MODE_HEAD_GROUP;
  configs.push_back(c);
  for (int policy = DA_OFFSET_HEAD; policy <= DA_OFFSET_BLOCK; policy++) {
    c = Chosen({4, 3}, {2, 3}, 7, 5, 1);
    c.offset = static_cast<da_offset_policy>(policy);
    c.causal = policy % 2;
    configs.push_back(c);
  }
  c = Chosen({3, 2}, {1, 2}, 0, 2, 2);  // packed with an empty sequence
  c.batch = 3;
  c.cu = {0, 4, 4, 9};
  c.causal = 1;
  configs.push_back(c);
  for (size_t i = 0; i < configs.size(); i++)
    ExpectBackwardMatchesFiniteDifferences(configs[i], 100 + i);
}

TEST(OracleBackward, MatchesFiniteDifferencesOnRandomTinyConfigs) {
  std::mt19937_64 rng(77);
  const int configs = da_test::ScaledCount(60);
  for (int i = 0; i < configs; i++) {
    Config c;
    do c = da_test::RandomConfig(rng, 600);
    while (c.QElems() + 2 * c.KvElems() > 300 || c.q_magnitude > 1.0f);
    ExpectBackwardMatchesFiniteDifferences(c, 1000 + i);
  }
}

TEST(OracleArguments, RejectsNullAndInvalid) {
  Config c = Chosen({2}, {1}, 4, 1, 2);
  da_attention_params p = c.Params();
  da_attention_batch b = c.Batch();
  std::vector<double> x(64, 1.0), y(64), z(64), w(64);
  int64_t pairs;
  // Each failure names the argument (evaluated before the lambda runs).
  auto expect_invalid = [](da_status status, const char* name) {
    EXPECT_EQ(status, DA_STATUS_INVALID_ARGUMENT) << name;
    EXPECT_NE(strstr(da_last_error(), name), nullptr) << name << ": " << da_last_error();
  };
  const double* in = x.data();
  expect_invalid(da_oracle_forward(nullptr, &b, in, in, in, 0, 4, y.data(), z.data()), "params");
  expect_invalid(da_oracle_forward(&p, nullptr, in, in, in, 0, 4, y.data(), z.data()), "batch");
  expect_invalid(da_oracle_forward(&p, &b, nullptr, in, in, 0, 4, y.data(), z.data()), "q");
  expect_invalid(da_oracle_forward(&p, &b, in, nullptr, in, 0, 4, y.data(), z.data()), "k");
  expect_invalid(da_oracle_forward(&p, &b, in, in, nullptr, 0, 4, y.data(), z.data()), "v");
  expect_invalid(da_oracle_forward(&p, &b, in, in, in, 0, 4, nullptr, z.data()), "out");
  expect_invalid(da_oracle_forward(&p, &b, in, in, in, 0, 4, y.data(), nullptr), "lse");
  expect_invalid(da_oracle_forward(&p, &b, in, in, in, -1, 4, y.data(), z.data()), "token_begin");
  expect_invalid(da_oracle_forward(&p, &b, in, in, in, 3, 2, y.data(), z.data()), "token_end");
  expect_invalid(da_oracle_backward(&p, &b, in, in, in, nullptr, y.data(), z.data(), w.data()),
                 "dout");
  expect_invalid(da_oracle_backward(&p, &b, in, in, in, in, nullptr, z.data(), w.data()), "dq");
  expect_invalid(da_oracle_backward(&p, &b, in, in, in, in, y.data(), nullptr, w.data()), "dk");
  expect_invalid(da_oracle_backward(&p, &b, in, in, in, in, y.data(), z.data(), nullptr), "dv");
  expect_invalid(da_oracle_backward(nullptr, &b, in, in, in, in, y.data(), z.data(), w.data()),
                 "params");
  expect_invalid(da_oracle_count_pairs(&p, &b, nullptr), "pairs");
  expect_invalid(da_oracle_count_pairs(&p, nullptr, &pairs), "batch");
  // Parameter errors come from da_attention_validate, with its sentence.
  p.head_dim = 0;
  EXPECT_EQ(da_oracle_count_pairs(&p, &b, &pairs), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_STRNE(da_last_error(), "");
  p.head_dim = 2;
  EXPECT_EQ(da_oracle_count_pairs(&p, &b, &pairs), DA_STATUS_SUCCESS);
  EXPECT_STREQ(da_last_error(), "");
}

}  // namespace
