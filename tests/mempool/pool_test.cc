// The pool's behaviour on the CPU: rounding, splitting, coalescing, best fit,
// limits, pressure, statistics, default pools (host backend), and stream-ordered
// reuse through a simulated device whose streams the tests complete by hand.
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "mempool/da_mempool.h"
#include "mempool/mempool_internal.h"
#include "tests/mempool/sim_backend.h"

namespace {

constexpr size_t KiB = 1024, MiB = 1024 * 1024;

// The default shape scaled down 16x, so a few blocks fill a segment.
da_mempool_config SmallConfig() {
  da_mempool_config c = da_mempool_config_default();
  c.backend = DA_MEMPOOL_BACKEND_HOST;
  c.small_request_max_bytes = 16 * KiB;
  c.small_segment_bytes = 64 * KiB;
  c.large_rounding_bytes = 64 * KiB;
  const size_t classes[] = {1 * KiB, 4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB};
  c.num_size_classes = 5;
  memcpy(c.size_classes_bytes, classes, sizeof classes);
  return c;
}

class Pool {
 public:
  explicit Pool(da_mempool_config c) {
    c.backend = DA_MEMPOOL_BACKEND_HOST;
    EXPECT_EQ(da_mempool_create(&c, &pool_), DA_STATUS_SUCCESS) << da_last_error();
  }
  Pool(const da_mempool_config& c, const sim_options& o) {
    sim_ = sim_backend_create(&o);
    EXPECT_EQ(da_mempool_create_with_backend(&c, sim_, &pool_), DA_STATUS_SUCCESS)
        << da_last_error();
  }
  ~Pool() {
    if (pool_) da_mempool_destroy(pool_);
  }
  da_mempool* get() const { return pool_; }
  da_mp_backend* sim() const { return sim_; }

  // Allocations and frees also tell the simulated device about the work on each
  // stream and check that every block handed out is safe on its stream.
  void* Alloc(size_t bytes, int stream = 0) {
    void* p = nullptr;
    EXPECT_EQ(da_mempool_allocate(pool_, bytes, sim_stream(stream), &p), DA_STATUS_SUCCESS)
        << da_last_error();
    EXPECT_EQ(da_mempool_check(pool_), DA_STATUS_SUCCESS) << da_last_error();
    if (sim_ && p) {
      const char* why = sim_check_use(sim_, p, bytes, sim_stream(stream));
      EXPECT_EQ(why, nullptr) << why;
      live_[p] = {bytes, stream};
    }
    return p;
  }
  void Free(void* p, int stream = 0) {
    if (sim_ && live_.count(p)) {  // the block's work is submitted before the free
      sim_note_free(sim_, p, live_[p].first, sim_stream(live_[p].second), sim_stream(stream));
      live_.erase(p);
    }
    EXPECT_EQ(da_mempool_free(pool_, p, sim_stream(stream)), DA_STATUS_SUCCESS) << da_last_error();
    EXPECT_EQ(da_mempool_check(pool_), DA_STATUS_SUCCESS) << da_last_error();
  }
  da_mempool_stats Stats() const {
    da_mempool_stats s;
    EXPECT_EQ(da_mempool_get_stats(pool_, &s), DA_STATUS_SUCCESS);
    return s;
  }

 private:
  da_mempool* pool_ = nullptr;
  da_mp_backend* sim_ = nullptr;
  std::map<void*, std::pair<size_t, int>> live_;  // block -> (bytes, stream)
};

char* at(void* p, ptrdiff_t offset) { return (char*)p + offset; }

TEST(Config, DefaultsAreTheDocumentedOnes) {
  da_mempool_config c = da_mempool_config_default();
  EXPECT_EQ(c.backend, DA_MEMPOOL_BACKEND_DEVICE_ASYNC);
  EXPECT_EQ(c.device, 0);
  const size_t mb_tenths[] = {1, 5, 10, 20, 40, 80, 160, 320, 640, 1280};
  ASSERT_EQ(c.num_size_classes, 10);
  for (int i = 0; i < 10; i++) EXPECT_EQ(c.size_classes_bytes[i], mb_tenths[i] * MiB / 10) << i;
  EXPECT_EQ(c.alignment_bytes, 256u);
  EXPECT_EQ(c.small_request_max_bytes, 1 * MiB);
  EXPECT_EQ(c.small_segment_bytes, 2 * MiB);
  EXPECT_EQ(c.large_rounding_bytes, 2 * MiB);
  EXPECT_EQ(c.max_reserved_bytes, SIZE_MAX);
  EXPECT_EQ(c.max_cached_bytes, SIZE_MAX);
  EXPECT_EQ(c.cleanup_threshold, 0.5);
  EXPECT_EQ(c.pressure_free_fraction, 0.05);
  EXPECT_EQ(c.track_fragmentation, 0);
  EXPECT_EQ(c.numa_node, -1);
  EXPECT_EQ(c.profiling, 0);
  EXPECT_STREQ(da_mempool_backend_name(DA_MEMPOOL_BACKEND_DEVICE_ASYNC), "device_async");
  EXPECT_STREQ(da_mempool_backend_name((da_mempool_backend)9), "unknown");
}

TEST(HostPool, FreedBlockIsReusedAtOnce) {
  Pool pool(da_mempool_config_default());
  void* a = pool.Alloc(1000);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ((uintptr_t)a % 256, 0u);
  memset(a, 0xab, 1000);
  pool.Free(a);
  void* b = pool.Alloc(1000);
  EXPECT_EQ(a, b);
  da_mempool_stats s = pool.Stats();
  EXPECT_EQ(s.allocations, 2u);
  EXPECT_EQ(s.frees, 1u);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.backend_allocs, 1u);
  EXPECT_EQ(s.requested_bytes, 1000u);
  EXPECT_EQ(s.allocated_bytes, 1024u);  // rounded to 256
  EXPECT_EQ(s.live_allocations, 1u);
  pool.Free(b);
}

