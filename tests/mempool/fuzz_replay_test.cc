// Runs random operation sequences through the fuzzer's entry point (fuzz_ops.h), so
// the fuzz logic and its checks run in every CI build, with or without clang. A
// crash input saved by libFuzzer can be pasted into kRegressions.
#include <stdint.h>

#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/mempool/fuzz_ops.h"

namespace {

std::string RunOps(const std::vector<uint8_t>& input) {
  char why[512];
  return mp_fuzz_run(input.data(), input.size(), why, sizeof why) ? why : "";
}

// Each configuration byte pair (mode, features, limits, pressure / alignment,
// scale) with random operations after it.
TEST(FuzzReplay, RandomSequencesKeepEveryInvariant) {
  std::mt19937_64 rng(2024);
  for (int i = 0; i < 1200; i++) {
    std::vector<uint8_t> input(2 + rng() % 3000);
    for (auto& b : input) b = (uint8_t)rng();
    input[0] = (uint8_t)i;                     // every mode / feature / limit / pressure
    input[1] = (uint8_t)((i / 256) * 64 + i % 9 + 16 * (i % 4));  // alignments, scales
    std::string why = RunOps(input);
    ASSERT_EQ(why, "") << "input " << i;
  }
}

// Long sequences that mostly allocate and free: deep trees, many segments.
TEST(FuzzReplay, LongAllocFreeSequences) {
  std::mt19937_64 rng(99);
  for (int mode = 0; mode < 4; mode++) {
    std::vector<uint8_t> input = {(uint8_t)mode, (uint8_t)(0x10 + mode)};
    for (int op = 0; op < 20000; op++) {
      input.push_back((uint8_t)(rng() % 7));  // allocate or free
      for (int k = 0; k < 3; k++) input.push_back((uint8_t)rng());
      if (op % 50 == 0) input.insert(input.end(), {9, 4});  // complete all streams
    }
    std::string why = RunOps(input);
    ASSERT_EQ(why, "") << "mode " << mode;
  }
}

// Inputs that once broke an invariant (from fuzz runs), kept as regressions.
TEST(FuzzReplay, Regressions) {
  const std::vector<std::vector<uint8_t>> kRegressions = {
      {},
      {0},
      {3, 0x13, 0, 200, 1, 2, 4, 0, 0, 12},
  };
  for (size_t i = 0; i < kRegressions.size(); i++) EXPECT_EQ(RunOps(kRegressions[i]), "") << i;
}

}  // namespace
