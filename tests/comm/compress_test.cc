// The host compressors: conversions against brute-force references, each
// algorithm's selection and error bound, and error feedback over many steps.
#include <math.h>

#include <algorithm>
#include <numeric>
#include <set>
#include <vector>

#include <gtest/gtest.h>

#include "comm/compress.h"
#include "tests/comm/test_util.h"

namespace {

using da_test::Rng;

// --- Conversions ----------------------------------------------------------------------

// Nearest representable value by brute force over every finite value of the format,
// ties to the even bit pattern (what IEEE round-to-nearest-even means for halves).
struct Format {
  std::vector<std::pair<double, uint16_t>> finite;  // sorted by value
  explicit Format(float (*decode)(uint16_t)) {
    for (uint32_t h = 0; h < 65536; h++) {
      float f = decode((uint16_t)h);
      if (std::isfinite(f) && !(h & 0x8000)) finite.push_back({(double)f, (uint16_t)h});
    }
    std::sort(finite.begin(), finite.end());
  }
  // Returns the expected bits for x (|x| inside the finite range): nearest magnitude,
  // sign kept (so tiny negatives round to -0).
  uint16_t nearest(double x) const {
    uint16_t sign = x < 0 ? 0x8000 : 0;
    return (uint16_t)(sign | nearest_magnitude(std::fabs(x)));
  }
  uint16_t nearest_magnitude(double x) const {
    auto it = std::lower_bound(finite.begin(), finite.end(), std::make_pair(x, (uint16_t)0));
    if (it == finite.begin()) return it->second;
    if (it == finite.end()) return (it - 1)->second;
    auto lo = it - 1;
    double dl = x - lo->first, dh = it->first - x;
    if (dl < dh) return lo->second;
    if (dh < dl) return it->second;
    return (lo->second & 1) ? it->second : lo->second;
  }
};

TEST(Convert, HalfRoundTripsEveryPattern) {
  for (uint32_t h = 0; h < 65536; h++) {
    float f = da_cx_f16_to_f32((uint16_t)h);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(da_cx_f16_to_f32(da_cx_f32_to_f16(f))));
      continue;
    }
    ASSERT_EQ(da_cx_f32_to_f16(f), (uint16_t)h) << std::hex << h;
  }
  for (uint32_t h = 0; h < 65536; h++) {
    float f = da_cx_bf16_to_f32((uint16_t)h);
    if (std::isnan(f)) continue;
    ASSERT_EQ(da_cx_f32_to_bf16(f), (uint16_t)h) << std::hex << h;
  }
}

TEST(Convert, HalfRoundsToNearestEven) {
  static const Format half(da_cx_f16_to_f32);
  Rng rng(1);
  const double max_half = 65504.0, overflow = 65520.0;  // 65520 rounds to infinity
  for (int i = 0; i < 200000; i++) {
    float x;
    switch (i % 4) {
      case 0: x = (float)((rng.uniform() - 0.5) * 2.0 * max_half); break;
      case 1: x = (float)((rng.uniform() - 0.5) * 1e-4); break;  // subnormal halves
      case 2: {  // exact ties: midpoints between neighbours
        auto& p = half.finite[1 + rng.below((int)half.finite.size() - 2)];
        auto& q = *(std::upper_bound(half.finite.begin(), half.finite.end(), p));
        x = (float)((p.first + q.first) / 2);
        break;
      }
      default: x = (float)(rng.normal() * std::pow(10.0, rng.uniform() * 8 - 6)); break;
    }
    if (std::fabs((double)x) >= overflow) continue;
    if (x == 0.0f) continue;
    ASSERT_EQ(da_cx_f32_to_f16(x), half.nearest((double)x)) << x;
  }
  EXPECT_EQ(da_cx_f32_to_f16(65520.0f), 0x7c00);
  EXPECT_EQ(da_cx_f32_to_f16(-1e9f), 0xfc00);
  EXPECT_EQ(da_cx_f32_to_f16(INFINITY), 0x7c00);
  EXPECT_TRUE(std::isnan(da_cx_f16_to_f32(da_cx_f32_to_f16(NAN))));
  EXPECT_EQ(da_cx_f32_to_f16(-0.0f), 0x8000);
}