TEST(HostPool, SmallRequestsArePackedIntoOneSegment) {
  Pool pool(da_mempool_config_default());
  std::vector<void*> blocks;
  for (int i = 0; i < 8; i++) blocks.push_back(pool.Alloc(200 * KiB));
  da_mempool_stats s = pool.Stats();
  EXPECT_EQ(s.segments, 1u);
  EXPECT_EQ(s.reserved_bytes, 2 * MiB);
  EXPECT_EQ(s.allocated_bytes, 8 * 200 * KiB);
  for (int i = 1; i < 8; i++) EXPECT_EQ(blocks[i], at(blocks[i - 1], 200 * KiB));
  for (void* p : blocks) pool.Free(p);
}

TEST(HostPool, LargeRequestsGetSegmentsRoundedTo2MiB) {
  Pool pool(da_mempool_config_default());
  // 3 MiB: a 4 MiB segment; the 1 MiB remainder is not above the small limit, so the
  // block keeps it rather than leave a fragment in a large segment.
  void* a = pool.Alloc(3 * MiB);
  da_mempool_stats s = pool.Stats();
  EXPECT_EQ(s.reserved_bytes, 4 * MiB);
  EXPECT_EQ(s.allocated_bytes, 4 * MiB);
  // 2.5 MiB: a 4 MiB segment, and the 1.5 MiB remainder is split off.
  void* b = pool.Alloc(5 * MiB / 2);
  s = pool.Stats();
  EXPECT_EQ(s.reserved_bytes, 8 * MiB);
  EXPECT_EQ(s.allocated_bytes, 4 * MiB + 5 * MiB / 2);
  EXPECT_EQ(s.cached_bytes, 3 * MiB / 2);
  EXPECT_EQ(s.largest_free_block_bytes, 3 * MiB / 2);
  pool.Free(a);
  pool.Free(b);
  EXPECT_EQ(pool.Stats().segments, 2u);
}

TEST(HostPool, SmallRequestsNeverSplitLargeSegments) {
  Pool pool(da_mempool_config_default());
  void* big = pool.Alloc(8 * MiB);
  pool.Free(big);
  void* small = pool.Alloc(4 * KiB);
  da_mempool_stats s = pool.Stats();
  EXPECT_EQ(s.misses, 2u);
  EXPECT_EQ(s.reserved_bytes, 10 * MiB);
  pool.Free(small);
}

TEST(HostPool, AdjacentFreeBlocksCoalesce) {
  Pool pool(SmallConfig());
  void* a = pool.Alloc(16 * KiB);
  void* b = pool.Alloc(16 * KiB);
  void* c = pool.Alloc(16 * KiB);
  void* d = pool.Alloc(16 * KiB);
  ASSERT_EQ(b, at(a, 16 * KiB));
  ASSERT_EQ(d, at(a, 48 * KiB));
  EXPECT_EQ(pool.Stats().segments, 1u);
  pool.Free(b);
  pool.Free(c);
  EXPECT_EQ(pool.Stats().largest_free_block_bytes, 32 * KiB);  // b+c, one block
  EXPECT_EQ(pool.Stats().fragmentation, 0.0);
  pool.Free(a);
  EXPECT_EQ(pool.Stats().largest_free_block_bytes, 48 * KiB);
  pool.Free(d);
  da_mempool_stats s = pool.Stats();
  EXPECT_EQ(s.largest_free_block_bytes, 64 * KiB);  // the whole segment again
  EXPECT_EQ(da_mempool_trim(pool.get(), 0), DA_STATUS_SUCCESS);
  EXPECT_EQ(pool.Stats().reserved_bytes, 0u);
  EXPECT_EQ(pool.Stats().backend_frees, 1u);
}

