// pattern_test_util.h: what the sparse_pattern tests share: random valid pattern
// configs, an owning handle for layouts, a reader for the BSR view, and the check
// that a failure's sentence names the offending field.
#ifndef DA_TESTS_SPARSE_PATTERN_TEST_UTIL_H
#define DA_TESTS_SPARSE_PATTERN_TEST_UTIL_H

#include <gtest/gtest.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include <algorithm>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "sparse_pattern/da_pattern.h"

namespace da_pattern_test {

// DA_TEST_SCALE multiplies the random iteration counts (as in tests/attention).
inline int ScaledCount(int n) {
  const char* env = getenv("DA_TEST_SCALE");
  double scale = (env != nullptr && *env != '\0') ? std::max(0.01, atof(env)) : 1.0;
  return std::max(1, static_cast<int>(lround(n * scale)));
}

inline int UniformInt(std::mt19937_64& rng, int lo, int hi) {  // inclusive
  return std::uniform_int_distribution<int>(lo, hi)(rng);
}

inline double Uniform(std::mt19937_64& rng, double lo, double hi) {
  return std::uniform_real_distribution<double>(lo, hi)(rng);
}

inline bool Chance(std::mt19937_64& rng, double p) { return Uniform(rng, 0.0, 1.0) < p; }

// A config plus the storage its rank_density_scale borrows.
struct Config {
  da_pattern_config c = da_pattern_config_default();
  std::vector<double> scales;

  const da_pattern_config* get() {
    c.rank_density_scale = scales.empty() ? nullptr : scales.data();
    return &c;
  }