TEST(Convert, Bfloat16RoundsToNearestEven) {
  static const Format bf16(da_cx_bf16_to_f32);
  Rng rng(2);
  for (int i = 0; i < 200000; i++) {
    float x = (float)(rng.normal() * std::pow(10.0, rng.uniform() * 60 - 30));
    if (i % 3 == 0) {  // ties
      uint32_t u = da_cx_bits(x);
      x = da_cx_float((u & 0xffff0000u) | 0x8000u);
    }
    ASSERT_EQ(da_cx_f32_to_bf16(x), bf16.nearest((double)x)) << x;
  }
  EXPECT_TRUE(std::isnan(da_cx_bf16_to_f32(da_cx_f32_to_bf16(NAN))));
  EXPECT_EQ(da_cx_f32_to_bf16(INFINITY), 0x7f80);
}

TEST(Cast, VectorPathEqualsScalarConversion) {
  // da_cx_cast_encode may use F16C; it must round exactly as the scalar reference,
  // denormal halves and overflow included (NaN aside).
  Rng rng(9);
  std::vector<float> a(100003);
  for (auto& x : a) x = (float)(rng.normal() * std::pow(10.0, rng.uniform() * 14 - 9));
  a[5] = 70000.0f;
  a[6] = -65520.0f;
  a[7] = 1e-8f;
  for (int elem : {DA_DTYPE_F16, DA_DTYPE_BF16}) {
    std::vector<uint16_t> h(a.size());
    std::vector<float> back(a.size());
    da_cx_cast_encode(elem, a.data(), a.size(), 1.0f, h.data(), nullptr);
    da_cx_cast_decode(elem, h.data(), a.size(), 1.0f, back.data());
    for (size_t i = 0; i < a.size(); i++) {
      uint16_t want = elem == DA_DTYPE_F16 ? da_cx_f32_to_f16(a[i]) : da_cx_f32_to_bf16(a[i]);
      ASSERT_EQ(h[i], want) << i << " " << a[i];
      float back_want = elem == DA_DTYPE_F16 ? da_cx_f16_to_f32(want) : da_cx_bf16_to_f32(want);
      ASSERT_EQ(da_cx_bits(back[i]), da_cx_bits(back_want)) << i;
    }
  }
}

TEST(Cast, ResidualIsWhatTheCastLost) {
  std::vector<float> a = da_test::gradient(3, 10000);
  for (int elem : {DA_DTYPE_F16, DA_DTYPE_BF16}) {
    for (float prescale : {1.0f, 0.25f}) {
      std::vector<uint16_t> h(a.size());
      std::vector<float> r(a.size()), back(a.size());
      da_cx_cast_encode(elem, a.data(), a.size(), prescale, h.data(), r.data());
      da_cx_cast_decode(elem, h.data(), a.size(), 1.0f / prescale, back.data());
      double rel = elem == DA_DTYPE_F16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
      for (size_t i = 0; i < a.size(); i++) {
        EXPECT_EQ(r[i], a[i] - back[i]) << i;
        // Normal range: relative half-ulp; below it, half the smallest subnormal step.
        double bound = rel * std::fabs(a[i]) + (elem == DA_DTYPE_F16 ? std::ldexp(1.0, -25) / prescale : 0);
        ASSERT_LE(std::fabs(r[i]), bound * 1.0001) << i << " " << a[i];
      }
    }
  }
}

// --- Top-k ------------------------------------------------------------------------------

std::vector<uint32_t> brute_topk(const std::vector<float>& a, size_t k) {
  std::vector<uint32_t> order(a.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](uint32_t x, uint32_t y) { return da_cx_key(a[x]) > da_cx_key(a[y]); });
  order.resize(k);
  std::sort(order.begin(), order.end());
  return order;
}