TEST(HostPool, BestFitTakesTheSmallestHoleThatFits) {
  Pool pool(SmallConfig());
  std::vector<void*> b;
  for (int i = 0; i < 16; i++) b.push_back(pool.Alloc(4 * KiB));  // one 64 KiB segment
  ASSERT_EQ(pool.Stats().segments, 1u);
  // Holes: 4 KiB at 1, 8 KiB at 3-4, 12 KiB at 6-8, 8 KiB at 10-11.
  for (int i : {1, 3, 4, 6, 7, 8, 10, 11}) pool.Free(b[i]);
  EXPECT_EQ(pool.Stats().largest_free_block_bytes, 12 * KiB);
  EXPECT_NEAR(pool.Stats().fragmentation, 1.0 - 12.0 / 32.0, 1e-12);
  EXPECT_EQ(pool.Alloc(8 * KiB), b[3]);   // 8 KiB holes: the lower address wins
  EXPECT_EQ(pool.Alloc(6 * KiB), b[10]);  // smallest hole >= 6 KiB
  EXPECT_EQ(pool.Alloc(4 * KiB), b[1]);
  EXPECT_EQ(pool.Alloc(12 * KiB), b[6]);
  EXPECT_EQ(pool.Stats().segments, 1u);
  EXPECT_EQ(da_mempool_reset(pool.get()), DA_STATUS_INVALID_ARGUMENT);
}

TEST(HostPool, TrimKeepsWhatItIsAskedToKeepAndNeverTouchesLiveBlocks) {
  Pool pool(SmallConfig());
  std::vector<void*> big;
  for (int i = 0; i < 4; i++) big.push_back(pool.Alloc(64 * KiB));  // 4 large segments
  void* live = pool.Alloc(64 * KiB);                                  // a 5th
  for (void* p : big) pool.Free(p);
  EXPECT_EQ(pool.Stats().cached_bytes, 256 * KiB);
  EXPECT_EQ(da_mempool_trim(pool.get(), 128 * KiB), DA_STATUS_SUCCESS);
  EXPECT_EQ(pool.Stats().cached_bytes, 128 * KiB);
  EXPECT_EQ(da_mempool_trim(pool.get(), 0), DA_STATUS_SUCCESS);
  da_mempool_stats s = pool.Stats();
  EXPECT_EQ(s.cached_bytes, 0u);
  EXPECT_EQ(s.segments, 1u);
  memset(live, 1, 64 * KiB);
  pool.Free(live);
}

TEST(HostPool, MaxCachedBytesReleasesDownToTheCleanupThreshold) {
  da_mempool_config c = SmallConfig();
  c.max_cached_bytes = 128 * KiB;
  c.cleanup_threshold = 0.5;
  Pool pool(c);
  std::vector<void*> big;
  for (int i = 0; i < 8; i++) big.push_back(pool.Alloc(64 * KiB));
  for (int i = 0; i < 8; i++) {
    pool.Free(big[i]);
    EXPECT_LE(pool.Stats().cached_bytes, 128 * KiB) << i;
  }
  da_mempool_stats s = pool.Stats();
  EXPECT_GE(s.backend_frees, 4u);
  EXPECT_LE(s.cached_bytes, 128 * KiB);
}

TEST(HostPool, MaxReservedBytesFailsCleanlyAndRetriesAfterReleasingCache) {
  da_mempool_config c = SmallConfig();
  c.max_reserved_bytes = 256 * KiB;
  Pool pool(c);
  std::vector<void*> big;
  for (int i = 0; i < 4; i++) big.push_back(pool.Alloc(64 * KiB));
  void* p = (void*)1;
  EXPECT_EQ(da_mempool_allocate(pool.get(), 64 * KiB, nullptr, &p), DA_STATUS_OUT_OF_MEMORY);
  EXPECT_EQ(p, nullptr);
  EXPECT_NE(strstr(da_last_error(), "max_reserved_bytes"), nullptr) << da_last_error();
  EXPECT_EQ(da_mempool_check(pool.get()), DA_STATUS_SUCCESS) << da_last_error();
  pool.Free(big[0]);
  pool.Free(big[1]);
  // A small request needs a small segment: the cached large ones go first.
  void* small = pool.Alloc(1 * KiB);
  da_mempool_stats s = pool.Stats();
  EXPECT_EQ(s.oom_retries, 2u);  // the failed request above, then this one
  EXPECT_EQ(s.reserved_bytes, 3 * 64 * KiB);
  pool.Free(small);
  pool.Free(big[2]);
  pool.Free(big[3]);
}

