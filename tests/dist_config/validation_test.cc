// The defaults (every documented value) and every validation rule of da_config:
// a failure status and a sentence with the field's JSON path, its value and the
// rule; the conversions to attention params and to the pattern config; the budget.
#include <math.h>

#include <functional>
#include <vector>

#include "tests/dist_config/config_test_util.h"

namespace {

using da_config_test::Fails;

TEST(ConfigDefaultsTest, EveryDocumentedValue) {
  da_config c = da_config_default();
  const int w[] = {2048, 4096, 8192, 16384, 32768}, r[] = {1, 2, 4, 8, 16};
  ASSERT_EQ(c.attention.num_segment_lengths, 5);
  ASSERT_EQ(c.attention.num_dilation_rates, 5);
  for (int i = 0; i < 5; i++) {
    EXPECT_EQ(c.attention.segment_lengths[i], w[i]);
    EXPECT_EQ(c.attention.dilation_rates[i], r[i]);
  }
  EXPECT_EQ(c.attention.mode, DA_MODE_LONGNET);
  EXPECT_EQ(c.attention.offset_policy, DA_OFFSET_DEFAULT);
  EXPECT_EQ(c.attention.causal, 0);
  EXPECT_EQ(c.attention.softmax_scale, 0.0);
  EXPECT_EQ(c.attention.num_heads, 12);
  EXPECT_EQ(c.attention.num_kv_heads, 0);
  EXPECT_EQ(c.attention.head_dim, 64);
  EXPECT_EQ(c.attention.dropout, 0.0);
  EXPECT_EQ(c.sparse.pattern_type, DA_PATTERN_HIERARCHICAL);
  EXPECT_EQ(c.sparse.block_size, 128);
  EXPECT_EQ(c.sparse.density, 0.25);
  EXPECT_EQ(c.sparse.local_density, 0.4);
  EXPECT_EQ(c.sparse.global_density, 0.1);
  EXPECT_EQ(c.sparse.inter_node_density, 0.05);
  EXPECT_EQ(c.sparse.local_window_blocks, 4);
  EXPECT_EQ(c.sparse.seed, 0u);
  EXPECT_EQ(c.sparse.gradient_compression_ratio, 0.1);
  EXPECT_EQ(c.sparse.load_balance_threshold, 0.15);
  EXPECT_EQ(c.sparse.adaptive_rate, 0.05);
  EXPECT_EQ(c.sparse.enable_async_communication, 1);
  EXPECT_EQ(c.sparse.enable_gradient_compression, 1);
  EXPECT_EQ(c.sparse.enable_load_balancing, 1);
  EXPECT_EQ(c.sparse.enable_memory_pool, 1);
  EXPECT_EQ(c.sparse.enable_pinned_memory, 1);
  EXPECT_EQ(c.sparse.gradient_bucket_size_mb, 25.0);
  EXPECT_EQ(c.sparse.gradient_bucket_count, 32);
  EXPECT_EQ(c.topology.world_size, 0);
  EXPECT_EQ(c.topology.rank, -1);
  EXPECT_EQ(c.topology.local_world_size, 0);
  EXPECT_EQ(da_config_validate(&c), DA_STATUS_SUCCESS) << da_last_error();
}

struct Rule {
  const char* path;   // the field, as JSON spells it
  const char* value;  // as the message prints it
  const char* rule;   // a word of the rule
  std::function<void(da_config&)> mutate;
  da_status status = DA_STATUS_INVALID_ARGUMENT;
};

TEST(ConfigValidationTest, EveryRuleNamesFieldValueAndRule) {
  const std::vector<Rule> rules = {
      {"attention.dilation_rates", "has 4", "one dilation rate",
       [](da_config& c) { c.attention.num_dilation_rates = 4; }},
      {"attention.segment_lengths", "has 0", "[1, 16]",
       [](da_config& c) { c.attention.num_segment_lengths = c.attention.num_dilation_rates = 0; }},
      {"attention.segment_lengths", "has 17", "[1, 16]",
       [](da_config& c) { c.attention.num_segment_lengths = c.attention.num_dilation_rates = 17; }},
      {"attention.segment_lengths[2]", "=0", ">= 1",
       [](da_config& c) { c.attention.segment_lengths[2] = 0; }},
      {"attention.dilation_rates[1]", "=0", "[1,",
       [](da_config& c) { c.attention.dilation_rates[1] = 0; }},
      {"attention.dilation_rates[0]", "=4096", "segment_lengths[0]=2048",
       [](da_config& c) { c.attention.dilation_rates[0] = 4096; }},
      {"attention.mode", "=2", "longnet",
       [](da_config& c) { c.attention.mode = static_cast<da_attention_mode>(2); }},
      {"attention.offset_policy", "=4", "block",
       [](da_config& c) { c.attention.offset_policy = static_cast<da_offset_policy>(4); }},
      {"attention.softmax_scale", "=-0.5", "positive",
       [](da_config& c) { c.attention.softmax_scale = -0.5; }},
      {"attention.softmax_scale", "=1e+39", "finite",
       [](da_config& c) { c.attention.softmax_scale = 1e39; }},
      {"attention.softmax_scale", "=nan", "positive",
       [](da_config& c) { c.attention.softmax_scale = NAN; }},
      {"attention.num_heads", "=0", ">= 1", [](da_config& c) { c.attention.num_heads = 0; }},
      {"attention.num_kv_heads", "=5", "divide",
       [](da_config& c) { c.attention.num_kv_heads = 5; }},
      {"attention.num_kv_heads", "=-1", "divide",
       [](da_config& c) { c.attention.num_kv_heads = -1; }},
      {"attention.head_dim", "=0", "[1, 256]", [](da_config& c) { c.attention.head_dim = 0; }},
      {"attention.head_dim", "=257", "[1, 256]", [](da_config& c) { c.attention.head_dim = 257; }},
      {"attention.dropout", "=1", "[0, 1)", [](da_config& c) { c.attention.dropout = 1.0; }},
      {"attention.dropout", "=-0.1", "[0, 1)", [](da_config& c) { c.attention.dropout = -0.1; }},
      {"attention.dropout", "=0.1", "not supported",
       [](da_config& c) { c.attention.dropout = 0.1; }, DA_STATUS_NOT_SUPPORTED},
      {"sparse.pattern_type", "=4", "hierarchical",
       [](da_config& c) { c.sparse.pattern_type = static_cast<da_pattern_type>(4); }},
      {"sparse.block_size", "=96", "power of two", [](da_config& c) { c.sparse.block_size = 96; }},
      {"sparse.block_size", "=0", "power of two", [](da_config& c) { c.sparse.block_size = 0; }},
      {"sparse.block_size", "=131072", "[1, 65536]",
       [](da_config& c) { c.sparse.block_size = 131072; }},
      {"sparse.density", "=0", "(0, 1]", [](da_config& c) { c.sparse.density = 0.0; }},
      {"sparse.density", "=1.5", "(0, 1]", [](da_config& c) { c.sparse.density = 1.5; }},
      {"sparse.local_density", "=-0.1", "[0, 1]",
       [](da_config& c) { c.sparse.local_density = -0.1; }},
      {"sparse.local_density", "=nan", "[0, 1]",
       [](da_config& c) { c.sparse.local_density = NAN; }},
      {"sparse.global_density", "=1.01", "[0, 1]",
       [](da_config& c) { c.sparse.global_density = 1.01; }},
      {"sparse.inter_node_density", "=2", "[0, 1]",
       [](da_config& c) { c.sparse.inter_node_density = 2.0; }},
      {"sparse.inter_node_density", "=0.2", "exceeds sparse.global_density=0.1",
       [](da_config& c) { c.sparse.inter_node_density = 0.2; }},
      {"sparse.local_window_blocks", "=-1", "[0,",
       [](da_config& c) { c.sparse.local_window_blocks = -1; }},
      {"sparse.seed", "=9007199254740993", "2^53",
       [](da_config& c) { c.sparse.seed = DA_CONFIG_MAX_SEED + 1; }},
      {"sparse.gradient_compression_ratio", "=0", "(0, 1]",
       [](da_config& c) { c.sparse.gradient_compression_ratio = 0.0; }},
      {"sparse.gradient_compression_ratio", "=1.2", "(0, 1]",
       [](da_config& c) { c.sparse.gradient_compression_ratio = 1.2; }},
      {"sparse.load_balance_threshold", "=-0.15", "[0, 1]",
       [](da_config& c) { c.sparse.load_balance_threshold = -0.15; }},
      {"sparse.load_balance_threshold", "=3", "[0, 1]",
       [](da_config& c) { c.sparse.load_balance_threshold = 3.0; }},
      {"sparse.adaptive_rate", "=1", "[0, 1)", [](da_config& c) { c.sparse.adaptive_rate = 1.0; }},
      {"sparse.adaptive_rate", "=-0.05", "[0, 1)",
       [](da_config& c) { c.sparse.adaptive_rate = -0.05; }},
      {"sparse.gradient_bucket_size_mb", "=0", "(0, 65536]",
       [](da_config& c) { c.sparse.gradient_bucket_size_mb = 0.0; }},
      {"sparse.gradient_bucket_size_mb", "=inf", "(0, 65536]",
       [](da_config& c) { c.sparse.gradient_bucket_size_mb = INFINITY; }},
      {"sparse.gradient_bucket_count", "=0", "[1, 65536]",
       [](da_config& c) { c.sparse.gradient_bucket_count = 0; }},
      {"sparse.gradient_bucket_count", "=70000", "[1, 65536]",
       [](da_config& c) { c.sparse.gradient_bucket_count = 70000; }},
      {"sparse.enable_load_balancing", "=true", "adaptive_load_balanced",
       [](da_config& c) {
         c.sparse.pattern_type = DA_PATTERN_ADAPTIVE_LOAD_BALANCED;
         c.sparse.enable_load_balancing = 0;
       }},
      {"topology.world_size", "=-2", "[1, 1048576]",
       [](da_config& c) { c.topology.world_size = -2; }},
      {"topology.world_size", "=2000000", "[1, 1048576]",
       [](da_config& c) { c.topology.world_size = 2000000; }},
      {"topology.rank", "=-3", ">= 0", [](da_config& c) { c.topology.rank = -3; }},
      {"topology.rank", "=8", "topology.world_size=8",
       [](da_config& c) {
         c.topology.world_size = 8;
         c.topology.rank = 8;
       }},
      {"topology.local_world_size", "=-1", "[1,",
       [](da_config& c) { c.topology.local_world_size = -1; }},
      {"topology.local_world_size", "=3", "does not divide topology.world_size=8",
       [](da_config& c) {
         c.topology.world_size = 8;
         c.topology.local_world_size = 3;
       }},
  };
  for (const Rule& rule : rules) {
    da_config c = da_config_default();
    rule.mutate(c);
    const std::string path = rule.path;
    EXPECT_TRUE(Fails(da_config_validate(&c), rule.status, {path, rule.value, rule.rule}))
        << path << rule.value;
  }
  EXPECT_TRUE(Fails(da_config_validate(nullptr), DA_STATUS_INVALID_ARGUMENT, {"config"}));
}

TEST(ConfigValidationTest, EdgesAndUnsetTopologyAreValid) {
  da_config c = da_config_default();
  c.sparse.density = 1.0;
  c.sparse.local_density = c.sparse.global_density = c.sparse.inter_node_density = 0.0;
  c.sparse.block_size = 1;
  c.sparse.local_window_blocks = 0;
  c.sparse.seed = DA_CONFIG_MAX_SEED;
  c.sparse.gradient_compression_ratio = 1.0;
  c.sparse.load_balance_threshold = 0.0;
  c.sparse.adaptive_rate = 0.0;
  c.sparse.enable_load_balancing = 0;
  c.attention.num_kv_heads = 1;  // MQA
  c.attention.softmax_scale = 0.125;
  c.topology.world_size = 16;  // rank and local size still unset
  EXPECT_EQ(da_config_validate(&c), DA_STATUS_SUCCESS) << da_last_error();
  c.topology.rank = 15;
  c.topology.local_world_size = 16;
  EXPECT_EQ(da_config_validate(&c), DA_STATUS_SUCCESS) << da_last_error();
  c.sparse.inter_node_density = c.sparse.global_density = 0.3;  // equal is fine
  EXPECT_EQ(da_config_validate(&c), DA_STATUS_SUCCESS) << da_last_error();
}

TEST(ConfigValidationTest, TheAttentionComponentAgrees) {
  // Head-group mode with more patterns than heads: the attention rules catch it
  // through da_attention_validate, and the message says where it came from.
  da_config c = da_config_default();
  c.attention.mode = DA_MODE_HEAD_GROUP;
  c.attention.num_heads = 3;
  da_status st = da_config_validate(&c);
  da_attention_params p;
  ASSERT_EQ(da_config_attention_params(&c, &p), DA_STATUS_SUCCESS);
  da_attention_batch b = {1, 1, nullptr};
  EXPECT_EQ(st == DA_STATUS_SUCCESS, da_attention_validate(&p, &b) == DA_STATUS_SUCCESS);
  if (st != DA_STATUS_SUCCESS) {
    EXPECT_NE(std::string(da_last_error()).find("attention"), std::string::npos);
  }
}

TEST(ConfigViewsTest, AttentionParamsBorrowTheConfig) {
  da_config c = da_config_default();
  c.attention.causal = 1;
  c.attention.softmax_scale = 0.25;
  c.attention.num_kv_heads = 4;
  da_attention_params p;
  ASSERT_EQ(da_config_attention_params(&c, &p), DA_STATUS_SUCCESS);
  EXPECT_EQ(p.segment_lengths, c.attention.segment_lengths);
  EXPECT_EQ(p.num_segment_lengths, 5);
  EXPECT_EQ(p.dilation_rates, c.attention.dilation_rates);
  EXPECT_EQ(p.causal, 1);
  EXPECT_EQ(p.softmax_scale, 0.25f);
  EXPECT_EQ(p.num_heads, 12);
  EXPECT_EQ(p.num_kv_heads, 4);
  EXPECT_EQ(p.head_dim, 64);
  da_attention_batch b = {1, 100000, nullptr};
  EXPECT_EQ(da_attention_validate(&p, &b), DA_STATUS_SUCCESS) << da_last_error();
}

TEST(ConfigViewsTest, PatternConfigFromTheSections) {
  da_config c = da_config_default();
  da_pattern_config p;
  EXPECT_TRUE(Fails(da_config_to_pattern(&c, 4096, &p), DA_STATUS_INVALID_ARGUMENT,
                    {"topology", "da_config_resolve_topology"}));
  c.topology = {16, 3, 8};
  c.attention.causal = 1;
  c.sparse.pattern_type = DA_PATTERN_BANDWIDTH_AWARE;
  c.sparse.seed = 77;
  c.sparse.local_window_blocks = 2;
  ASSERT_EQ(da_config_to_pattern(&c, 1 << 20, &p), DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_EQ(p.seqlen, 1 << 20);
  EXPECT_EQ(p.block_size, 128);
  EXPECT_EQ(p.num_heads, 12);
  EXPECT_EQ(p.causal, 1);
  EXPECT_EQ(p.type, DA_PATTERN_BANDWIDTH_AWARE);
  EXPECT_EQ(p.local_density, 0.4);
  EXPECT_EQ(p.global_density, 0.1);
  EXPECT_EQ(p.inter_node_density, 0.05);
  EXPECT_EQ(p.local_window_blocks, 2);
  EXPECT_EQ(p.num_patterns, 5);
  EXPECT_EQ(p.segment_lengths[4], 32768);
  EXPECT_EQ(p.dilation_rates[4], 16);
  EXPECT_EQ(p.world_size, 16);
  EXPECT_EQ(p.local_world_size, 8);
  EXPECT_EQ(p.seed, 77u);
  EXPECT_EQ(p.rank_density_scale, nullptr);
  EXPECT_EQ(p.row_begin, 0);
  EXPECT_EQ(p.row_end, 0);
  EXPECT_EQ(da_pattern_config_validate(&p), DA_STATUS_SUCCESS);
  // What only the pattern rules know: the sequence length, a head count beyond 4096.
  EXPECT_TRUE(Fails(da_config_to_pattern(&c, 0, &p), DA_STATUS_INVALID_ARGUMENT,
                    {"seqlen=0", "pattern config"}));
  c.attention.num_heads = 8192;
  EXPECT_TRUE(
      Fails(da_config_to_pattern(&c, 1024, &p), DA_STATUS_INVALID_ARGUMENT, {"num_heads=8192"}));
}

TEST(ConfigViewsTest, BudgetComparesTheExactOverallDensity) {
  da_config c = da_config_default();
  c.topology = {1, 0, 1};
  da_pattern_stats st;
  // One rank: everything is local, so 0.4 of it plus the global rows and columns.
  EXPECT_TRUE(Fails(da_config_check_budget(&c, 1 << 20, &st), DA_STATUS_INVALID_ARGUMENT,
                    {"sparse.density=0.25", "over"}));
  EXPECT_GT(st.density, 0.25);
  // 64 ranks: the local share shrinks, the inter-node links are 5 % of the rest.
  c.topology = {64, 0, 8};
  EXPECT_EQ(da_config_check_budget(&c, 1 << 20, &st), DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_LE(st.density, 0.25);
  EXPECT_GT(st.density, 0.15);
  c.topology = {1, 0, 1};
  c.sparse.density = 1.0;
  EXPECT_EQ(da_config_check_budget(&c, 4096, nullptr), DA_STATUS_SUCCESS);
}

TEST(ConfigNamesTest, EnumSpellings) {
  EXPECT_STREQ(da_config_mode_name(DA_MODE_LONGNET), "longnet");
  EXPECT_STREQ(da_config_mode_name(DA_MODE_HEAD_GROUP), "head_group");
  EXPECT_STREQ(da_config_mode_name(static_cast<da_attention_mode>(7)), "unknown");
  EXPECT_STREQ(da_config_offset_name(DA_OFFSET_BLOCK), "block");
  EXPECT_STREQ(da_config_offset_name(static_cast<da_offset_policy>(-1)), "unknown");
  da_pattern_type t;
  ASSERT_EQ(da_config_pattern_type_from_name("node_local", &t), DA_STATUS_SUCCESS);
  EXPECT_EQ(t, DA_PATTERN_NODE_LOCAL);
  EXPECT_TRUE(Fails(da_config_pattern_type_from_name("ring", &t), DA_STATUS_INVALID_ARGUMENT,
                    {"\"ring\"", "hierarchical"}));
}

}  // namespace
