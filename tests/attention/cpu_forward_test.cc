// da_attention_forward_cpu (float) against the dense double oracle on the same
// input values, over many random configurations and a few chosen edge cases; plus
// lse = NULL, untouched inputs and bit-identical results across runs and OpenMP
// thread counts.
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

using da_test::Chosen;
using da_test::Config;
using da_test::CpuForward;
using da_test::Inputs;

// Compares one forward call with the oracle; returns false (after reporting) on
// a mismatch. Also checks the call left its inputs alone.
bool ExpectForwardMatchesOracle(const Config& c, const Inputs& in, double* worst_ratio) {
  const Inputs before = in;
  da_test::CpuOutputs got = CpuForward(c, in);
  da_test::OracleOutputs ref = da_test::OracleForward(c, in.qd, in.kd, in.vd);
  const double tol = da_test::ForwardTolerance(c);
  bool ok = true;
  ::testing::AssertionResult out_ok =
      da_test::AllClose("out", got.out.data(), ref.out.data(), got.out.size(), tol);
  ::testing::AssertionResult lse_ok =
      da_test::LseClose(got.lse.data(), ref.lse.data(), got.lse.size(), tol);
  if (!out_ok) {
    ADD_FAILURE() << out_ok.message() << "\n  config: " << c.Describe();
    ok = false;
  }
  if (!lse_ok) {
    ADD_FAILURE() << lse_ok.message() << "\n  config: " << c.Describe();
    ok = false;
  }
  if (in.q != before.q || in.k != before.k || in.v != before.v) {
    ADD_FAILURE() << "the forward pass modified its inputs\n  config: " << c.Describe();
    ok = false;
  }
  // Uncovered queries: exactly 0.
  for (size_t row = 0; row < got.lse.size(); row++) {
    if (!std::isinf(ref.lse[row])) continue;
    for (int x = 0; x < c.d; x++) {
      if (got.out[row * c.d + x] != 0.0f) {
        ADD_FAILURE() << "out row " << row
                      << " is not 0 for an uncovered query\n  config: " << c.Describe();
        return false;
      }
    }
  }
  if (worst_ratio != nullptr)
    *worst_ratio = std::max(
        *worst_ratio,
        da_test::CompareStats(got.out.data(), ref.out.data(), got.out.size()).Ratio() / tol);
  return ok;
}

TEST(CpuForward, MatchesOracleOnRandomConfigs) {
  std::mt19937_64 rng(0x5eed0001);
  const int configs = da_test::ScaledCount(600);
  int failures = 0;
  double worst_ratio = 0.0;
  for (int i = 0; i < configs && failures < 5; i++) {
    Config c = da_test::RandomConfig(rng, 4e6);
    Inputs in = da_test::RandomInputs(rng, c);
    if (!ExpectForwardMatchesOracle(c, in, &worst_ratio)) failures++;
  }
  // How much of the tolerance the worst config used (kept in the test log).
  printf("worst out error / tolerance over %d configs: %.3g\n", configs, worst_ratio);
}

TEST(CpuForward, MatchesOracleOnChosenEdgeCases) {
  std::vector<Config> configs;
  configs.push_back(Chosen({1}, {1}, 5, 2, 8));               // w = 1: every query sees itself
  configs.push_back(Chosen({64}, {1}, 10, 1, 16));            // n < w
  configs.push_back(Chosen({7}, {7}, 50, 8, 3));              // r = w: one key per segment and head
  configs.push_back(Chosen({1}, {1}, 1, 1, 1));               // n = 1
  configs.push_back(Chosen({5, 5, 5}, {1, 1, 1}, 23, 3, 4));  // a key counted three times
  configs.push_back(Chosen({12, 30}, {4, 8}, 61, 2, 16));     // r > h: uncovered queries
  configs.push_back(Chosen({256}, {1}, 300, 1, DA_MAX_HEAD_DIM));  // largest head_dim
  configs.push_back(Chosen({100, 33, 9}, {3, 1, 2}, 257, 4, 64));
  Config c = Chosen({16, 64}, {2, 4}, 0, 6, 8);  // packed, empty sequences first and last
  c.batch = 5;
  c.cu = {0, 0, 70, 71, 200, 200};
  configs.push_back(c);
  c = Chosen({8, 32, 128}, {1, 2, 4}, 150, 6, 16);  // head-group, GQA
  c.mode = DA_MODE_HEAD_GROUP;
  c.h_kv = 3;
  configs.push_back(c);
  c = Chosen({24, 24}, {3, 3}, 90, 5, 8);  // block offsets with h not a multiple of r
  c.offset = DA_OFFSET_BLOCK;
  configs.push_back(c);
  std::mt19937_64 rng(42);
  for (size_t i = 0; i < configs.size(); i++) {
    for (int causal = 0; causal <= 1; causal++) {
      Config variant = configs[i];
      variant.causal = causal;
      Inputs in = da_test::RandomInputs(rng, variant);
      ExpectForwardMatchesOracle(variant, in, nullptr);
    }
  }
}

// Logits in the hundreds over a long causal segment: only a max-shifted (online)
// softmax keeps e^x finite, and the running rescaling is exercised across blocks.
TEST(CpuForward, LargeLogitsOverALongSegment) {
  Config c = Chosen({1000, 250}, {1, 2}, 1000, 2, 16);
  c.causal = 1;
  c.q_magnitude = 30.0f;
  std::mt19937_64 rng(7);
  Inputs in = da_test::RandomInputs(rng, c);
  ExpectForwardMatchesOracle(c, in, nullptr);
}

TEST(CpuForward, NullLseGivesTheSameOutput) {
  std::mt19937_64 rng(99);
  for (int i = 0; i < 10; i++) {
    Config c = da_test::RandomConfig(rng, 1e6);
    SCOPED_TRACE(c.Describe());
    Inputs in = da_test::RandomInputs(rng, c);
    da_test::CpuOutputs with_lse = CpuForward(c, in);
    da_attention_params p = c.Params();
    da_attention_batch b = c.Batch();
    std::vector<float> out = da_test::Poisoned(c.QElems());
    ASSERT_EQ(da_attention_forward_cpu(&p, &b, in.q.data(), in.k.data(), in.v.data(), out.data(),
                                       nullptr),
              DA_STATUS_SUCCESS)
        << da_last_error();
    EXPECT_EQ(memcmp(out.data(), with_lse.out.data(), out.size() * sizeof(float)), 0);
  }
}

TEST(CpuForward, BitIdenticalAcrossRunsAndThreadCounts) {
  std::mt19937_64 rng(1234);
  const int saved_threads = omp_get_max_threads();
  for (int i = 0; i < da_test::ScaledCount(8); i++) {
    Config c = da_test::RandomConfig(rng, 4e6);
    SCOPED_TRACE(c.Describe());
    Inputs in = da_test::RandomInputs(rng, c);
    omp_set_num_threads(1);
    da_test::CpuOutputs first = CpuForward(c, in);
    for (int threads : {1, 2, 3, 4}) {
      omp_set_num_threads(threads);
      da_test::CpuOutputs again = CpuForward(c, in);
      EXPECT_EQ(memcmp(again.out.data(), first.out.data(), first.out.size() * sizeof(float)), 0)
          << threads << " threads";
      EXPECT_EQ(memcmp(again.lse.data(), first.lse.data(), first.lse.size() * sizeof(float)), 0)
          << threads << " threads";
    }
  }
  omp_set_num_threads(saved_threads);
}

}  // namespace