TEST(HostPool, ResetRefusesLiveAllocationsThenStartsAfresh) {
  Pool pool(da_mempool_config_default());
  void* a = pool.Alloc(100);
  void* b = pool.Alloc(3 * MiB);
  EXPECT_EQ(da_mempool_reset(pool.get()), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "2 allocations"), nullptr) << da_last_error();
  EXPECT_NE(strstr(da_last_error(), std::to_string(100 + 3 * MiB).c_str()), nullptr)
      << da_last_error();
  EXPECT_EQ(pool.Stats().live_allocations, 2u);  // unchanged
  pool.Free(a);
  pool.Free(b);
  EXPECT_EQ(da_mempool_reset(pool.get()), DA_STATUS_SUCCESS) << da_last_error();
  da_mempool_stats s = pool.Stats();
  EXPECT_EQ(s.reserved_bytes, 0u);
  EXPECT_EQ(s.peak_reserved_bytes, 0u);
  EXPECT_EQ(s.peak_allocated_bytes, 0u);
  EXPECT_EQ(s.allocations, 0u);
  EXPECT_EQ(s.backend_allocs, 0u);
  void* c = pool.Alloc(100);
  EXPECT_EQ(pool.Stats().misses, 1u);
  pool.Free(c);
}

TEST(HostPool, PeaksFollowUseAndResetToCurrent) {
  Pool pool(da_mempool_config_default());
  void* a = pool.Alloc(4 * MiB);
  void* b = pool.Alloc(4 * MiB);
  pool.Free(a);
  da_mempool_stats s = pool.Stats();
  EXPECT_EQ(s.peak_allocated_bytes, 8 * MiB);
  EXPECT_EQ(s.allocated_bytes, 4 * MiB);
  EXPECT_EQ(da_mempool_reset_peak_stats(pool.get()), DA_STATUS_SUCCESS);
  s = pool.Stats();
  EXPECT_EQ(s.peak_allocated_bytes, 4 * MiB);
  EXPECT_EQ(s.peak_reserved_bytes, 8 * MiB);
  pool.Free(b);
}

TEST(HostPool, FragmentationPeakIsTrackedWhenAskedFor) {
  da_mempool_config c = SmallConfig();
  c.track_fragmentation = 1;
  Pool pool(c);
  std::vector<void*> b;
  for (int i = 0; i < 16; i++) b.push_back(pool.Alloc(4 * KiB));
  for (int i = 0; i < 16; i += 2) pool.Free(b[i]);  // 8 separate 4 KiB holes
  da_mempool_stats s = pool.Stats();
  EXPECT_NEAR(s.fragmentation, 1.0 - 4.0 / 32.0, 1e-12);
  EXPECT_NEAR(s.fragmentation_peak, s.fragmentation, 1e-12);
  for (int i = 1; i < 16; i += 2) pool.Free(b[i]);
  s = pool.Stats();
  EXPECT_EQ(s.fragmentation, 0.0);
  EXPECT_NEAR(s.fragmentation_peak, 1.0 - 4.0 / 32.0, 1e-12);

  Pool untracked(SmallConfig());
  untracked.Free(untracked.Alloc(100));
  EXPECT_EQ(untracked.Stats().fragmentation_peak, 0.0);
}

