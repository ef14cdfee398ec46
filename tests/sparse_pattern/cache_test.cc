// The layout cache: hits and misses, keys that cover every field (and only what
// changes a layout), least-recently-used eviction within the byte bound, layouts
// that stay valid after eviction, oversized layouts, and many threads at once.
#include <string.h>

#include <atomic>
#include <thread>
#include <vector>

#include "tests/sparse_pattern/pattern_test_util.h"

namespace {

using da_pattern_test::Config;
using da_pattern_test::Create;
using da_pattern_test::Layout;
using da_pattern_test::View;

struct CacheDeleter {
  void operator()(da_pattern_cache* c) const { da_pattern_cache_destroy(c); }
};
using Cache = std::unique_ptr<da_pattern_cache, CacheDeleter>;

Cache MakeCache(size_t capacity) {
  da_pattern_cache* c = nullptr;
  EXPECT_EQ(da_pattern_cache_create(capacity, &c), DA_STATUS_SUCCESS);
  return Cache(c);
}

Layout Get(da_pattern_cache* cache, Config& cfg) {
  da_pattern_layout* l = nullptr;
  EXPECT_EQ(da_pattern_cache_get(cache, cfg.get(), &l), DA_STATUS_SUCCESS) << da_last_error();
  return Layout(l);
}

da_pattern_cache_stats Stats(da_pattern_cache* cache) {
  da_pattern_cache_stats s;
  EXPECT_EQ(da_pattern_cache_get_stats(cache, &s), DA_STATUS_SUCCESS);
  return s;
}

Config Small(int64_t seqlen) {
  Config cfg;
  cfg.c.seqlen = seqlen;
  cfg.c.block_size = 16;
  cfg.c.num_heads = 2;
  cfg.c.world_size = 2;
  return cfg;
}

size_t BytesOf(Config cfg) {
  da_pattern_stats st;
  EXPECT_EQ(da_pattern_count(cfg.get(), &st), DA_STATUS_SUCCESS);
  return st.bytes;
}

// Same arrays as a freshly built layout of cfg.
::testing::AssertionResult SameAsFresh(const da_pattern_layout* got, Config& cfg) {
  Layout fresh = Create(cfg);
  da_pattern_bsr a = View(got), b = View(fresh.get());
  const int64_t rows = a.row_end - a.row_begin;
  if (a.nnz != b.nnz || a.row_begin != b.row_begin || a.row_end != b.row_end ||
      memcmp(a.row_offsets, b.row_offsets, sizeof(int64_t) * a.num_heads * (rows + 1)) != 0 ||
      memcmp(a.col_indices, b.col_indices, sizeof(int32_t) * a.nnz) != 0 ||
      memcmp(a.levels, b.levels, a.nnz) != 0)
    return ::testing::AssertionFailure() << "cached layout differs from a fresh one";
  return ::testing::AssertionSuccess();
}

TEST(CacheTest, HitsReturnTheSameLayout) {
  Cache cache = MakeCache(64 << 20);
  Config cfg = Small(4000);
  Layout a = Get(cache.get(), cfg);
  Layout b = Get(cache.get(), cfg);
  EXPECT_EQ(a.get(), b.get());
  da_pattern_cache_stats s = Stats(cache.get());
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.entries, 1u);
  EXPECT_EQ(s.bytes, BytesOf(cfg));
  EXPECT_EQ(s.capacity_bytes, (size_t)64 << 20);
  EXPECT_TRUE(SameAsFresh(a.get(), cfg));
}

