// 16 threads allocate and free concurrently, mixed sizes, with blocks handed from
// thread to thread (freed by a thread that did not allocate them). Every block is
// stamped with its owner and checked on free, so overlapping blocks or a lost update
// under the lock shows up as a changed stamp or a wrong counter.
#include <stdint.h>
#include <string.h>

#include <atomic>
#include <deque>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "mempool/da_mempool.h"
#include "mempool/mempool_internal.h"
#include "tests/mempool/sim_backend.h"

namespace {

constexpr int kThreads = 16;
constexpr size_t KiB = 1024, MiB = 1024 * 1024;

struct Block {
  uint64_t* p;
  size_t bytes;
  uint64_t stamp;
};

// Blocks in flight between threads.
class Handoff {
 public:
  void Put(Block b) {
    std::lock_guard<std::mutex> lock(mu_);
    q_.push_back(b);
  }
  bool Take(Block* b) {
    std::lock_guard<std::mutex> lock(mu_);
    if (q_.empty()) return false;
    *b = q_.front();
    q_.pop_front();
    return true;
  }

 private:
  std::mutex mu_;
  std::deque<Block> q_;
};

void Stamp(const Block& b) {
  size_t words = b.bytes / 8;
  b.p[0] = b.stamp;
  if (words > 1) b.p[words - 1] = ~b.stamp;
  if (words > 2) b.p[words / 2] = b.stamp * 3;
}

bool StampIntact(const Block& b) {
  size_t words = b.bytes / 8;
  return b.p[0] == b.stamp && (words <= 1 || b.p[words - 1] == ~b.stamp) &&
         (words <= 2 || b.p[words / 2] == b.stamp * 3);
}

void Hammer(da_mempool* pool, bool streams, int iterations) {
  Handoff handoff;
  std::atomic<int> errors{0};
  std::atomic<uint64_t> allocs{0}, frees{0};
  auto worker = [&](int id) {
    std::mt19937_64 rng(1000 + id);
    std::vector<Block> mine;
    void* stream = sim_stream(streams ? id % 4 : 0);
    auto release = [&](const Block& b) {
      if (!StampIntact(b)) errors++;
      if (da_mempool_free(pool, b.p, stream) != DA_STATUS_SUCCESS) errors++;
      frees++;
    };
    for (int i = 0; i < iterations; i++) {
      uint64_t r = rng() % 100;
      if (r < 50 || mine.empty()) {
        size_t bytes = 8 * (1 + (r < 40 ? rng() % 512 : r < 48 ? rng() % (64 * KiB) : rng() % MiB));
        void* p = nullptr;
        if (da_mempool_allocate(pool, bytes, stream, &p) != DA_STATUS_SUCCESS) {
          errors++;
          continue;
        }
        allocs++;
        Block b = {(uint64_t*)p, bytes, ((uint64_t)id << 48) | (uint64_t)i};
        Stamp(b);
        if (rng() % 4 == 0)
          handoff.Put(b);  // another thread frees it
        else
          mine.push_back(b);
      } else if (r < 85) {
        size_t k = rng() % mine.size();
        release(mine[k]);
        mine[k] = mine.back();
        mine.pop_back();
      } else {
        Block b;
        if (handoff.Take(&b)) release(b);
      }
      if (mine.size() > 64) {
        release(mine.front());
        mine.erase(mine.begin());
      }
    }
    for (const Block& b : mine) release(b);
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; t++) threads.emplace_back(worker, t);
  for (auto& t : threads) t.join();
  Block b;
  while (handoff.Take(&b)) {
    if (!StampIntact(b)) errors++;
    if (da_mempool_free(pool, b.p, sim_stream(0)) != DA_STATUS_SUCCESS) errors++;
    frees++;
  }
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(allocs.load(), frees.load());
  ASSERT_EQ(da_mempool_check(pool), DA_STATUS_SUCCESS) << da_last_error();
  da_mempool_stats s;
  ASSERT_EQ(da_mempool_get_stats(pool, &s), DA_STATUS_SUCCESS);
  EXPECT_EQ(s.live_allocations, 0u);
  EXPECT_EQ(s.allocated_bytes, 0u);
  EXPECT_EQ(s.allocations, allocs.load());
  EXPECT_EQ(s.frees, frees.load());
  EXPECT_GT(s.hits, s.misses * 10);  // the cache works under contention too
  printf("%llu allocations, %llu misses, %zu segments, peak %.1f MiB reserved\n",
         (unsigned long long)s.allocations, (unsigned long long)s.misses, s.segments,
         s.peak_reserved_bytes / (double)MiB);
}

TEST(Stress, SixteenThreadsHostBackend) {
  da_mempool_config c = da_mempool_config_default();
  c.backend = DA_MEMPOOL_BACKEND_HOST;
  c.track_fragmentation = 1;  // the extra bookkeeping under the lock too
  c.profiling = 1;
  da_mempool* pool = nullptr;
  ASSERT_EQ(da_mempool_create(&c, &pool), DA_STATUS_SUCCESS);
  Hammer(pool, false, 20000);
  EXPECT_EQ(da_mempool_trim(pool, 0), DA_STATUS_SUCCESS);
  da_mempool_stats s;
  da_mempool_get_stats(pool, &s);
  EXPECT_EQ(s.reserved_bytes, 0u);  // every segment coalesced back to one block
  EXPECT_EQ(da_mempool_destroy(pool), DA_STATUS_SUCCESS);
}

// Four simulated streams shared by the threads; blocks handed across threads are
// freed on the receiving thread's stream. No work is ever pending on the simulated
// streams, so each fence completes at its first query: blocks keep moving between
// the per-stream free lists and the ready list, under contention.
TEST(Stress, SixteenThreadsStreamOrdered) {
  da_mempool_config c = da_mempool_config_default();
  sim_options o = {1, 0, (size_t)64 << 30};
  da_mp_backend* sim = sim_backend_create(&o);
  da_mempool* pool = nullptr;
  ASSERT_EQ(da_mempool_create_with_backend(&c, sim, &pool), DA_STATUS_SUCCESS);
  Hammer(pool, true, 10000);
  EXPECT_EQ(da_mempool_destroy(pool), DA_STATUS_SUCCESS);
}

}  // namespace