TEST(HostPool, ProfilingCountsPerSizeClass) {
  da_mempool_config c = SmallConfig();
  c.profiling = 1;
  Pool pool(c);
  void* a = pool.Alloc(500);       // class 0: < 1 KiB
  void* b = pool.Alloc(600);       // class 0
  void* d = pool.Alloc(2 * KiB);   // class 1: [1, 4) KiB
  void* e = pool.Alloc(300 * KiB); // class 5: >= 256 KiB
  pool.Free(a);
  da_mempool_class_stats cs;
  ASSERT_EQ(da_mempool_get_class_stats(pool.get(), 0, &cs), DA_STATUS_SUCCESS);
  EXPECT_EQ(cs.lower_bytes, 0u);
  EXPECT_EQ(cs.upper_bytes, 1 * KiB);
  EXPECT_EQ(cs.allocations, 2u);
  EXPECT_EQ(cs.misses, 1u);
  EXPECT_EQ(cs.hits, 1u);
  EXPECT_EQ(cs.frees, 1u);
  EXPECT_EQ(cs.requested_bytes_total, 1100u);
  ASSERT_EQ(da_mempool_get_class_stats(pool.get(), 1, &cs), DA_STATUS_SUCCESS);
  EXPECT_EQ(cs.allocations, 1u);
  ASSERT_EQ(da_mempool_get_class_stats(pool.get(), 5, &cs), DA_STATUS_SUCCESS);
  EXPECT_EQ(cs.lower_bytes, 256 * KiB);
  EXPECT_EQ(cs.upper_bytes, SIZE_MAX);
  EXPECT_EQ(cs.allocations, 1u);
  EXPECT_EQ(da_mempool_get_class_stats(pool.get(), 6, &cs), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_mempool_get_class_stats(pool.get(), -1, &cs), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_GT(pool.Stats().backend_ns, 0u);
  pool.Free(b);
  pool.Free(d);
  pool.Free(e);

  Pool plain(SmallConfig());
  EXPECT_EQ(da_mempool_get_class_stats(plain.get(), 0, &cs), DA_STATUS_NOT_SUPPORTED);
  EXPECT_NE(strstr(da_last_error(), "profiling"), nullptr);
}

TEST(HostPool, NumaPlacementBindsSegmentsToTheNode) {
  da_mempool_config c = SmallConfig();
  c.numa_node = 0;
  da_mempool* pool = nullptr;
  da_status st = da_mempool_create(&c, &pool);
  if (st == DA_STATUS_NOT_SUPPORTED) GTEST_SKIP() << "the OS refuses mbind: " << da_last_error();
  ASSERT_EQ(st, DA_STATUS_SUCCESS) << da_last_error();
  void* p = nullptr;
  ASSERT_EQ(da_mempool_allocate(pool, 64 * KiB, nullptr, &p), DA_STATUS_SUCCESS);
  memset(p, 7, 64 * KiB);  // place the pages
  int node = -1;
  // get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR): the node holding the page at p.
  if (syscall(SYS_get_mempolicy, &node, nullptr, 0, p, 3) == 0) {
    EXPECT_EQ(node, 0);
  }
  EXPECT_EQ(da_mempool_free(pool, p, nullptr), DA_STATUS_SUCCESS);
  EXPECT_EQ(da_mempool_destroy(pool), DA_STATUS_SUCCESS);

  c.numa_node = 999;
  EXPECT_EQ(da_mempool_create(&c, &pool), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "numa_node=999"), nullptr) << da_last_error();
}

TEST(DefaultPool, HostDefaultIsCreatedOnceAndTornDownExplicitly) {
  da_mempool* a = nullptr;
  da_mempool* b = nullptr;
  ASSERT_EQ(da_mempool_default(DA_MEMPOOL_HOST_DEVICE, &a), DA_STATUS_SUCCESS) << da_last_error();
  ASSERT_EQ(da_mempool_default(DA_MEMPOOL_HOST_DEVICE, &b), DA_STATUS_SUCCESS);
  EXPECT_EQ(a, b);
  void* p = nullptr;
  ASSERT_EQ(da_mempool_allocate(a, 4096, nullptr, &p), DA_STATUS_SUCCESS);
  EXPECT_EQ(da_mempool_destroy(a), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "da_mempool_default_destroy"), nullptr) << da_last_error();
  da_mempool_config c = da_mempool_config_default();
  c.backend = DA_MEMPOOL_BACKEND_HOST;
  EXPECT_EQ(da_mempool_default_create(DA_MEMPOOL_HOST_DEVICE, &c), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "already exists"), nullptr);
  EXPECT_EQ(da_mempool_free(a, p, nullptr), DA_STATUS_SUCCESS);
  EXPECT_EQ(da_mempool_default_destroy(DA_MEMPOOL_HOST_DEVICE), DA_STATUS_SUCCESS);
  EXPECT_EQ(da_mempool_allocate(a, 4096, nullptr, &p), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "destroyed"), nullptr);
  EXPECT_EQ(da_mempool_default_destroy(DA_MEMPOOL_HOST_DEVICE), DA_STATUS_SUCCESS);  // no-op

  // An explicit config, then a fresh default.
  c.small_segment_bytes = 4 * MiB;
  ASSERT_EQ(da_mempool_default_create(DA_MEMPOOL_HOST_DEVICE, &c), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_mempool_default(DA_MEMPOOL_HOST_DEVICE, &a), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_mempool_allocate(a, 4096, nullptr, &p), DA_STATUS_SUCCESS);
  da_mempool_stats s;
  da_mempool_get_stats(a, &s);
  EXPECT_EQ(s.reserved_bytes, 4 * MiB);
  EXPECT_EQ(da_mempool_default_destroy(DA_MEMPOOL_HOST_DEVICE), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "1 allocations (4096 bytes)"), nullptr) << da_last_error();
}

// ---- stream ordering, on the simulated device -------------------------------

sim_options Streams() { return sim_options{1, 0, 1024 * MiB}; }       // like cudaMalloc
sim_options AsyncStreams() { return sim_options{1, 1, 1024 * MiB}; }  // like cudaMallocAsync

