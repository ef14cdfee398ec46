// Randomized allocate/free sequences with every invariant checked after every step:
// no two live blocks overlap, every block is aligned, block contents survive other
// operations, the counters add up, and the pool's own walk (blocks tile segments,
// coalescing left no two adjacent free blocks of one stream, indexes and ownership
// map agree) passes. Several configurations and workload shapes.
#include <stdint.h>
#include <string.h>

#include <iterator>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "mempool/da_mempool.h"
#include "mempool/mempool_internal.h"
#include "tests/mempool/sim_backend.h"

namespace {

constexpr size_t KiB = 1024, MiB = 1024 * 1024;

enum class Shape { kRandom, kStack, kQueue, kSawtooth };
enum class Backend { kHost, kSimStreams, kSimAsync };

struct Live {
  size_t bytes;
  int stream;
  uint8_t seed;
};

class Harness {
 public:
  Harness(Backend backend, size_t alignment, bool scaled, uint64_t seed)
      : rng_(seed), backend_(backend) {
    config_ = da_mempool_config_default();
    config_.alignment_bytes = alignment;
    if (scaled) {  // 1/16 of the default shape: more splits and segments per step
      config_.small_request_max_bytes = 64 * KiB;
      config_.small_segment_bytes = 128 * KiB;
      config_.large_rounding_bytes = 128 * KiB;
      for (int i = 0; i < config_.num_size_classes; i++) config_.size_classes_bytes[i] /= 16;
    }
    unit_ = config_.small_request_max_bytes;
    if (backend == Backend::kHost) {
      config_.backend = DA_MEMPOOL_BACKEND_HOST;
      EXPECT_EQ(da_mempool_create(&config_, &pool_), DA_STATUS_SUCCESS) << da_last_error();
    } else {
      sim_options o = {1, backend == Backend::kSimAsync, 4096 * MiB};
      sim_ = sim_backend_create(&o);
      EXPECT_EQ(da_mempool_create_with_backend(&config_, sim_, &pool_), DA_STATUS_SUCCESS);
    }
  }
  ~Harness() { da_mempool_destroy(pool_); }

  size_t RandomSize() {
    uint64_t r = rng_() % 100;
    if (r < 50) return 1 + rng_() % 2048;                       // tiny
    if (r < 80) return 1 + rng_() % unit_;                      // small
    if (r < 97) return unit_ + 1 + rng_() % (8 * unit_);        // large
    return 8 * unit_ + rng_() % (32 * unit_);                   // huge
  }

  void Allocate() {
    size_t bytes = RandomSize();
    int stream = streams() ? (int)(rng_() % 3) : 0;
    void* p = nullptr;
    ASSERT_EQ(da_mempool_allocate(pool_, bytes, sim_stream(stream), &p), DA_STATUS_SUCCESS)
        << da_last_error();
    uintptr_t a = (uintptr_t)p;
    ASSERT_EQ(a % config_.alignment_bytes, 0u) << "misaligned " << p;
    auto next = live_.lower_bound(a);
    if (next != live_.end()) {
      ASSERT_LE(a + bytes, next->first) << "overlaps the next live block";
    }
    if (next != live_.begin()) {
      auto prev = std::prev(next);
      ASSERT_LE(prev->first + prev->second.bytes, a) << "overlaps the previous live block";
    }
    if (sim_) {
      const char* why = sim_check_use(sim_, p, bytes, sim_stream(stream));
      ASSERT_EQ(why, nullptr) << why;
    }
    Live l = {bytes, stream, (uint8_t)rng_()};
    Fill(p, l);
    live_[a] = l;
    order_.push_back(a);
    requested_ += bytes;
  }

  void Free(uintptr_t a) {
    Live l = live_.at(a);
    ASSERT_TRUE(Intact((void*)a, l)) << "contents of " << (void*)a << " changed";
    // Now and then ownership moves to another stream before the free.
    int stream = streams() && rng_() % 8 == 0 ? (int)(rng_() % 3) : l.stream;
    // The work that used the block is submitted before the free, as in a program.
    if (sim_) sim_note_free(sim_, (void*)a, l.bytes, sim_stream(l.stream), sim_stream(stream));
    ASSERT_EQ(da_mempool_free(pool_, (void*)a, sim_stream(stream)), DA_STATUS_SUCCESS)
        << da_last_error();
    live_.erase(a);
    requested_ -= l.bytes;
  }

  void Step(Shape shape, int step) {
    bool grow = live_.empty() || rng_() % 100 < 55;
    if (shape == Shape::kSawtooth) grow = (step / 200) % 2 == 0 && live_.size() < 400;
    if (grow) {
      Allocate();
    } else if (!live_.empty()) {
      Free(Pick(shape));
    }
    if (sim_ && rng_() % 16 == 0) sim_complete(sim_, (int)(rng_() % 4) - 1);  // the GPU progresses
    if (rng_() % 200 == 0) {
      ASSERT_EQ(da_mempool_trim(pool_, rng_() % 4 * unit_), DA_STATUS_SUCCESS);
    }
    CheckInvariants();
  }