TEST(TopK, ExactlyTheKLargestWithLowerIndicesWinningTies) {
  Rng rng(4);
  for (int trial = 0; trial < 60; trial++) {
    size_t n = 1 + (size_t)rng.below(trial < 50 ? 5000 : 300000);
    std::vector<float> a = da_test::gradient(100 + trial, n);
    if (trial % 3 == 1)  // many ties
      for (auto& x : a) x = std::round(x * 20) / 20;
    if (trial % 7 == 2) {  // specials
      a[rng.below((int)n)] = INFINITY;
      a[rng.below((int)n)] = -INFINITY;
      a[rng.below((int)n)] = NAN;
    }
    size_t k = 1 + (size_t)rng.below((int)n);
    std::vector<uint32_t> idx(k);
    std::vector<float> val(k), res(n);
    da_cx_topk_encode(a.data(), n, k, idx.data(), val.data(), res.data());
    ASSERT_EQ(idx, brute_topk(a, k)) << "trial " << trial << " n=" << n << " k=" << k;
    std::set<uint32_t> chosen(idx.begin(), idx.end());
    for (size_t j = 0; j < k; j++) EXPECT_EQ(da_cx_bits(val[j]), da_cx_bits(a[idx[j]]));
    uint32_t kth = da_cx_key(a[idx[0]]);
    for (uint32_t i : idx) kth = std::min(kth, da_cx_key(a[i]));
    for (size_t i = 0; i < n; i++) {
      if (chosen.count((uint32_t)i)) {
        EXPECT_EQ(res[i], 0.0f);
      } else {
        EXPECT_EQ(da_cx_bits(res[i]), da_cx_bits(a[i]));
        EXPECT_LE(da_cx_key(res[i]), kth);  // the bound: nothing left above the k-th
      }
    }
  }
}

// --- Random-k ------------------------------------------------------------------------------

TEST(RandomK, DistinctDeterministicAndUniform) {
  const size_t n = 1000, k = 100;
  std::vector<int> hits(n, 0);
  for (uint64_t step = 0; step < 400; step++) {
    uint64_t key = da_cx_randomk_key(7, step, 3);
    std::vector<float> a = da_test::gradient(step, n), val(k), res(n);
    std::vector<uint32_t> idx(k), again(k);
    da_cx_randomk_encode(a.data(), n, k, key, idx.data(), val.data(), res.data());
    da_cx_randomk_encode(a.data(), n, k, key, again.data(), val.data(), nullptr);
    ASSERT_EQ(idx, again);
    std::set<uint32_t> s(idx.begin(), idx.end());
    ASSERT_EQ(s.size(), k);
    for (uint32_t i : idx) {
      ASSERT_LT(i, n);
      hits[i]++;
    }
    for (size_t j = 0; j < k; j++) EXPECT_EQ(val[j], a[idx[j]]);
    for (size_t i = 0; i < n; i++) EXPECT_EQ(res[i], s.count((uint32_t)i) ? 0.0f : a[i]);
  }
  // Each index is picked with probability 0.1: 40 of 400 on average.
  for (size_t i = 0; i < n; i++) {
    EXPECT_GT(hits[i], 12) << i;
    EXPECT_LT(hits[i], 80) << i;
  }
  EXPECT_NE(da_cx_randomk_key(7, 0, 0), da_cx_randomk_key(7, 1, 0));
  EXPECT_NE(da_cx_randomk_key(7, 0, 0), da_cx_randomk_key(7, 0, 1));
  EXPECT_NE(da_cx_randomk_key(7, 0, 0), da_cx_randomk_key(8, 0, 0));
}

TEST(RandomK, PermutationCoversOddSizes) {
  for (size_t n : {1u, 2u, 3u, 5u, 17u, 1000u, 65537u}) {
    da_cx_permutation p;
    da_cx_permutation_init(&p, 99, n);
    std::vector<char> seen(n, 0);
    for (size_t j = 0; j < n; j++) {
      uint32_t i = da_cx_permute(&p, (uint32_t)j);
      ASSERT_LT(i, n);
      ASSERT_FALSE(seen[i]) << "n=" << n;
      seen[i] = 1;
    }
  }
}