TEST(StreamOrder, SameStreamReuseIsImmediateAndCallsNothing) {
  Pool pool(SmallConfig(), Streams());
  void* a = pool.Alloc(4 * KiB, 1);
  pool.Free(a, 1);  // stream 1's work may still be using it
  da_mempool_stats before = pool.Stats();
  void* b = pool.Alloc(4 * KiB, 1);
  EXPECT_EQ(a, b);  // stream order makes it safe on stream 1
  EXPECT_EQ(sim_check_use(pool.sim(), b, 4 * KiB, sim_stream(1)), nullptr);
  da_mempool_stats after = pool.Stats();
  EXPECT_EQ(after.backend_allocs, before.backend_allocs);
  EXPECT_EQ(after.events_recorded, 1u);  // the fence recorded at the first free
  EXPECT_EQ(after.event_queries, 0u);
  EXPECT_EQ(after.backend_syncs, 0u);
  pool.Free(b, 1);  // the fence is still outstanding: no new one
  EXPECT_EQ(pool.Stats().events_recorded, 1u);
}

TEST(StreamOrder, OtherStreamsWaitForAFenceRecordedAfterTheFree) {
  Pool pool(SmallConfig(), Streams());
  void* a = pool.Alloc(64 * KiB, 1);  // a whole large segment
  pool.Free(a, 1);
  EXPECT_EQ(pool.Stats().pending_bytes, 64 * KiB);
  EXPECT_EQ(pool.Stats().events_recorded, 1u);  // a fence, recorded at the free
  // Stream 2 cannot have it yet: the fence has not completed; a new segment.
  void* b = pool.Alloc(64 * KiB, 2);
  EXPECT_NE(a, b);
  EXPECT_EQ(pool.Stats().events_recorded, 1u);
  EXPECT_EQ(pool.Stats().backend_syncs, 0u);
  // Still running: the next miss only queries the fence.
  void* c = pool.Alloc(64 * KiB, 2);
  EXPECT_NE(a, c);
  EXPECT_EQ(pool.Stats().events_recorded, 1u);
  EXPECT_GE(pool.Stats().event_queries, 1u);
  // Stream 1's work completes: the block becomes everyone's.
  sim_complete(pool.sim(), 1);
  void* d = pool.Alloc(64 * KiB, 2);
  EXPECT_EQ(d, a);
  EXPECT_EQ(sim_check_use(pool.sim(), d, 64 * KiB, sim_stream(2)), nullptr);
  da_mempool_stats s = pool.Stats();
  EXPECT_EQ(s.pending_bytes, 0u);
  EXPECT_EQ(s.backend_syncs, 0u);
  pool.Free(b, 2);
  pool.Free(c, 2);
  pool.Free(d, 2);
}

TEST(StreamOrder, AFenceCoversOnlyTheFreesBeforeIt) {
  Pool pool(SmallConfig(), Streams());
  void* x = pool.Alloc(64 * KiB, 1);
  void* y = pool.Alloc(64 * KiB, 1);
  void* hold = pool.Alloc(64 * KiB, 2);
  pool.Free(x, 1);
  void* z = pool.Alloc(64 * KiB, 2);  // miss: x's fence (from its free) is pending
  EXPECT_NE(z, x);
  pool.Free(y, 1);  // after the fence; one is outstanding, so none is recorded
  sim_complete(pool.sim(), 1);
  void* w = pool.Alloc(64 * KiB, 2);  // the fence completed: x is ready, y not yet
  EXPECT_EQ(w, x);
  EXPECT_EQ(pool.Stats().pending_bytes, 64 * KiB);
  EXPECT_EQ(pool.Stats().events_recorded, 2u);  // a second fence, now covering y
  // Stream 1 is idle, so the second fence is complete by the next miss.
  void* v = pool.Alloc(64 * KiB, 2);
  EXPECT_EQ(v, y);
  for (void* p : {hold, z, w, v}) pool.Free(p, 2);
}

TEST(StreamOrder, BlocksPendingOnDifferentStreamsDoNotMerge) {
  Pool pool(SmallConfig(), Streams());
  void* a = pool.Alloc(16 * KiB, 1);
  void* b = pool.Alloc(16 * KiB, 1);
  void* c = pool.Alloc(16 * KiB, 1);
  void* d = pool.Alloc(16 * KiB, 1);
  pool.Free(a, 1);
  pool.Free(b, 2);  // handed over to stream 2
  EXPECT_EQ(pool.Stats().largest_free_block_bytes, 16 * KiB);
  pool.Free(c, 2);
  EXPECT_EQ(pool.Stats().largest_free_block_bytes, 32 * KiB);  // b + c, both stream 2
  pool.Free(d, 1);
  sim_complete(pool.sim(), -1);
  EXPECT_EQ(da_mempool_trim(pool.get(), 0), DA_STATUS_SUCCESS);  // fences, then merges
  EXPECT_EQ(pool.Stats().reserved_bytes, 0u);
}

