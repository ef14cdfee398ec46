// Deterministic data for the comm tests: every rank can recompute every other rank's
// gradients from (seed, rank, step), so expected results need no communication.
#ifndef DA_TESTS_COMM_TEST_UTIL_H
#define DA_TESTS_COMM_TEST_UTIL_H

#include <stdint.h>
#include <string.h>

#include <cmath>
#include <vector>

namespace da_test {

inline uint64_t splitmix(uint64_t* s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed) {}
  uint64_t next() { return splitmix(&state); }
  // Uniform in [0, 1).
  double uniform() { return (double)(next() >> 11) * (1.0 / 9007199254740992.0); }
  // Standard normal (Box-Muller).
  double normal() {
    double u = uniform(), v = uniform();
    if (u < 1e-300) u = 1e-300;
    return std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v);
  }
  int below(int n) { return (int)(next() % (uint64_t)n); }
};

// Gradient-like values: normal with a per-element scale spread over 3 decades.
inline std::vector<float> gradient(uint64_t seed, size_t n, double mean = 0.0) {
  Rng r(seed);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; i++) v[i] = (float)((mean + r.normal()) * std::pow(10.0, -3.0 * r.uniform()));
  return v;
}

// Small integers: sums over a few ranks are exact in every float type.
inline float exact_value(uint64_t seed, size_t i) {
  uint64_t s = seed * 0x100000001b3ull + i;
  return (float)((int)(splitmix(&s) % 201) - 100) * 0.25f;
}

inline uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c = 0) {
  uint64_t s = a * 0x9e3779b97f4a7c15ull ^ (b + 0x632be59bd9b4e019ull) ^ (c * 0xd1b54a32d192ed03ull);
  return splitmix(&s);
}

}  // namespace da_test

#endif  // DA_TESTS_COMM_TEST_UTIL_H