// --- Threshold ------------------------------------------------------------------------------

TEST(Threshold, SendsAboveTheQuantileAndBoundsTheResidual) {
  for (double ratio : {0.001, 0.01, 0.1, 0.5}) {
    const size_t n = 200000;
    std::vector<float> a = da_test::gradient(5, n);
    size_t cap = da_cx_threshold_capacity(n, ratio);
    std::vector<uint32_t> idx(cap);
    std::vector<float> val(cap), res(n);
    size_t sent = 0;
    uint32_t tau = da_cx_threshold_encode(a.data(), n, ratio, cap, idx.data(), val.data(), res.data(), &sent);
    EXPECT_EQ(tau, da_cx_threshold_key(a.data(), n, ratio));
    size_t above = 0;
    for (size_t i = 0; i < n; i++) above += da_cx_key(a[i]) > tau;
    EXPECT_EQ(sent, std::min(above, cap));
    // The sample's quantile is close to the true one on smooth data.
    EXPECT_GT((double)above, 0.5 * ratio * n) << ratio;
    EXPECT_LT((double)above, 1.6 * ratio * n + 16) << ratio;
    for (size_t j = 0; j < sent; j++) {
      EXPECT_GT(da_cx_key(val[j]), tau);
      EXPECT_EQ(val[j], a[idx[j]]);
      if (j) {
        EXPECT_LT(idx[j - 1], idx[j]);
      }
    }
    for (size_t j = sent; j < cap; j++) EXPECT_EQ(idx[j], DA_CX_NO_INDEX);
    if (above <= cap) {
      for (size_t i = 0; i < n; i++) ASSERT_LE(da_cx_key(res[i]), tau);
    }
  }
}

TEST(Threshold, CapacityCutKeepsTheRestInTheResidual) {
  std::vector<float> a(1000, 1.0f);
  for (int i = 0; i < 1000; i += 2) a[i] = 5.0f;  // half the elements above any quantile < 0.5
  size_t cap = 10;
  std::vector<uint32_t> idx(cap);
  std::vector<float> val(cap), res(1000);
  size_t sent = 0;
  da_cx_threshold_encode(a.data(), 1000, 0.6, cap, idx.data(), val.data(), res.data(), &sent);
  EXPECT_EQ(sent, cap);
  for (size_t j = 0; j < cap; j++) EXPECT_EQ(idx[j], 2 * j);
  EXPECT_EQ(res[0], 0.0f);
  EXPECT_EQ(res[20], 5.0f);
}

// --- Int8 ----------------------------------------------------------------------------------

TEST(Int8, ErrorWithinHalfAStepPerChunk) {
  for (size_t chunk : {16u, 256u, 4096u}) {
    const size_t n = 100003;
    std::vector<float> a = da_test::gradient(6, n);
    for (size_t i = 0; i < 64; i++) a[i] = 0.0f;  // an all-zero chunk for chunk = 16
    size_t chunks = da_cx_int8_chunks(n, chunk);
    std::vector<float> scales(chunks), res(n), back(n, 0.0f);
    std::vector<int8_t> q(n);
    da_cx_int8_encode(a.data(), n, chunk, scales.data(), q.data(), res.data());
    da_cx_int8_accumulate(back.data(), n, chunk, scales.data(), q.data());
    for (size_t c = 0; c < chunks; c++) {
      float m = 0;
      for (size_t i = c * chunk; i < std::min(n, (c + 1) * chunk); i++) m = std::max(m, std::fabs(a[i]));
      EXPECT_EQ(scales[c], m / 127.0f);
    }
    for (size_t i = 0; i < n; i++) {
      float s = scales[i / chunk];
      ASSERT_LE(std::abs((int)q[i]), 127);
      EXPECT_EQ(res[i], a[i] - back[i]);
      ASSERT_LE(std::fabs(res[i]), 0.5f * s * 1.0001f + 1e-30f) << i;
    }
  }
}

