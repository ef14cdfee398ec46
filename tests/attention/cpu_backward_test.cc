// da_attention_backward_cpu (float) against the oracle's backward (double, same
// input values) on many random configurations, against central finite
// differences of the oracle forward on tiny ones, and bit-identical across runs
// and OpenMP thread counts.
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "attention/dense_oracle.h"
#include "attention/dilated_attention.h"
#include "tests/attention/test_util.h"

namespace {

using da_test::Config;
using da_test::CpuBackward;
using da_test::CpuGrads;
using da_test::Inputs;

bool ExpectGradsClose(const Config& c, const CpuGrads& got, const da_test::Grads& ref, double tol,
                      const char* against, double* worst_ratio = nullptr) {
  if (worst_ratio != nullptr) {
    const double floor = da_test::MaxAbs(ref.dv);
    const double ratios[3] = {
        da_test::CompareStats(got.dq.data(), ref.dq.data(), got.dq.size(), floor).Ratio(),
        da_test::CompareStats(got.dk.data(), ref.dk.data(), got.dk.size(), floor).Ratio(),
        da_test::CompareStats(got.dv.data(), ref.dv.data(), got.dv.size()).Ratio()};
    for (double r : ratios) *worst_ratio = std::max(*worst_ratio, r / tol);
  }
  ::testing::AssertionResult close = da_test::GradsClose(got.dq, got.dk, got.dv, ref, tol);
  if (!close)
    ADD_FAILURE() << close.message() << " (against " << against << ")\n  config: " << c.Describe();
  return static_cast<bool>(close);
}

TEST(CpuBackward, MatchesOracleOnRandomConfigs) {
  std::mt19937_64 rng(0x5eed0002);
  const int configs = da_test::ScaledCount(400);
  int failures = 0;
  double worst_ratio = 0.0;
  for (int i = 0; i < configs && failures < 5; i++) {
    Config c = da_test::RandomConfig(rng, 2e6);
    Inputs in = da_test::RandomInputs(rng, c);
    std::vector<float> dout = da_test::RandomTensor(rng, c.QElems());
    const Inputs before = in;
    CpuGrads got = CpuBackward(c, in, dout);
    if (in.q != before.q || in.k != before.k || in.v != before.v)
      ADD_FAILURE() << "the backward pass modified its inputs\n  config: " << c.Describe();
    da_test::Grads ref = da_test::OracleBackward(c, in.qd, in.kd, in.vd, da_test::ToDouble(dout));
    if (!ExpectGradsClose(c, got, ref, da_test::BackwardTolerance(c), "oracle backward",
                          &worst_ratio))
      failures++;
  }
  // How much of the tolerance the worst config used (kept in the test log).
  printf("worst gradient error / tolerance over %d configs: %.3g\n", configs, worst_ratio);
}

TEST(CpuBackward, MatchesFiniteDifferencesOfOracleForward) {
  std::vector<Config> configs;
  Config c;
  c.w = {4, 2};
  c.r = {2, 1};
  c.seqlen = 7;
  c.h = 2;
  c.d = 3;
  c.causal = 1;
  configs.push_back(c);
  c.w = {3, 3, 6};  // duplicate pattern, GQA, head-group
  c.r = {1, 1, 3};
  c.seqlen = 8;
  c.h = 4;
  c.h_kv = 2;
  c.causal = 0;
  c.mode = DA_MODE_HEAD_GROUP;
  configs.push_back(c);
  c.mode = DA_MODE_LONGNET;
  c.offset = DA_OFFSET_BLOCK;
  c.cu = {0, 3, 3, 10};
  c.batch = 3;
  c.scale = 0.4f;
  configs.push_back(c);
  std::mt19937_64 rng(5);
  for (const Config& config : configs) {
    SCOPED_TRACE(config.Describe());
    Inputs in = da_test::RandomInputs(rng, config);
    std::vector<float> dout = da_test::RandomTensor(rng, config.QElems());
    CpuGrads got = CpuBackward(config, in, dout);
    da_test::Grads fd =
        da_test::FiniteDifferenceGrads(config, in.qd, in.kd, in.vd, da_test::ToDouble(dout));
    ExpectGradsClose(config, got, fd, da_test::BackwardTolerance(config), "finite differences");
  }
}

TEST(CpuBackward, UncoveredQueriesGetZeroGradient) {
  Config c;
  c.w = {6};
  c.r = {3};
  c.seqlen = 12;
  c.h = 1;
  c.d = 5;
  std::mt19937_64 rng(6);
  Inputs in = da_test::RandomInputs(rng, c);
  CpuGrads got = CpuBackward(c, in, da_test::RandomTensor(rng, c.QElems()));
  for (int p = 0; p < 12; p++)
    for (int x = 0; x < c.d; x++) {
      if (p % 3 == 0) continue;  // offset 0 is the only one head 0 uses
      EXPECT_EQ(got.dq[p * c.d + x], 0.0f) << "query " << p;
      EXPECT_EQ(got.dk[p * c.d + x], 0.0f) << "key " << p;
      EXPECT_EQ(got.dv[p * c.d + x], 0.0f) << "key " << p;
    }
}

TEST(CpuBackward, BitIdenticalAcrossRunsAndThreadCounts) {
  std::mt19937_64 rng(4321);
  const int saved_threads = omp_get_max_threads();
  for (int i = 0; i < da_test::ScaledCount(8); i++) {
    Config c = da_test::RandomConfig(rng, 2e6);
    SCOPED_TRACE(c.Describe());
    Inputs in = da_test::RandomInputs(rng, c);
    std::vector<float> dout = da_test::RandomTensor(rng, c.QElems());
    omp_set_num_threads(1);
    CpuGrads first = CpuBackward(c, in, dout);
    for (int threads : {1, 2, 3, 4}) {
      omp_set_num_threads(threads);
      CpuGrads again = CpuBackward(c, in, dout);
      EXPECT_EQ(memcmp(again.dq.data(), first.dq.data(), first.dq.size() * sizeof(float)), 0)
          << threads << " threads";
      EXPECT_EQ(memcmp(again.dk.data(), first.dk.data(), first.dk.size() * sizeof(float)), 0)
          << threads << " threads";
      EXPECT_EQ(memcmp(again.dv.data(), first.dv.data(), first.dv.size() * sizeof(float)), 0)
          << threads << " threads";
    }
  }
  omp_set_num_threads(saved_threads);
}

}  // namespace