  std::string Describe() const {
    std::ostringstream s;
    s << "n=" << c.seqlen << " B=" << c.block_size << " h=" << c.num_heads << " causal=" << c.causal
      << " type=" << da_pattern_type_name(c.type) << " densities(l,g,x)=" << c.local_density << ","
      << c.global_density << "," << c.inter_node_density << " window=" << c.local_window_blocks
      << " patterns=";
    for (int p = 0; p < c.num_patterns; p++)
      s << (p ? "," : "") << "(" << c.segment_lengths[p] << "," << c.dilation_rates[p] << ")";
    s << " mode=" << c.mode << " offset=" << c.offset_policy << " W=" << c.world_size
      << " local_W=" << c.local_world_size << " seed=" << c.seed << " rows=[" << c.row_begin << ","
      << c.row_end << ")";
    if (!scales.empty()) {
      s << " scales=";
      for (size_t p = 0; p < scales.size(); p++) s << (p ? "," : "") << scales[p];
    }
    return s.str();
  }
};

inline double RandomDensity(std::mt19937_64& rng) {
  double kind = Uniform(rng, 0.0, 1.0);
  if (kind < 0.1) return 0.0;
  if (kind < 0.2) return 1.0;
  if (kind < 0.5) return Uniform(rng, 0.0, 0.15);
  return Uniform(rng, 0.0, 1.0);
}

// A valid random config with at most max_blocks block rows. Covers every type,
// densities 0 / 1 / small / any, windows 0..6, up to 3 dilated patterns (w below and
// above B, r up to w), both modes and all offsets, W up to 8 with nodes, empty shards
// (W > nb), random seeds and, for the adaptive type, random rank scales.
inline Config RandomConfig(std::mt19937_64& rng, int max_blocks = 120) {
  Config cfg;
  da_pattern_config& c = cfg.c;
  c.block_size = 1 << UniformInt(rng, 0, 6);
  int nb = UniformInt(rng, 1, max_blocks);
  c.seqlen = (int64_t)(nb - 1) * c.block_size + UniformInt(rng, 1, c.block_size);
  c.num_heads = UniformInt(rng, 1, 4);
  c.causal = Chance(rng, 0.5);
  c.type = static_cast<da_pattern_type>(UniformInt(rng, 0, 3));
  c.local_density = RandomDensity(rng);
  c.global_density = Chance(rng, 0.3) ? 0.0 : RandomDensity(rng) * 0.5;
  c.inter_node_density = RandomDensity(rng);
  c.local_window_blocks = UniformInt(rng, 0, 6);
  c.num_patterns = UniformInt(rng, 0, 3);
  for (int p = 0; p < c.num_patterns; p++) {
    int w = Chance(rng, 0.3) ? UniformInt(rng, 1, 16)
                             : UniformInt(rng, 1, static_cast<int>(c.seqlen) + 8);
    c.segment_lengths[p] = w;
    c.dilation_rates[p] = Chance(rng, 0.3) ? 1 : UniformInt(rng, 1, std::min(w, 3 * c.block_size));
  }
  c.mode = (c.num_patterns > 0 && Chance(rng, 0.3)) ? DA_MODE_HEAD_GROUP : DA_MODE_LONGNET;
  c.offset_policy = static_cast<da_offset_policy>(UniformInt(rng, 0, 3));
  static const int kWorlds[] = {1, 1, 2, 3, 4, 6, 8};
  c.world_size = kWorlds[UniformInt(rng, 0, 6)];
  std::vector<int> divisors;
  for (int x = 1; x <= c.world_size; x++)
    if (c.world_size % x == 0) divisors.push_back(x);
  c.local_world_size = divisors[UniformInt(rng, 0, (int)divisors.size() - 1)];
  c.seed = rng();
  if (c.type == DA_PATTERN_ADAPTIVE_LOAD_BALANCED && Chance(rng, 0.7)) {
    for (int p = 0; p < c.world_size; p++) cfg.scales.push_back(Uniform(rng, 0.0, 3.0));
  }
  return cfg;
}

// Owning reference to a layout.
struct LayoutDeleter {
  void operator()(da_pattern_layout* l) const { da_pattern_layout_release(l); }
};
using Layout = std::unique_ptr<da_pattern_layout, LayoutDeleter>;

inline Layout Create(Config& cfg) {
  da_pattern_layout* l = nullptr;
  da_status st = da_pattern_layout_create(cfg.get(), &l);
  EXPECT_EQ(st, DA_STATUS_SUCCESS) << da_last_error() << "\n" << cfg.Describe();
  return Layout(l);
}

// One (head, row) of a BSR view.
struct Row {
  std::vector<int32_t> cols;
  std::vector<uint8_t> levels;
};

inline da_pattern_bsr View(const da_pattern_layout* l) {
  da_pattern_bsr b;
  EXPECT_EQ(da_pattern_layout_bsr(l, &b), DA_STATUS_SUCCESS) << da_last_error();
  return b;
}

inline Row GetRow(const da_pattern_bsr& b, int h, int64_t i) {
  const int64_t rows = b.row_end - b.row_begin;
  const int64_t* off = b.row_offsets + (size_t)h * (rows + 1);
  Row r;
  for (int64_t x = off[i - b.row_begin]; x < off[i - b.row_begin + 1]; x++) {
    r.cols.push_back(b.col_indices[x]);
    r.levels.push_back(b.levels[x]);
  }
  return r;
}

inline bool IsIdentChar(char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         ch == '_';
}

// Whether `message` mentions `name` as a whole identifier.
inline bool Names(const std::string& message, const std::string& name) {
  for (size_t at = message.find(name); at != std::string::npos; at = message.find(name, at + 1)) {
    bool left = at == 0 || !IsIdentChar(message[at - 1]);
    bool right = at + name.size() >= message.size() || !IsIdentChar(message[at + name.size()]);
    if (left && right) return true;
  }
  return false;
}

// status is a failure, and da_last_error() names `field` and contains `value`.
inline ::testing::AssertionResult Rejected(da_status status, const std::string& field,
                                           const std::string& value = "") {
  const std::string message = da_last_error();
  if (status == DA_STATUS_SUCCESS) return ::testing::AssertionFailure() << "accepted";
  if (!Names(message, field))
    return ::testing::AssertionFailure() << "\"" << message << "\" does not name " << field;
  if (!value.empty() && message.find(value) == std::string::npos)
    return ::testing::AssertionFailure() << "\"" << message << "\" does not show " << value;
  return ::testing::AssertionSuccess() << message;
}

}  // namespace da_pattern_test

#endif  // DA_TESTS_SPARSE_PATTERN_TEST_UTIL_H
