// JSON in and out: round trips (defaults and random configs), partial documents,
// the deprecated *_sparsity aliases and their warnings, and every kind of bad input
// (malformed JSON with line and column, unknown and duplicate keys at each level,
// wrong types, out-of-range numbers, invalid values), from strings and files, and
// `da config check`.
#include <stdio.h>
#include <stdlib.h>

#include <atomic>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/dist_config/config_test_util.h"

namespace {

using da_config_test::Fails;
using da_config_test::Same;

struct Loaded {
  da_status status;
  da_config config;
  std::vector<std::string> warnings;
};

void Collect(void* ctx, const char* message) {
  static_cast<std::vector<std::string>*>(ctx)->push_back(message);
}

Loaded Load(const std::string& json) {
  Loaded r;
  r.config = da_config_default();
  r.config.sparse.block_size = -7;  // must stay untouched on failure
  da_config_load_options options = {Collect, &r.warnings};
  r.status = da_config_load_string(json.c_str(), &options, &r.config);
  return r;
}

std::string Dump(const da_config& c) {
  char* json = nullptr;
  EXPECT_EQ(da_config_to_json(&c, &json), DA_STATUS_SUCCESS) << da_last_error();
  std::string s = json ? json : "";
  da_config_free_json(json);
  return s;
}

TEST(ConfigJsonTest, EmptyObjectIsTheDefaults) {
  Loaded r = Load("{}");
  ASSERT_EQ(r.status, DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_TRUE(Same(r.config, da_config_default()));
  EXPECT_TRUE(r.warnings.empty());
  r = Load(" {\"attention\": {}, \"sparse\": {}, \"topology\": {}}\n");
  ASSERT_EQ(r.status, DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_TRUE(Same(r.config, da_config_default()));
}

TEST(ConfigJsonTest, DumpHasEveryFieldAndRoundTrips) {
  const da_config defaults = da_config_default();
  const std::string json = Dump(defaults);
  for (const char* key : {"\"segment_lengths\"",
                          "\"dilation_rates\"",
                          "\"mode\": \"longnet\"",
                          "\"offset_policy\": \"default\"",
                          "\"causal\": false",
                          "\"softmax_scale\"",
                          "\"num_heads\": 12",
                          "\"num_kv_heads\": 0",
                          "\"head_dim\": 64",
                          "\"dropout\": 0",
                          "\"pattern_type\": \"hierarchical\"",
                          "\"block_size\": 128",
                          "\"density\": 0.25",
                          "\"local_density\": 0.4",
                          "\"global_density\": 0.1",
                          "\"inter_node_density\": 0.05",
                          "\"local_window_blocks\": 4",
                          "\"seed\": 0",
                          "\"gradient_compression_ratio\": 0.1",
                          "\"load_balance_threshold\": 0.15",
                          "\"adaptive_rate\": 0.05",
                          "\"enable_async_communication\": true",
                          "\"enable_gradient_compression\": true",
                          "\"enable_load_balancing\": true",
                          "\"enable_memory_pool\": true",
                          "\"enable_pinned_memory\": true",
                          "\"gradient_bucket_size_mb\": 25",
                          "\"gradient_bucket_count\": 32",
                          "\"world_size\": null",
                          "\"rank\": null",
                          "\"local_world_size\": null"})
    EXPECT_NE(json.find(key), std::string::npos) << key << " missing from\n" << json;
  Loaded back = Load(json);
  ASSERT_EQ(back.status, DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_TRUE(Same(back.config, defaults));
}

TEST(ConfigJsonTest, RandomConfigsRoundTripExactly) {
  std::mt19937_64 rng(2026);
  for (int it = 0; it < 300; it++) {
    da_config c = da_config_test::RandomConfig(rng);
    ASSERT_EQ(da_config_validate(&c), DA_STATUS_SUCCESS) << da_last_error();
    const std::string json = Dump(c);
    Loaded back = Load(json);
    ASSERT_EQ(back.status, DA_STATUS_SUCCESS) << da_last_error() << "\n" << json;
    ASSERT_TRUE(Same(back.config, c)) << json;
    ASSERT_EQ(Dump(back.config), json);
  }
}

TEST(ConfigJsonTest, PartialDocumentsKeepTheOtherDefaults) {
  Loaded r = Load(R"({"sparse": {"block_size": 64, "pattern_type": "node_local"},
                      "attention": {"segment_lengths": [8, 16], "dilation_rates": [1, 2],
                                    "causal": true, "num_heads": 8, "num_kv_heads": 2,
                                    "offset_policy": "block", "mode": "head_group"},
                      "topology": {"world_size": 16, "rank": 3, "local_world_size": null}})");
  ASSERT_EQ(r.status, DA_STATUS_SUCCESS) << da_last_error();
  da_config want = da_config_default();
  want.sparse.block_size = 64;
  want.sparse.pattern_type = DA_PATTERN_NODE_LOCAL;
  want.attention.num_segment_lengths = want.attention.num_dilation_rates = 2;
  want.attention.segment_lengths[0] = 8;
  want.attention.segment_lengths[1] = 16;
  want.attention.dilation_rates[0] = 1;
  want.attention.dilation_rates[1] = 2;
  want.attention.causal = 1;
  want.attention.num_heads = 8;
  want.attention.num_kv_heads = 2;
  want.attention.offset_policy = DA_OFFSET_BLOCK;
  want.attention.mode = DA_MODE_HEAD_GROUP;
  want.topology.world_size = 16;
  want.topology.rank = 3;
  EXPECT_TRUE(Same(r.config, want));
  // Integers may be written as 128.0 or 1.28e2 (JSON has one number type).
  r = Load(R"({"sparse": {"block_size": 1.28e2, "gradient_bucket_count": 32.0}})");
  ASSERT_EQ(r.status, DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_EQ(r.config.sparse.block_size, 128);
}

TEST(ConfigJsonTest, SparsityAliasesWarnOncePerKey) {
  Loaded r = Load(R"({"sparse": {"sparsity_ratio": 0.3, "local_sparsity": 0.5,
                      "global_sparsity": 0.2, "inter_node_sparsity": 0.1,
                      "adaptive_sparsity_rate": 0.01, "compression_ratio": 0.5}})");
  ASSERT_EQ(r.status, DA_STATUS_SUCCESS) << da_last_error();
  // The original's "sparsity" values were densities: taken as they are.
  EXPECT_EQ(r.config.sparse.density, 0.3);
  EXPECT_EQ(r.config.sparse.local_density, 0.5);
  EXPECT_EQ(r.config.sparse.global_density, 0.2);
  EXPECT_EQ(r.config.sparse.inter_node_density, 0.1);
  EXPECT_EQ(r.config.sparse.adaptive_rate, 0.01);
  EXPECT_EQ(r.config.sparse.gradient_compression_ratio, 0.5);
  ASSERT_EQ(r.warnings.size(), 6u);
  EXPECT_EQ(r.warnings[1],
            "<string>: sparse.local_sparsity is deprecated: use sparse.local_density (same "
            "value: the kept fraction)");
  for (const std::string& w : r.warnings) EXPECT_EQ(w.find('\n'), std::string::npos);
  // Without a callback the warnings go nowhere (the library never prints).
  da_config c;
  EXPECT_EQ(da_config_load_string(R"({"sparse": {"local_sparsity": 0.5}})", nullptr, &c),
            DA_STATUS_SUCCESS);
  // An alias and its key together are a conflict.
  r = Load(R"({"sparse": {"local_density": 0.4, "local_sparsity": 0.4}})");
  EXPECT_TRUE(Fails(r.status, DA_STATUS_PARSE_ERROR,
                    {"sparse.local_density", "sparse.local_sparsity", "same field"}));
  // A dump never writes an alias.
  EXPECT_EQ(Dump(da_config_default()).find("sparsity"), std::string::npos);
}

TEST(ConfigJsonTest, MalformedJsonNamesLineAndColumn) {
  struct Case {
    std::string json;
    std::string where;
  };
  const std::vector<Case> cases = {
      {"{\"sparse\": {\"block_size\": 64,}}", "<string>:1:30:"},
      {"{\n  \"sparse\": {\n    \"density\": 0.25\n    \"block_size\": 64\n  }\n}",
       "<string>:4:5:"},
      {"{\"attention\": {\"segment_lengths\": [1, 2,, 3]}}", "<string>:1:41:"},
      {"{\"attention\": {\"segment_lengths\": [1,2x]}}", "<string>:1:39:"},
      {"{\"sparse\": {\"a\": 1, 5}}", "<string>:1:21:"},
      {"{\"sparse\": {\"a\": \"{,\", x}}", "<string>:1:24:"},
      {"{\"sparse\": {} } trailing", "<string>:1:17:"},
      {"{\"sparse\": {\"density\": .5}}", "<string>:1:24:"},
      {"{\"sparse\": {\"seed\": NaN}}", "<string>:1:21:"},
      {"{\"sparse\": {\"enable_memory_pool\": True}}", "<string>:1:35:"},
      {"{'sparse': {}}", "<string>:1:2:"},
      {"{\"sparse\": {\"block_size\": 64}", "unexpected end of input"},
      {"", "<string>:1:1: malformed JSON: unexpected end of input"},
      {"   \n\t ", "unexpected end of input"},
  };
  for (const Case& c : cases) {
    Loaded r = Load(c.json);
    EXPECT_TRUE(Fails(r.status, DA_STATUS_PARSE_ERROR, {c.where, "malformed JSON"})) << c.json;
    EXPECT_EQ(r.config.sparse.block_size, -7) << "written on failure";
  }
}

TEST(ConfigJsonTest, UnknownKeysAtEveryLevelNameTheirPath) {
  EXPECT_TRUE(Fails(Load(R"({"spares": {}})").status, DA_STATUS_PARSE_ERROR,
                    {"unknown key \"spares\"", "attention, sparse, topology"}));
  EXPECT_TRUE(Fails(Load(R"({"sparse": {"local_desnity": 0.4}})").status, DA_STATUS_PARSE_ERROR,
                    {"unknown key \"sparse.local_desnity\""}));
  EXPECT_TRUE(Fails(Load(R"({"attention": {"heads": 8}})").status, DA_STATUS_PARSE_ERROR,
                    {"\"attention.heads\""}));
  EXPECT_TRUE(Fails(Load(R"({"topology": {"local_rank": 0}})").status, DA_STATUS_PARSE_ERROR,
                    {"\"topology.local_rank\""}));
  // The original's flat keys belong in "sparse" now.
  EXPECT_TRUE(Fails(Load(R"({"local_sparsity": 0.4})").status, DA_STATUS_PARSE_ERROR,
                    {"\"local_sparsity\""}));
  // Aliases are only for the sparse section.
  EXPECT_TRUE(Fails(Load(R"({"attention": {"sparsity_ratio": 0.3}})").status, DA_STATUS_PARSE_ERROR,
                    {"\"attention.sparsity_ratio\""}));
}

TEST(ConfigJsonTest, DuplicateKeysAreErrors) {
  EXPECT_TRUE(Fails(Load(R"({"sparse": {}, "sparse": {}})").status, DA_STATUS_PARSE_ERROR,
                    {"duplicate key \"sparse\""}));
  EXPECT_TRUE(Fails(Load(R"({"sparse": {"block_size": 64, "block_size": 128}})").status,
                    DA_STATUS_PARSE_ERROR, {"duplicate key \"sparse.block_size\""}));
}

TEST(ConfigJsonTest, WrongTypesNameTheKeyAndWhatCame) {
  struct Case {
    std::string json;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {R"([1, 2])", {"expected a JSON object", "an array"}},
      {R"("config")", {"expected a JSON object", "a string"}},
      {R"({"sparse": 3})", {"sparse: expected an object, got a number"}},
      {R"({"sparse": {"block_size": "128"}})",
       {"sparse.block_size: expected an integer, got the string \"128\""}},
      {R"({"sparse": {"block_size": 64.5}})", {"sparse.block_size: expected an integer, got 64.5"}},
      {R"({"sparse": {"block_size": 1e12}})", {"sparse.block_size", "1000000000000"}},
      {R"({"sparse": {"block_size": true}})", {"sparse.block_size", "a boolean"}},
      {R"({"sparse": {"density": "0.25"}})", {"sparse.density: expected a finite number"}},
      {R"({"sparse": {"density": 1e999}})", {"sparse.density: expected a finite number", "inf"}},
      {R"({"sparse": {"density": null}})", {"sparse.density", "null"}},
      {R"({"sparse": {"enable_memory_pool": 1}})",
       {"sparse.enable_memory_pool: expected true or false, got 1"}},
      {R"({"sparse": {"pattern_type": "ring"}})",
       {"sparse.pattern_type: \"ring\" is not one of \"hierarchical\"", "\"node_local\"",
        "\"bandwidth_aware\"", "\"adaptive_load_balanced\""}},
      {R"({"sparse": {"pattern_type": 0}})", {"sparse.pattern_type: expected one of"}},
      {R"({"sparse": {"seed": -1}})", {"sparse.seed: expected an integer in [0, 2^53], got -1"}},
      {R"({"sparse": {"seed": 1e17}})", {"sparse.seed", "2^53"}},
      {R"({"attention": {"mode": "dilated"}})",
       {"attention.mode", "\"longnet\"", "\"head_group\""}},
      {R"({"attention": {"offset_policy": "HEAD"}})", {"attention.offset_policy", "\"head\""}},
      {R"({"attention": {"segment_lengths": 2048}})",
       {"attention.segment_lengths: expected an array of integers, got 2048"}},
      {R"({"attention": {"segment_lengths": [2048, "4096"], "dilation_rates": [1, 2]}})",
       {"attention.segment_lengths[1]: expected an integer, got the string \"4096\""}},
      {R"({"attention": {"segment_lengths": [], "dilation_rates": []}})",
       {"attention.segment_lengths: the array is empty"}},
      {R"({"attention": {"segment_lengths": [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}})",
       {"attention.segment_lengths: more than 16 values"}},
      {R"({"attention": {"causal": "yes"}})", {"attention.causal", "the string \"yes\""}},
      {R"({"topology": {"rank": "0"}})", {"topology.rank: expected an integer or null"}},
      {R"({"topology": {"world_size": 2.5}})", {"topology.world_size", "2.5"}},
  };
  for (const Case& c : cases) {
    Loaded r = Load(c.json);
    std::vector<std::string> parts = c.parts;
    ::testing::AssertionResult ok = Fails(r.status, DA_STATUS_PARSE_ERROR, {"<string>"});
    for (const std::string& p : parts)
      if (ok) ok = Fails(r.status, DA_STATUS_PARSE_ERROR, {p});
    EXPECT_TRUE(ok) << c.json;
    EXPECT_EQ(r.config.sparse.block_size, -7);
  }
}

TEST(ConfigJsonTest, ValidationRulesApplyAfterParsing) {
  EXPECT_TRUE(Fails(Load(R"({"sparse": {"block_size": 96}})").status, DA_STATUS_INVALID_ARGUMENT,
                    {"<string>: sparse.block_size=96 must be a power of two"}));
  EXPECT_TRUE(Fails(Load(R"({"sparse": {"inter_node_density": 0.3}})").status,
                    DA_STATUS_INVALID_ARGUMENT,
                    {"sparse.inter_node_density=0.3", "global_density"}));
  EXPECT_TRUE(Fails(Load(R"({"attention": {"dropout": 0.1}})").status, DA_STATUS_NOT_SUPPORTED,
                    {"attention.dropout=0.1"}));
  EXPECT_TRUE(Fails(Load(R"({"attention": {"segment_lengths": [8]}})").status,
                    DA_STATUS_INVALID_ARGUMENT, {"attention.segment_lengths has 1", "has 5"}));
  EXPECT_TRUE(Fails(Load(R"({"topology": {"world_size": 4, "rank": 4}})").status,
                    DA_STATUS_INVALID_ARGUMENT, {"topology.rank=4"}));
}

std::string TempPath(const std::string& name) {
  const char* dir = getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/" + name;
}

std::string Write(const std::string& name, const std::string& text) {
  const std::string path = TempPath(name);
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

TEST(ConfigJsonTest, FilesLoadAndNameThemselves) {
  const std::string path = Write("good.json", "{\n  \"sparse\": {\"local_sparsity\": 0.3}\n}\n");
  std::vector<std::string> warnings;
  da_config_load_options options = {Collect, &warnings};
  da_config c;
  ASSERT_EQ(da_config_load_file(path.c_str(), &options, &c), DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_EQ(c.sparse.local_density, 0.3);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_EQ(warnings[0].rfind(path + ": sparse.local_sparsity is deprecated", 0), 0u);

  const std::string bad = Write("bad.json", "{\n  \"sparse\": {\n    \"density\": 0.25,\n  }\n}\n");
  EXPECT_TRUE(Fails(da_config_load_file(bad.c_str(), nullptr, &c), DA_STATUS_PARSE_ERROR,
                    {bad + ":4:3: malformed JSON"}));
  const std::string nul = Write("nul.json", std::string("{\"sparse\":\0 {}}", 15));
  EXPECT_TRUE(Fails(da_config_load_file(nul.c_str(), nullptr, &c), DA_STATUS_PARSE_ERROR,
                    {nul + ":1:11:", "NUL"}));
  const std::string missing = TempPath("does_not_exist.json");
  EXPECT_TRUE(Fails(da_config_load_file(missing.c_str(), nullptr, &c), DA_STATUS_IO_ERROR,
                    {missing, "cannot open"}));
  EXPECT_TRUE(Fails(da_config_load_file(TempPath("").c_str(), nullptr, &c), DA_STATUS_IO_ERROR,
                    {"read error"}) ||
              Fails(da_config_load_file(TempPath("").c_str(), nullptr, &c), DA_STATUS_IO_ERROR,
                    {"cannot open"}));
  // A large file (past the first read buffer) loads too.
  std::string big = "{\"sparse\": {\"block_size\": 32}" + std::string(20000, ' ') + "}";
  const std::string big_path = Write("big.json", big);
  ASSERT_EQ(da_config_load_file(big_path.c_str(), nullptr, &c), DA_STATUS_SUCCESS)
      << da_last_error();
  EXPECT_EQ(c.sparse.block_size, 32);
  EXPECT_NE(da_config_load_file(nullptr, nullptr, &c), DA_STATUS_SUCCESS);
  EXPECT_NE(da_config_load_string(nullptr, nullptr, &c), DA_STATUS_SUCCESS);
  EXPECT_NE(da_config_load_string("{}", nullptr, nullptr), DA_STATUS_SUCCESS);
}

std::string ReadAll(FILE* f) {
  std::string s;
  rewind(f);
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, f)) > 0) s.append(buffer, n);
  return s;
}

TEST(ConfigCheckTest, PrintsTheEffectiveConfigOrNothing) {
  // Explicit topology: the check must not depend on the test's environment.
  const std::string path = Write("check.json",
                                 R"({"sparse": {"global_sparsity": 0.2},
                                     "topology": {"world_size": 8, "rank": 1,
                                                  "local_world_size": 4}})");
  FILE* out = tmpfile();
  FILE* warn = tmpfile();
  ASSERT_NE(out, nullptr);
  ASSERT_EQ(da_config_check_file(path.c_str(), out, warn), DA_STATUS_SUCCESS) << da_last_error();
  const std::string printed = ReadAll(out), warned = ReadAll(warn);
  EXPECT_EQ(warned, "warning: " + path +
                        ": sparse.global_sparsity is deprecated: use sparse.global_density (same "
                        "value: the kept fraction)\n");
  Loaded back = Load(printed);
  ASSERT_EQ(back.status, DA_STATUS_SUCCESS) << da_last_error() << "\n" << printed;
  EXPECT_EQ(back.config.sparse.global_density, 0.2);
  EXPECT_EQ(back.config.topology.world_size, 8);
  EXPECT_EQ(back.config.topology.rank, 1);
  EXPECT_EQ(back.config.topology.local_world_size, 4);
  EXPECT_EQ(printed.back(), '\n');
  fclose(out);
  fclose(warn);