TEST(CacheTest, EveryFieldThatChangesALayoutIsInTheKey) {
  Cache cache = MakeCache(256 << 20);
  Config base = Small(3000);
  base.c.num_patterns = 1;
  base.c.segment_lengths[0] = 64;
  base.c.dilation_rates[0] = 2;
  base.c.world_size = 4;
  base.c.local_world_size = 2;
  Layout first = Get(cache.get(), base);
  std::vector<void (*)(Config&)> changes = {
      [](Config& c) { c.c.seqlen += 1; },
      [](Config& c) { c.c.block_size = 32; },
      [](Config& c) { c.c.num_heads = 3; },
      [](Config& c) { c.c.causal = 1; },
      [](Config& c) { c.c.type = DA_PATTERN_NODE_LOCAL; },
      [](Config& c) { c.c.local_density = 0.41; },
      [](Config& c) { c.c.global_density = 0.11; },
      [](Config& c) { c.c.inter_node_density = 0.06; },
      [](Config& c) { c.c.local_window_blocks = 5; },
      [](Config& c) { c.c.segment_lengths[0] = 65; },
      [](Config& c) { c.c.dilation_rates[0] = 3; },
      [](Config& c) { c.c.mode = DA_MODE_HEAD_GROUP; },
      [](Config& c) { c.c.offset_policy = DA_OFFSET_BLOCK; },
      [](Config& c) { c.c.world_size = 8; },
      [](Config& c) { c.c.local_world_size = 4; },
      [](Config& c) { c.c.seed = 12345; },
      [](Config& c) { c.c.row_begin = 1; },
      [](Config& c) { c.c.row_end = 100; },
      [](Config& c) {
        c.c.type = DA_PATTERN_ADAPTIVE_LOAD_BALANCED;
        c.scales = {1.0, 1.0, 0.5, 1.0};
      },
  };
  uint64_t misses = 1;
  for (size_t x = 0; x < changes.size(); x++) {
    Config changed = base;
    changes[x](changed);
    Layout l = Get(cache.get(), changed);
    EXPECT_NE(l.get(), first.get()) << "change " << x;
    EXPECT_EQ(Stats(cache.get()).misses, ++misses) << "change " << x;
    EXPECT_TRUE(SameAsFresh(l.get(), changed)) << "change " << x;
  }
  // A different scale value is a different key; the same values elsewhere are not.
  Config scaled = base;
  scaled.c.type = DA_PATTERN_ADAPTIVE_LOAD_BALANCED;
  scaled.scales = {1.0, 1.0, 0.5, 1.0};
  Layout again = Get(cache.get(), scaled);
  EXPECT_EQ(Stats(cache.get()).misses, misses);
  scaled.scales[3] = 1.5;
  Layout other = Get(cache.get(), scaled);
  EXPECT_EQ(Stats(cache.get()).misses, misses + 1);
  // Fields that cannot change this layout share the entry: the default offset in
  // LongNet mode is the head offset; row_end = nb is "all rows".
  Config same = base;
  same.c.offset_policy = DA_OFFSET_HEAD;
  EXPECT_EQ(Get(cache.get(), same).get(), first.get());
  same.c.row_end = (3000 + 15) / 16;
  EXPECT_EQ(Get(cache.get(), same).get(), first.get());
}

TEST(CacheTest, EvictsLeastRecentlyUsedWithinTheByteBound) {
  Config a = Small(3990), b = Small(3991), c = Small(3992), d = Small(3993);  // 250 blocks
  const size_t size = BytesOf(a);
  ASSERT_EQ(BytesOf(d), size);  // same block count: same size
  Cache cache = MakeCache(3 * size + size / 2);
  Get(cache.get(), a);
  Get(cache.get(), b);
  Get(cache.get(), c);
  Get(cache.get(), a);  // a is now the most recent; b the least
  EXPECT_EQ(Stats(cache.get()).evictions, 0u);
  Get(cache.get(), d);
  da_pattern_cache_stats s = Stats(cache.get());
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.entries, 3u);
  EXPECT_LE(s.bytes, s.capacity_bytes);
  const uint64_t misses = s.misses;
  Get(cache.get(), a);
  Get(cache.get(), c);
  Get(cache.get(), d);
  EXPECT_EQ(Stats(cache.get()).misses, misses);  // a, c, d stayed
  Get(cache.get(), b);
  EXPECT_EQ(Stats(cache.get()).misses, misses + 1);  // b was evicted
  EXPECT_EQ(Stats(cache.get()).evictions, 2u);       // ... and now a went
}

TEST(CacheTest, EvictedLayoutsStayValidWhileHeld) {
  Config a = Small(6000), b = Small(6100);
  ASSERT_GT(BytesOf(b), BytesOf(a));
  Cache cache = MakeCache(BytesOf(b) + 100);  // room for one
  Layout held = Get(cache.get(), a);
  Layout next = Get(cache.get(), b);  // evicts a from the cache
  EXPECT_EQ(Stats(cache.get()).evictions, 1u);
  EXPECT_TRUE(SameAsFresh(held.get(), a));  // ASan would flag a use after free
  cache.reset();                            // destroying the cache keeps them too
  EXPECT_TRUE(SameAsFresh(next.get(), b));
}

TEST(CacheTest, OversizedLayoutsAreReturnedUnstored) {
  Config a = Small(5000);
  Cache cache = MakeCache(BytesOf(a) - 1);
  Layout l = Get(cache.get(), a);
  ASSERT_NE(l, nullptr);
  da_pattern_cache_stats s = Stats(cache.get());
  EXPECT_EQ(s.uncached, 1u);
  EXPECT_EQ(s.entries, 0u);
  EXPECT_EQ(s.bytes, 0u);
  Cache none = MakeCache(0);
  Layout m = Get(none.get(), a);
  EXPECT_TRUE(SameAsFresh(m.get(), a));
  EXPECT_EQ(Stats(none.get()).uncached, 1u);
}

TEST(CacheTest, ClearDropsEntriesButNotCounters) {
  Cache cache = MakeCache(64 << 20);
  Config a = Small(1000);
  Layout l = Get(cache.get(), a);
  da_pattern_cache_clear(cache.get());
  da_pattern_cache_stats s = Stats(cache.get());
  EXPECT_EQ(s.entries, 0u);
  EXPECT_EQ(s.bytes, 0u);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_TRUE(SameAsFresh(l.get(), a));
  Get(cache.get(), a);
  EXPECT_EQ(Stats(cache.get()).misses, 2u);
}