TEST(StreamOrder, ReleasedStreamIsForgottenAndItsBlocksWaitForItsWork) {
  Pool pool(SmallConfig(), Streams());
  void* a = pool.Alloc(64 * KiB, 3);
  pool.Free(a, 3);
  EXPECT_EQ(da_mempool_release_stream(pool.get(), sim_stream(3)), DA_STATUS_SUCCESS);
  EXPECT_EQ(pool.Stats().events_recorded, 1u);
  EXPECT_EQ(da_mempool_check(pool.get()), DA_STATUS_SUCCESS) << da_last_error();
  // A new stream that gets the same handle does not inherit the old one's blocks.
  void* b = pool.Alloc(64 * KiB, 3);
  EXPECT_NE(b, a);
  sim_complete(pool.sim(), 3);
  void* c = pool.Alloc(64 * KiB, 1);
  EXPECT_EQ(c, a);
  EXPECT_EQ(sim_live_events(pool.sim()), 0u);  // the released stream's slot is gone
  EXPECT_EQ(da_mempool_release_stream(pool.get(), sim_stream(7)), DA_STATUS_SUCCESS);  // unseen
  pool.Free(b, 3);
  pool.Free(c, 1);
}

TEST(StreamOrder, NoBackendCallsInTheSteadyState) {
  Pool pool(da_mempool_config_default(), Streams());
  // A training-step-like pattern on 3 streams, with buffers handed from the compute
  // stream (1) to the communication stream (2) and freed there.
  auto step = [&](bool warm) {
    std::vector<void*> acts;
    for (int l = 0; l < 12; l++) acts.push_back(pool.Alloc((l % 4 + 1) * 3 * MiB, 1));
    void* bucket = pool.Alloc(25 * MiB, 1);
    void* staging = pool.Alloc(64 * KiB, 3);
    for (int l = 11; l >= 0; l--) pool.Free(acts[l], 1);
    pool.Free(bucket, 2);  // all-reduced on stream 2, freed there
    pool.Free(staging, 3);
    (void)warm;
    sim_complete(pool.sim(), -1);  // the GPU keeps up
  };
  for (int i = 0; i < 3; i++) step(false);
  da_mempool_stats before = pool.Stats();
  for (int i = 0; i < 50; i++) step(true);
  da_mempool_stats after = pool.Stats();
  EXPECT_EQ(after.backend_allocs, before.backend_allocs);
  EXPECT_EQ(after.backend_frees, before.backend_frees);
  EXPECT_EQ(after.backend_syncs, 0u);
  EXPECT_EQ(after.misses, before.misses);
  EXPECT_EQ(after.hits - before.hits, 50u * 14u);
  // At most one fence per stream and step (recorded at a free when the stream's
  // previous fence was seen complete); no queries at all on same-stream hits.
  EXPECT_LE(after.events_recorded - before.events_recorded, 3u * 50u);
}

TEST(StreamOrder, StreamOrderedSegmentsStartPendingOnTheirStream) {
  Pool pool(SmallConfig(), AsyncStreams());
  void* a = pool.Alloc(1 * KiB, 1);  // a fresh 64 KiB segment, taken on stream 1
  EXPECT_EQ(pool.Stats().pending_bytes, 63 * KiB);
  void* b = pool.Alloc(1 * KiB, 2);  // must not use stream 1's fresh remainder yet
  EXPECT_EQ(pool.Stats().segments, 2u);
  EXPECT_EQ(sim_check_use(pool.sim(), b, 1 * KiB, sim_stream(2)), nullptr);
  void* c = pool.Alloc(1 * KiB, 1);
  EXPECT_EQ(c, at(a, 1 * KiB));
  pool.Free(a, 1);
  pool.Free(b, 2);
  pool.Free(c, 1);
  // Trim releases stream-ordered segments on their streams, without waiting.
  EXPECT_EQ(da_mempool_trim(pool.get(), 0), DA_STATUS_SUCCESS);
  da_mempool_stats s = pool.Stats();
  EXPECT_EQ(s.reserved_bytes, 0u);
  EXPECT_EQ(s.backend_syncs, 0u);
}

TEST(StreamOrder, StreamOrderedBackendsRecycleIdleSegmentsBeforeGrowing) {
  for (bool async : {false, true}) {
    Pool pool(SmallConfig(), async ? AsyncStreams() : Streams());
    void* small = pool.Alloc(64 * KiB, 1);
    void* mid = pool.Alloc(128 * KiB, 1);
    pool.Free(small, 1);
    pool.Free(mid, 1);
    sim_complete(pool.sim(), -1);
    EXPECT_EQ(da_mempool_trim(pool.get(), SIZE_MAX), DA_STATUS_SUCCESS);  // polls: all ready
    // Nothing cached fits 256 KiB. A stream-ordered backend gives the idle 64 and
    // 128 KiB segments back first (no waiting) for its driver pool to reuse; the
    // others keep them (releasing would synchronize the device).
    void* big = pool.Alloc(256 * KiB, 2);
    da_mempool_stats s = pool.Stats();
    EXPECT_EQ(s.reserved_bytes, async ? 256 * KiB : 448 * KiB) << async;
    EXPECT_EQ(s.backend_frees, async ? 2u : 0u);
    EXPECT_EQ(s.backend_syncs, 0u);
    pool.Free(big, 2);
  }
}

