// config_test_util.h: what the dist_config tests share: a failure-sentence check,
// random valid configs, and field-by-field equality.
#ifndef DA_TESTS_DIST_CONFIG_TEST_UTIL_H
#define DA_TESTS_DIST_CONFIG_TEST_UTIL_H

#include <gtest/gtest.h>
#include <string.h>

#include <random>
#include <sstream>
#include <string>

#include "dist_config/da_config.h"

namespace da_config_test {

// status is `want` (any failure if want is SUCCESS... never), and da_last_error()
// contains every one of `parts` (the field path, its value, the rule).
inline ::testing::AssertionResult Fails(da_status status, da_status want,
                                        std::initializer_list<std::string> parts) {
  const std::string message = da_last_error();
  if (status != want)
    return ::testing::AssertionFailure() << "status " << da_status_string(status) << ", wanted "
                                         << da_status_string(want) << " (\"" << message << "\")";
  for (const std::string& part : parts)
    if (message.find(part) == std::string::npos)
      return ::testing::AssertionFailure() << "\"" << message << "\" lacks \"" << part << "\"";
  return ::testing::AssertionSuccess();
}

inline bool Same(const da_config& a, const da_config& b) {
  const da_config_attention &x = a.attention, &y = b.attention;
  if (x.num_segment_lengths != y.num_segment_lengths ||
      x.num_dilation_rates != y.num_dilation_rates)
    return false;
  for (int i = 0; i < x.num_segment_lengths; i++)
    if (x.segment_lengths[i] != y.segment_lengths[i] || x.dilation_rates[i] != y.dilation_rates[i])
      return false;
  if (x.mode != y.mode || x.offset_policy != y.offset_policy || x.causal != y.causal ||
      x.softmax_scale != y.softmax_scale || x.num_heads != y.num_heads ||
      x.num_kv_heads != y.num_kv_heads || x.head_dim != y.head_dim || x.dropout != y.dropout)
    return false;
  const da_config_sparse &s = a.sparse, &t = b.sparse;
  if (s.pattern_type != t.pattern_type || s.block_size != t.block_size || s.density != t.density ||
      s.local_density != t.local_density || s.global_density != t.global_density ||
      s.inter_node_density != t.inter_node_density ||
      s.local_window_blocks != t.local_window_blocks || s.seed != t.seed ||
      s.gradient_compression_ratio != t.gradient_compression_ratio ||
      s.load_balance_threshold != t.load_balance_threshold || s.adaptive_rate != t.adaptive_rate ||
      s.enable_async_communication != t.enable_async_communication ||
      s.enable_gradient_compression != t.enable_gradient_compression ||
      s.enable_load_balancing != t.enable_load_balancing ||
      s.enable_memory_pool != t.enable_memory_pool ||
      s.enable_pinned_memory != t.enable_pinned_memory ||
      s.gradient_bucket_size_mb != t.gradient_bucket_size_mb ||
      s.gradient_bucket_count != t.gradient_bucket_count)
    return false;
  return a.topology.world_size == b.topology.world_size && a.topology.rank == b.topology.rank &&
         a.topology.local_world_size == b.topology.local_world_size;
}

inline double U(std::mt19937_64& rng, double lo, double hi) {
  return std::uniform_real_distribution<double>(lo, hi)(rng);
}
inline int I(std::mt19937_64& rng, int lo, int hi) {
  return std::uniform_int_distribution<int>(lo, hi)(rng);
}

// A valid config with arbitrary (not round) values everywhere.
inline da_config RandomConfig(std::mt19937_64& rng) {
  da_config c = da_config_default();
  da_config_attention& a = c.attention;
  a.num_segment_lengths = a.num_dilation_rates = I(rng, 1, DA_MAX_PATTERNS);
  for (int i = 0; i < a.num_segment_lengths; i++) {
    a.segment_lengths[i] = I(rng, 1, 1 << 20);
    a.dilation_rates[i] = I(rng, 1, std::min(a.segment_lengths[i], 64));
  }
  a.mode = static_cast<da_attention_mode>(I(rng, 0, 1));
  a.offset_policy = static_cast<da_offset_policy>(I(rng, 0, 3));
  a.causal = I(rng, 0, 1);
  a.softmax_scale = I(rng, 0, 1) ? 0.0 : (double)(float)U(rng, 1e-3, 2.0);
  a.num_heads = I(rng, 1, 64);
  a.num_kv_heads = I(rng, 0, 1) ? 0 : 1;
  a.head_dim = I(rng, 1, DA_MAX_HEAD_DIM);
  da_config_sparse& s = c.sparse;
  s.pattern_type = static_cast<da_pattern_type>(I(rng, 0, 3));
  s.block_size = 1 << I(rng, 0, 16);
  s.density = U(rng, 1e-9, 1.0);
  s.local_density = U(rng, 0.0, 1.0);
  s.global_density = U(rng, 0.0, 1.0);
  s.inter_node_density = U(rng, 0.0, s.global_density);
  s.local_window_blocks = I(rng, 0, 1 << 20);
  s.seed = std::uniform_int_distribution<uint64_t>(0, DA_CONFIG_MAX_SEED)(rng);
  s.gradient_compression_ratio = U(rng, 1e-9, 1.0);
  s.load_balance_threshold = U(rng, 0.0, 1.0);
  s.adaptive_rate = U(rng, 0.0, 0.999);
  s.enable_async_communication = I(rng, 0, 1);
  s.enable_gradient_compression = I(rng, 0, 1);
  s.enable_load_balancing = s.pattern_type == DA_PATTERN_ADAPTIVE_LOAD_BALANCED ? 1 : I(rng, 0, 1);
  s.enable_memory_pool = I(rng, 0, 1);
  s.enable_pinned_memory = I(rng, 0, 1);
  s.gradient_bucket_size_mb = U(rng, 1e-6, 65536.0);
  s.gradient_bucket_count = I(rng, 1, 65536);
  if (I(rng, 0, 2) > 0) {
    c.topology.local_world_size = I(rng, 1, 8);
    c.topology.world_size = c.topology.local_world_size * I(rng, 1, 16);
    c.topology.rank = I(rng, 0, c.topology.world_size - 1);
  }
  return c;
}

}  // namespace da_config_test

#endif  // DA_TESTS_DIST_CONFIG_TEST_UTIL_H