TEST(Int8, NonFiniteChunkBecomesNaN) {
  std::vector<float> a(32, 1.0f);
  a[3] = INFINITY;
  std::vector<float> scales(2), res(32), back(32, 0.0f);
  std::vector<int8_t> q(32);
  da_cx_int8_encode(a.data(), 32, 16, scales.data(), q.data(), res.data());
  da_cx_int8_accumulate(back.data(), 32, 16, scales.data(), q.data());
  EXPECT_TRUE(std::isnan(back[0]));
  EXPECT_EQ(back[20], 1.0f);
}

// --- Layout and config -------------------------------------------------------------------------

TEST(Layout, GatheredPayloadsStayAligned) {
  da_compress_config c = da_compress_config_default();
  for (da_compress_algorithm alg : {DA_COMPRESS_TOPK, DA_COMPRESS_THRESHOLD, DA_COMPRESS_INT8}) {
    c.algorithm = alg;
    for (size_t n : {1u, 7u, 1001u, 65539u}) {
      da_cx_layout l = da_cx_payload_layout(&c, n);
      EXPECT_EQ(l.bytes % 16, 0u);
      EXPECT_TRUE(l.gathered);
      EXPECT_EQ(l.val_offset % 4, 0u);
      EXPECT_EQ(l.q_offset % 4, 0u);
    }
  }
  c.algorithm = DA_COMPRESS_TOPK;
  c.ratio = 0.01;
  EXPECT_EQ(da_cx_payload_layout(&c, 10000).slots, 100u);
  EXPECT_EQ(da_cx_payload_layout(&c, 50).slots, 1u);
}

TEST(Config, Checks) {
  da_compress_config c = da_compress_config_default();
  EXPECT_EQ(da_cx_check_config(&c), DA_STATUS_SUCCESS);
  c.algorithm = DA_COMPRESS_TOPK;
  c.ratio = 0;
  EXPECT_EQ(da_cx_check_config(&c), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "ratio"), nullptr);
  c.ratio = 1.5;
  EXPECT_EQ(da_cx_check_config(&c), DA_STATUS_INVALID_ARGUMENT);
  c = da_compress_config_default();
  c.algorithm = DA_COMPRESS_INT8;
  c.int8_chunk = 100;
  EXPECT_EQ(da_cx_check_config(&c), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "int8_chunk"), nullptr);
  c = da_compress_config_default();
  c.algorithm = (da_compress_algorithm)42;
  EXPECT_EQ(da_cx_check_config(&c), DA_STATUS_INVALID_ARGUMENT);
}

// --- Error feedback over steps (one rank: transmitted = decode(encode(g + e))) --------------------

struct EfResult {
  double relative_error;  // |sum sent - sum true| / |sum true|
  double identity_error;  // |sum sent + e_T - sum true| (should be rounding only)
};