TEST(StreamOrder, TrimWaitsForPendingBlocksWhenTheBackendCannotOrderFrees) {
  Pool pool(SmallConfig(), Streams());
  void* a = pool.Alloc(64 * KiB, 1);
  pool.Free(a, 1);
  EXPECT_EQ(da_mempool_trim(pool.get(), 0), DA_STATUS_SUCCESS);
  da_mempool_stats s = pool.Stats();
  EXPECT_EQ(s.reserved_bytes, 0u);
  EXPECT_EQ(s.backend_syncs, 1u);  // one event synchronize, off the hot path
}

TEST(Pressure, BackendFailureReleasesCacheAndRetriesOnce) {
  Pool pool(SmallConfig(), Streams());
  void* a = pool.Alloc(64 * KiB, 1);
  pool.Free(a, 1);
  sim_fail_next_allocs(pool.sim(), 1);
  void* b = pool.Alloc(128 * KiB, 1);  // fails once, releases a's segment, retries
  ASSERT_NE(b, nullptr);
  da_mempool_stats s = pool.Stats();
  EXPECT_EQ(s.oom_retries, 1u);
  EXPECT_EQ(s.reserved_bytes, 128 * KiB);
  sim_fail_next_allocs(pool.sim(), 2);
  void* c = (void*)1;
  EXPECT_EQ(da_mempool_allocate(pool.get(), 128 * KiB, sim_stream(1), &c), DA_STATUS_OUT_OF_MEMORY);
  EXPECT_EQ(c, nullptr);
  EXPECT_NE(strstr(da_last_error(), "even after releasing"), nullptr) << da_last_error();
  EXPECT_EQ(da_mempool_check(pool.get()), DA_STATUS_SUCCESS) << da_last_error();
  pool.Free(b, 1);
}

TEST(Pressure, LowFreeMemoryMakesCleanupAggressive) {
  da_mempool_config c = SmallConfig();
  c.pressure_free_fraction = 0.5;
  Pool pool(c, sim_options{1, 0, 1 * MiB});
  void* a = pool.Alloc(64 * KiB, 1);
  pool.Free(a, 1);
  sim_complete(pool.sim(), -1);
  void* b = pool.Alloc(1 * KiB, 2);  // plenty free: a's segment stays cached
  da_mempool_stats s = pool.Stats();
  EXPECT_EQ(s.pressure_cleanups, 0u);
  EXPECT_EQ(s.reserved_bytes, 128 * KiB);
  pool.Free(b, 2);
  sim_set_external_use(pool.sim(), 700 * KiB);  // someone else takes the device's memory
  void* d = pool.Alloc(128 * KiB, 1);           // growth under pressure: cache goes first
  s = pool.Stats();
  EXPECT_EQ(s.pressure_cleanups, 1u);
  EXPECT_EQ(s.reserved_bytes, 64 * KiB + 128 * KiB);  // a's ready segment was released
  pool.Free(d, 1);
  sim_complete(pool.sim(), -1);
  sim_set_external_use(pool.sim(), 0);
  EXPECT_EQ(da_mempool_trim(pool.get(), 0), DA_STATUS_SUCCESS);
  EXPECT_EQ(pool.Stats().reserved_bytes, 0u);
}

TEST(Pressure, UnderPressureWhollyFreeReadySegmentsGoAtOnce) {
  da_mempool_config c = SmallConfig();
  c.pressure_free_fraction = 0.9;
  Pool pool(c, sim_options{0, 0, 1 * MiB});  // no stream ordering: frees are ready
  void* a = pool.Alloc(64 * KiB);           // 64 KiB of 1 MiB used: above 10% free
  da_mempool_stats s = pool.Stats();
  EXPECT_EQ(s.pressure_cleanups, 0u);
  sim_set_external_use(pool.sim(), 800 * KiB);
  void* b = pool.Alloc(1 * KiB);  // growth sees < 90% free
  EXPECT_EQ(pool.Stats().pressure_cleanups, 1u);
  pool.Free(a);
  EXPECT_EQ(pool.Stats().reserved_bytes, 64 * KiB);  // a's segment went at once
  pool.Free(b);
  EXPECT_EQ(pool.Stats().reserved_bytes, 0u);
}

}  // namespace