  void CheckInvariants() {
    ASSERT_EQ(da_mempool_check(pool_), DA_STATUS_SUCCESS) << da_last_error();
    da_mempool_stats s;
    ASSERT_EQ(da_mempool_get_stats(pool_, &s), DA_STATUS_SUCCESS);
    ASSERT_EQ(s.live_allocations, live_.size());
    ASSERT_EQ(s.requested_bytes, requested_);
    ASSERT_GE(s.allocated_bytes, s.requested_bytes);
    ASSERT_EQ(s.cached_bytes + s.allocated_bytes, s.reserved_bytes);
    ASSERT_LE(s.pending_bytes, s.cached_bytes);
    ASSERT_LE(s.largest_free_block_bytes, s.cached_bytes);
    ASSERT_GE(s.peak_reserved_bytes, s.reserved_bytes);
    ASSERT_GE(s.peak_allocated_bytes, s.allocated_bytes);
    ASSERT_EQ(s.hits + s.misses, s.allocations);
    if (s.cached_bytes) {
      ASSERT_DOUBLE_EQ(s.fragmentation, 1.0 - (double)s.largest_free_block_bytes / s.cached_bytes);
    }
    if (sim_) {
      ASSERT_EQ(s.reserved_bytes, sim_segment_bytes(sim_));
    }
  }

  // Frees everything and checks that every segment went back whole: coalescing
  // rebuilt each segment into one free block.
  void Drain() {
    while (!live_.empty()) Free(live_.begin()->first);
    for (int round = 0; round < 3; round++) {
      if (sim_) sim_complete(sim_, -1);
      ASSERT_EQ(da_mempool_trim(pool_, 0), DA_STATUS_SUCCESS) << da_last_error();
    }
    da_mempool_stats s;
    da_mempool_get_stats(pool_, &s);
    ASSERT_EQ(s.reserved_bytes, 0u);
    ASSERT_EQ(s.segments, 0u);
    ASSERT_EQ(s.backend_allocs, s.backend_frees);
  }

 private:
  bool streams() const { return backend_ != Backend::kHost; }

  uintptr_t Pick(Shape shape) {
    // order_ may hold freed addresses; skip them lazily.
    for (;;) {
      size_t i;
      if (shape == Shape::kStack || shape == Shape::kSawtooth)
        i = order_.size() - 1;
      else if (shape == Shape::kQueue)
        i = 0;
      else
        i = rng_() % order_.size();
      uintptr_t a = order_[i];
      order_.erase(order_.begin() + (ptrdiff_t)i);
      if (live_.count(a)) return a;
    }
  }

  // Small blocks entirely, large ones at both ends.
  static void Fill(void* p, const Live& l) {
    uint8_t* b = (uint8_t*)p;
    size_t head = l.bytes < 4096 ? l.bytes : 64;
    for (size_t i = 0; i < head; i++) b[i] = (uint8_t)(l.seed + i);
    for (size_t i = head; i < l.bytes && i < head + 64; i++)
      b[l.bytes - 1 - (i - head)] = (uint8_t)(l.seed ^ i);
  }
  static bool Intact(void* p, const Live& l) {
    uint8_t* b = (uint8_t*)p;
    size_t head = l.bytes < 4096 ? l.bytes : 64;
    for (size_t i = 0; i < head; i++)
      if (b[i] != (uint8_t)(l.seed + i)) return false;
    for (size_t i = head; i < l.bytes && i < head + 64; i++)
      if (b[l.bytes - 1 - (i - head)] != (uint8_t)(l.seed ^ i)) return false;
    return true;
  }

  std::mt19937_64 rng_;
  Backend backend_;
  da_mempool_config config_;
  size_t unit_ = 0;
  da_mempool* pool_ = nullptr;
  da_mp_backend* sim_ = nullptr;
  std::map<uintptr_t, Live> live_;
  std::vector<uintptr_t> order_;
  size_t requested_ = 0;
};

struct Case {
  Backend backend;
  size_t alignment;
  bool scaled;
  Shape shape;
};

std::string Name(const Case& c) {
  const char* b[] = {"host", "sim_streams", "sim_async"};
  const char* s[] = {"random", "stack", "queue", "sawtooth"};
  return std::string(b[(int)c.backend]) + "_align" + std::to_string(c.alignment) +
         (c.scaled ? "_scaled_" : "_default_") + s[(int)c.shape];
}

class Randomized : public ::testing::TestWithParam<Case> {};

TEST_P(Randomized, InvariantsHoldAfterEveryStep) {
  const Case& c = GetParam();
  Harness h(c.backend, c.alignment, c.scaled, std::hash<std::string>()(Name(c)));
  for (int step = 0; step < 6000; step++) {
    h.Step(c.shape, step);
    if (HasFatalFailure()) FAIL() << "at step " << step;
  }
  h.Drain();
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  for (Backend b : {Backend::kHost, Backend::kSimStreams, Backend::kSimAsync})
    for (Shape s : {Shape::kRandom, Shape::kStack, Shape::kQueue, Shape::kSawtooth})
      cases.push_back({b, b == Backend::kHost ? 256u : 512u, true, s});
  for (size_t a : {16u, 4096u}) cases.push_back({Backend::kHost, a, true, Shape::kRandom});
  cases.push_back({Backend::kHost, 256, false, Shape::kRandom});
  cases.push_back({Backend::kSimStreams, 256, false, Shape::kSawtooth});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Pool, Randomized, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) { return Name(info.param); });

}  // namespace