  const std::string bad = Write("check_bad.json", R"({"sparse": {"block_size": 100}})");
  out = tmpfile();
  EXPECT_TRUE(Fails(da_config_check_file(bad.c_str(), out, nullptr), DA_STATUS_INVALID_ARGUMENT,
                    {bad, "sparse.block_size=100"}));
  EXPECT_EQ(ReadAll(out), "");
  fclose(out);
  EXPECT_NE(da_config_check_file(path.c_str(), nullptr, nullptr), DA_STATUS_SUCCESS);
}

TEST(ConfigJsonTest, ThreadsLoadConcurrentlyWithTheirOwnErrors) {
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; t++)
    threads.emplace_back([t, &wrong] {
      const std::string good = "{\"sparse\": {\"block_size\": " + std::to_string(1 << t) + "}}";
      const std::string bad = "{\"sparse\": {\"block_size\": " + std::to_string(t) + ",}}";
      for (int k = 0; k < 200; k++) {
        da_config c;
        if (da_config_load_string(good.c_str(), nullptr, &c) != DA_STATUS_SUCCESS ||
            c.sparse.block_size != (1 << t))
          wrong++;
        if (da_config_load_string(bad.c_str(), nullptr, &c) != DA_STATUS_PARSE_ERROR ||
            std::string(da_last_error()).find("<string>:1:29:") == std::string::npos)
          wrong++;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST(ConfigJsonTest, DumpRejectsInvalidConfigs) {
  da_config c = da_config_default();
  c.sparse.block_size = 3;
  char* json = reinterpret_cast<char*>(1);
  EXPECT_TRUE(
      Fails(da_config_to_json(&c, &json), DA_STATUS_INVALID_ARGUMENT, {"sparse.block_size=3"}));
  EXPECT_EQ(json, nullptr);
  EXPECT_NE(da_config_to_json(&c, nullptr), DA_STATUS_SUCCESS);
  da_config_free_json(nullptr);
}

}  // namespace
