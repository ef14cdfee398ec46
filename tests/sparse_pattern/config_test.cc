// Every rule of da_pattern_config: a failure status and a sentence naming the field
// and its value; defaults; shard rows; names.
#include <math.h>

#include <limits>

#include "tests/sparse_pattern/pattern_test_util.h"

namespace {

using da_pattern_test::Rejected;

da_pattern_config Valid() {
  da_pattern_config c = da_pattern_config_default();
  c.seqlen = 1000;
  c.num_heads = 4;
  c.world_size = 4;
  c.local_world_size = 2;
  return c;
}

da_status Check(const da_pattern_config& c) { return da_pattern_config_validate(&c); }

TEST(PatternConfigTest, DefaultsAreDocumented) {
  da_pattern_config c = da_pattern_config_default();
  EXPECT_EQ(c.seqlen, 0);
  EXPECT_EQ(c.num_heads, 0);
  EXPECT_EQ(c.block_size, 128);
  EXPECT_EQ(c.causal, 0);
  EXPECT_EQ(c.type, DA_PATTERN_HIERARCHICAL);
  EXPECT_DOUBLE_EQ(c.local_density, 0.4);
  EXPECT_DOUBLE_EQ(c.global_density, 0.1);
  EXPECT_DOUBLE_EQ(c.inter_node_density, 0.05);
  EXPECT_EQ(c.local_window_blocks, 4);
  EXPECT_EQ(c.num_patterns, 0);
  EXPECT_EQ(c.world_size, 1);
  EXPECT_EQ(c.local_world_size, 1);
  EXPECT_EQ(c.rank_density_scale, nullptr);
  EXPECT_EQ(c.row_begin, 0);
  EXPECT_EQ(c.row_end, 0);
  EXPECT_NE(Check(c), DA_STATUS_SUCCESS);  // seqlen and heads must be set
  EXPECT_EQ(Check(Valid()), DA_STATUS_SUCCESS) << da_last_error();
}

TEST(PatternConfigTest, EveryRuleNamesFieldAndValue) {
  struct Case {
    const char* field;
    const char* value;
    void (*mutate)(da_pattern_config&);
  };
  static double scales[4] = {1.0, -1.0, 1.0, 1.0};
  static double inf_scales[4] = {1.0, 1.0, INFINITY, 1.0};
  const Case cases[] = {
      {"seqlen", "0", [](da_pattern_config& c) { c.seqlen = 0; }},
      {"block_size", "96", [](da_pattern_config& c) { c.block_size = 96; }},
      {"block_size", "0", [](da_pattern_config& c) { c.block_size = 0; }},
      {"block_size", "131072", [](da_pattern_config& c) { c.block_size = 131072; }},
      {"seqlen", "4294967296",
       [](da_pattern_config& c) {
         c.seqlen = 1ll << 32;
         c.block_size = 1;
       }},
      {"num_heads", "0", [](da_pattern_config& c) { c.num_heads = 0; }},
      {"num_heads", "5000", [](da_pattern_config& c) { c.num_heads = 5000; }},
      {"type", "7", [](da_pattern_config& c) { c.type = static_cast<da_pattern_type>(7); }},
      {"local_density", "1.5", [](da_pattern_config& c) { c.local_density = 1.5; }},
      {"local_density", "nan", [](da_pattern_config& c) { c.local_density = NAN; }},
      {"global_density", "-0.1", [](da_pattern_config& c) { c.global_density = -0.1; }},
      {"inter_node_density", "2", [](da_pattern_config& c) { c.inter_node_density = 2.0; }},
      {"local_window_blocks", "-1", [](da_pattern_config& c) { c.local_window_blocks = -1; }},
      {"num_patterns", "17", [](da_pattern_config& c) { c.num_patterns = 17; }},
      {"segment_lengths", "0",
       [](da_pattern_config& c) {
         c.num_patterns = 1;
         c.segment_lengths[0] = 0;
         c.dilation_rates[0] = 1;
       }},
      {"dilation_rates", "9",
       [](da_pattern_config& c) {
         c.num_patterns = 1;
         c.segment_lengths[0] = 8;
         c.dilation_rates[0] = 9;
       }},
      {"dilation_rates", "0",
       [](da_pattern_config& c) {
         c.num_patterns = 1;
         c.segment_lengths[0] = 8;
         c.dilation_rates[0] = 0;
       }},
      {"mode", "5", [](da_pattern_config& c) { c.mode = static_cast<da_attention_mode>(5); }},
      {"mode", "HEAD_GROUP", [](da_pattern_config& c) { c.mode = DA_MODE_HEAD_GROUP; }},
      {"offset_policy", "9",
       [](da_pattern_config& c) { c.offset_policy = static_cast<da_offset_policy>(9); }},
      {"world_size", "0", [](da_pattern_config& c) { c.world_size = 0; }},
      {"local_world_size", "5", [](da_pattern_config& c) { c.local_world_size = 5; }},
      {"local_world_size", "0", [](da_pattern_config& c) { c.local_world_size = 0; }},
      {"world_size", "6",
       [](da_pattern_config& c) {
         c.world_size = 6;
         c.local_world_size = 4;
       }},
      {"rank_density_scale", "hierarchical",
       [](da_pattern_config& c) { c.rank_density_scale = scales; }},
      {"rank_density_scale", "-1",
       [](da_pattern_config& c) {
         c.type = DA_PATTERN_ADAPTIVE_LOAD_BALANCED;
         c.rank_density_scale = scales;
       }},
      {"rank_density_scale", "inf",
       [](da_pattern_config& c) {
         c.type = DA_PATTERN_ADAPTIVE_LOAD_BALANCED;
         c.rank_density_scale = inf_scales;
       }},
      {"row_begin", "8",
       [](da_pattern_config& c) {
         c.row_begin = 8;
         c.row_end = 8;
       }},
      {"row_end", "9", [](da_pattern_config& c) { c.row_end = 9; }},
      {"row_begin", "-1", [](da_pattern_config& c) { c.row_begin = -1; }},
  };
  for (const Case& x : cases) {
    da_pattern_config c = Valid();
    x.mutate(c);
    EXPECT_TRUE(Rejected(Check(c), x.field, x.value)) << x.field << " = " << x.value;
    EXPECT_EQ(Check(c), DA_STATUS_INVALID_ARGUMENT);
  }
  EXPECT_TRUE(Rejected(da_pattern_config_validate(nullptr), "config"));
}

TEST(PatternConfigTest, EdgeValuesAreAccepted) {
  da_pattern_config c = Valid();
  c.seqlen = 1;
  c.block_size = 1;
  c.num_heads = 1;
  c.world_size = 1;
  c.local_world_size = 1;
  EXPECT_EQ(Check(c), DA_STATUS_SUCCESS) << da_last_error();
  c = Valid();
  c.local_density = c.global_density = c.inter_node_density = 0.0;
  c.local_window_blocks = 0;
  EXPECT_EQ(Check(c), DA_STATUS_SUCCESS);
  c.local_density = c.global_density = c.inter_node_density = 1.0;
  c.block_size = 65536;
  c.num_patterns = 16;
  for (int p = 0; p < 16; p++) c.segment_lengths[p] = c.dilation_rates[p] = 1 + p;
  EXPECT_EQ(Check(c), DA_STATUS_SUCCESS) << da_last_error();
  c = Valid();
  c.world_size = 64;  // more ranks than the 8 blocks: empty shards are fine
  c.local_world_size = 8;
  EXPECT_EQ(Check(c), DA_STATUS_SUCCESS) << da_last_error();
}

TEST(PatternConfigTest, ShardRowsSplitEvenly) {
  da_pattern_config c = Valid();
  c.seqlen = 10 * 128;  // 10 blocks over 4 ranks: 2, 3, 2, 3
  int64_t begin = 0, end = 0, expect_begin = 0;
  const int64_t sizes[] = {2, 3, 2, 3};
  for (int rank = 0; rank < 4; rank++) {
    ASSERT_EQ(da_pattern_shard_rows(&c, rank, &begin, &end), DA_STATUS_SUCCESS);
    EXPECT_EQ(begin, expect_begin);
    EXPECT_EQ(end - begin, sizes[rank]);
    expect_begin = end;
  }
  EXPECT_TRUE(Rejected(da_pattern_shard_rows(&c, 4, &begin, &end), "rank", "4"));
  EXPECT_TRUE(Rejected(da_pattern_shard_rows(&c, -1, &begin, &end), "rank", "-1"));
  EXPECT_NE(da_pattern_shard_rows(&c, 0, nullptr, &end), DA_STATUS_SUCCESS);
}

TEST(PatternConfigTest, Names) {
  EXPECT_STREQ(da_pattern_type_name(DA_PATTERN_HIERARCHICAL), "hierarchical");
  EXPECT_STREQ(da_pattern_type_name(DA_PATTERN_NODE_LOCAL), "node_local");
  EXPECT_STREQ(da_pattern_type_name(DA_PATTERN_BANDWIDTH_AWARE), "bandwidth_aware");
  EXPECT_STREQ(da_pattern_type_name(DA_PATTERN_ADAPTIVE_LOAD_BALANCED), "adaptive_load_balanced");
  EXPECT_STREQ(da_pattern_type_name(static_cast<da_pattern_type>(9)), "unknown");
  EXPECT_STREQ(da_pattern_level_name(DA_PATTERN_LEVEL_LOCAL), "local");
  EXPECT_STREQ(da_pattern_level_name(DA_PATTERN_LEVEL_GLOBAL), "global");
  EXPECT_STREQ(da_pattern_level_name(DA_PATTERN_LEVEL_INTER_NODE), "inter_node");
  EXPECT_STREQ(da_pattern_level_name(static_cast<da_pattern_level>(3)), "unknown");
}

TEST(PatternConfigTest, CountAndCreateRejectInvalidConfigs) {
  da_pattern_config c = Valid();
  c.block_size = 3;
  da_pattern_stats st;
  da_pattern_layout* l = nullptr;
  EXPECT_TRUE(Rejected(da_pattern_count(&c, &st), "block_size", "3"));
  EXPECT_TRUE(Rejected(da_pattern_layout_create(&c, &l), "block_size", "3"));
  EXPECT_EQ(l, nullptr);
  c = Valid();
  EXPECT_TRUE(Rejected(da_pattern_count(&c, nullptr), "stats"));
  EXPECT_TRUE(Rejected(da_pattern_layout_create(&c, nullptr), "layout"));
}

}  // namespace