TEST(CacheTest, InvalidArguments) {
  Cache cache = MakeCache(1 << 20);
  Config bad = Small(100);
  bad.c.block_size = 7;
  da_pattern_layout* l = nullptr;
  EXPECT_TRUE(da_pattern_test::Rejected(da_pattern_cache_get(cache.get(), bad.get(), &l),
                                        "block_size", "7"));
  EXPECT_EQ(l, nullptr);
  EXPECT_EQ(Stats(cache.get()).misses, 0u);
  EXPECT_NE(da_pattern_cache_get(nullptr, bad.get(), &l), DA_STATUS_SUCCESS);
  EXPECT_NE(da_pattern_cache_get(cache.get(), bad.get(), nullptr), DA_STATUS_SUCCESS);
  EXPECT_NE(da_pattern_cache_create(1, nullptr), DA_STATUS_SUCCESS);
  EXPECT_NE(da_pattern_cache_get_stats(cache.get(), nullptr), DA_STATUS_SUCCESS);
  da_pattern_cache_destroy(nullptr);
  da_pattern_cache_clear(nullptr);
}

// Threads hammer a cache that holds about a third of the configs in play; every
// layout they get must be right, and the counters must add up.
TEST(CacheTest, ManyThreadsAtOnce) {
  const int kConfigs = 12, kThreads = 8, kGets = da_pattern_test::ScaledCount(150);
  std::vector<Config> configs;
  std::vector<int64_t> nnz;
  size_t largest = 0;
  for (int x = 0; x < kConfigs; x++) {
    Config cfg = Small(2000 + 37 * x);
    cfg.c.causal = x % 2;
    configs.push_back(cfg);
    Layout l = Create(configs.back());
    nnz.push_back(View(l.get()).nnz);
    largest = std::max(largest, BytesOf(cfg));
  }
  Cache cache = MakeCache(4 * largest);
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; t++)
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      for (int g = 0; g < kGets; g++) {
        int x = da_pattern_test::UniformInt(rng, 0, kConfigs - 1);
        Config cfg = configs[x];
        da_pattern_layout* l = nullptr;
        if (da_pattern_cache_get(cache.get(), cfg.get(), &l) != DA_STATUS_SUCCESS) {
          wrong++;
          continue;
        }
        da_pattern_bsr b;
        da_pattern_layout_bsr(l, &b);
        int64_t sum = 0;
        for (int64_t k = 0; k < b.nnz; k++) sum += b.col_indices[k] >= 0;
        if (b.nnz != nnz[x] || sum != b.nnz || b.seqlen != cfg.c.seqlen) wrong++;
        da_pattern_layout_release(l);
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
  da_pattern_cache_stats s = Stats(cache.get());
  EXPECT_EQ(s.hits + s.misses, (uint64_t)kThreads * kGets);
  EXPECT_LE(s.bytes, s.capacity_bytes);
  EXPECT_GT(s.hits, 0u);
  EXPECT_GT(s.evictions, 0u);
}

TEST(CacheTest, GeneratorsShareACache) {
  Cache cache = MakeCache(64 << 20);
  Config cfg = Small(3000);
  da_pattern_generator_options o = da_pattern_generator_options_default();
  o.shared_cache = cache.get();
  da_pattern_generator *g1 = nullptr, *g2 = nullptr;
  ASSERT_EQ(da_pattern_generator_create(cfg.get(), &o, &g1), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_pattern_generator_create(cfg.get(), &o, &g2), DA_STATUS_SUCCESS);
  da_pattern_layout *a = nullptr, *b = nullptr;
  ASSERT_EQ(da_pattern_generator_get(g1, 0, 0, &a), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_pattern_generator_get(g2, 0, 0, &b), DA_STATUS_SUCCESS);
  EXPECT_EQ(a, b);
  da_pattern_cache_stats s;
  ASSERT_EQ(da_pattern_generator_cache_stats(g2, &s), DA_STATUS_SUCCESS);
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 1u);
  // Rows per call, through the same cache.
  da_pattern_layout* part = nullptr;
  ASSERT_EQ(da_pattern_generator_get(g1, 10, 20, &part), DA_STATUS_SUCCESS);
  EXPECT_EQ(View(part).row_begin, 10);
  EXPECT_EQ(View(part).row_end, 20);
  da_pattern_layout_release(part);
  da_pattern_layout_release(a);
  da_pattern_layout_release(b);
  da_pattern_generator_destroy(g1);
  da_pattern_generator_destroy(g2);
  // Without a cache every get builds.
  o = da_pattern_generator_options_default();
  o.cache_bytes = 0;
  ASSERT_EQ(da_pattern_generator_create(cfg.get(), &o, &g1), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_pattern_generator_get(g1, 0, 0, &a), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_pattern_generator_get(g1, 0, 0, &b), DA_STATUS_SUCCESS);
  EXPECT_NE(a, b);
  ASSERT_EQ(da_pattern_generator_cache_stats(g1, &s), DA_STATUS_SUCCESS);
  EXPECT_EQ(s.hits + s.misses, 0u);
  da_pattern_layout_release(a);
  da_pattern_layout_release(b);
  da_pattern_generator_destroy(g1);
}

}  // namespace