EfResult run_error_feedback(da_compress_algorithm alg, int steps, bool feedback) {
  const size_t n = 4096;
  da_compress_config c = da_compress_config_default();
  c.algorithm = alg;
  c.ratio = 0.05;
  c.int8_chunk = 64;
  da_cx_layout l = da_cx_payload_layout(&c, n);
  std::vector<double> sent_sum(n, 0.0), true_sum(n, 0.0);
  std::vector<float> e(n, 0.0f), a(n), t(n);
  std::vector<char> payload(l.bytes + 64);
  std::vector<uint32_t> idx(std::max<size_t>(l.slots, 1));
  for (int s = 0; s < steps; s++) {
    // A gradient with a persistent direction (mean 1) plus noise.
    std::vector<float> g = da_test::gradient(1000 + s, n, 1.0);
    for (size_t i = 0; i < n; i++) true_sum[i] += g[i];
    for (size_t i = 0; i < n; i++) a[i] = g[i] + (feedback ? e[i] : 0.0f);
    float* res = e.data();
    char* p = payload.data();
    std::fill(t.begin(), t.end(), 0.0f);
    switch (alg) {
      case DA_COMPRESS_FP16:
      case DA_COMPRESS_BF16: {
        int elem = alg == DA_COMPRESS_FP16 ? DA_DTYPE_F16 : DA_DTYPE_BF16;
        da_cx_cast_encode(elem, a.data(), n, 1.0f, (uint16_t*)p, res);
        da_cx_cast_decode(elem, (uint16_t*)p, n, 1.0f, t.data());
        break;
      }
      case DA_COMPRESS_TOPK:
        da_cx_topk_encode(a.data(), n, l.slots, (uint32_t*)(p + l.idx_offset), (float*)(p + l.val_offset), res);
        da_cx_sparse_accumulate(t.data(), (uint32_t*)(p + l.idx_offset), (float*)(p + l.val_offset), l.slots);
        break;
      case DA_COMPRESS_THRESHOLD:
        da_cx_threshold_encode(a.data(), n, c.ratio, l.slots, (uint32_t*)(p + l.idx_offset),
                               (float*)(p + l.val_offset), res, nullptr);
        da_cx_sparse_accumulate(t.data(), (uint32_t*)(p + l.idx_offset), (float*)(p + l.val_offset), l.slots);
        break;
      case DA_COMPRESS_RANDOMK:
        da_cx_randomk_encode(a.data(), n, l.slots, da_cx_randomk_key(1, (uint64_t)s, 0), idx.data(), (float*)p, res);
        da_cx_scatter(t.data(), idx.data(), (float*)p, l.slots);
        break;
      case DA_COMPRESS_INT8:
        da_cx_int8_encode(a.data(), n, c.int8_chunk, (float*)(p + l.scales_offset), (int8_t*)(p + l.q_offset), res);
        da_cx_int8_accumulate(t.data(), n, c.int8_chunk, (float*)(p + l.scales_offset), (int8_t*)(p + l.q_offset));
        break;
      default: break;
    }
    for (size_t i = 0; i < n; i++) sent_sum[i] += t[i];
  }
  double num = 0, den = 0, ident = 0;
  for (size_t i = 0; i < n; i++) {
    num += (sent_sum[i] - true_sum[i]) * (sent_sum[i] - true_sum[i]);
    den += true_sum[i] * true_sum[i];
    ident = std::max(ident, std::fabs(sent_sum[i] + (feedback ? e[i] : 0.0) - true_sum[i]));
  }
  return {std::sqrt(num / den), ident};
}

TEST(ErrorFeedback, WhatWasSentTracksWhatWasTrue) {
  for (da_compress_algorithm alg : {DA_COMPRESS_FP16, DA_COMPRESS_BF16, DA_COMPRESS_TOPK,
                                    DA_COMPRESS_RANDOMK, DA_COMPRESS_THRESHOLD, DA_COMPRESS_INT8}) {
    SCOPED_TRACE(da_compress_algorithm_name(alg));
    EfResult short_run = run_error_feedback(alg, 10, true);
    EfResult long_run = run_error_feedback(alg, 200, true);
    // sum(sent) = sum(true) - e_T exactly, up to float rounding of e.
    EXPECT_LT(long_run.identity_error, 1e-3);
    // e_T stays bounded while sum(true) grows with T: the relative error falls.
    EXPECT_LT(long_run.relative_error, short_run.relative_error / 4 + 1e-6);
    EXPECT_LT(long_run.relative_error, 0.2);
    if (alg == DA_COMPRESS_TOPK || alg == DA_COMPRESS_RANDOMK || alg == DA_COMPRESS_THRESHOLD) {
      // Without feedback, sparsification loses most of the gradient for good.
      EfResult lossy = run_error_feedback(alg, 200, false);
      EXPECT_GT(lossy.relative_error, 0.5);
    }
  }
}

}  // namespace
