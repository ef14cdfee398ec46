// The device backends on a real GPU: cudaMalloc, the cudaMallocAsync pool and pinned
// memory serve usable memory; a block freed on a stream is reused there at once and
// on other streams only once that stream's work is done; the steady state makes no
// synchronizing call (checked both by the backend's counter and by a stream held
// shut with a host function: a synchronizing pool would hang there). Every case
// skips, saying why, on a machine without a GPU.
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <string.h>

#include <atomic>
#include <chrono>
#include <initializer_list>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "device/da_device.h"
#include "mempool/da_mempool.h"
#include "mempool/mempool_internal.h"

namespace {

constexpr size_t KiB = 1024, MiB = 1024 * 1024;
using Clock = std::chrono::steady_clock;

#define REQUIRE_GPU()                                                      \
  do {                                                                     \
    int count_ = 0;                                                        \
    if (da_device_count(&count_) != DA_STATUS_SUCCESS || count_ == 0)      \
      GTEST_SKIP() << "no GPU here (" << da_last_error() << ")";          \
  } while (0)

#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

// Holds streams shut: work enqueued after Close() waits until Open() (or 20 s). The
// runtime runs host functions one at a time, so one gate holds several streams:
// the first runs the host function, the others wait for it through an event.
class Gate {
 public:
  void Close(std::initializer_list<cudaStream_t> streams) {
    open_ = false;
    reached_ = false;
    cudaStream_t first = *streams.begin();
    ASSERT_EQ(cudaLaunchHostFunc(first, Wait, this), cudaSuccess);
    ASSERT_EQ(cudaEventCreateWithFlags(&after_, cudaEventDisableTiming), cudaSuccess);
    ASSERT_EQ(cudaEventRecord(after_, first), cudaSuccess);
    for (cudaStream_t s : streams) {
      if (s == first) continue;
      ASSERT_EQ(cudaStreamWaitEvent(s, after_, 0), cudaSuccess);
    }
    while (!reached_) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  void Open() { open_ = true; }
  ~Gate() {
    open_ = true;
    if (after_) {
      cudaEventSynchronize(after_);
      cudaEventDestroy(after_);
    }
  }

 private:
  static void CUDART_CB Wait(void* arg) {
    Gate* g = (Gate*)arg;
    g->reached_ = true;
    auto start = Clock::now();
    while (!g->open_ && Clock::now() - start < std::chrono::seconds(20))
      std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  std::atomic<bool> open_{false};
  std::atomic<bool> reached_{false};
  cudaEvent_t after_ = nullptr;
};

class Streams {
 public:
  explicit Streams(int n) {
    for (int i = 0; i < n; i++) {
      cudaStream_t s = nullptr;
      EXPECT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
      streams_.push_back(s);
    }
  }
  ~Streams() {
    for (cudaStream_t s : streams_) {
      cudaStreamSynchronize(s);
      cudaStreamDestroy(s);
    }
  }
  cudaStream_t operator[](int i) const { return streams_[i]; }

 private:
  std::vector<cudaStream_t> streams_;
};

da_mempool* MakePool(da_mempool_backend backend, da_mempool_config c = da_mempool_config_default()) {
  c.backend = backend;
  da_mempool* pool = nullptr;
  EXPECT_EQ(da_mempool_create(&c, &pool), DA_STATUS_SUCCESS) << da_last_error();
  return pool;
}

da_mempool_stats Stats(da_mempool* pool) {
  da_mempool_stats s;
  EXPECT_EQ(da_mempool_get_stats(pool, &s), DA_STATUS_SUCCESS);
  return s;
}

void* Alloc(da_mempool* pool, size_t bytes, cudaStream_t stream) {
  void* p = nullptr;
  EXPECT_EQ(da_mempool_allocate(pool, bytes, stream, &p), DA_STATUS_SUCCESS) << da_last_error();
  return p;
}

void Free(da_mempool* pool, void* p, cudaStream_t stream) {
  EXPECT_EQ(da_mempool_free(pool, p, stream), DA_STATUS_SUCCESS) << da_last_error();
}

class Backends : public ::testing::TestWithParam<da_mempool_backend> {};

std::string BackendName(const ::testing::TestParamInfo<da_mempool_backend>& info) {
  return da_mempool_backend_name(info.param);
}

TEST_P(Backends, ServesUsableMemoryOfTheRightKind) {
  REQUIRE_GPU();
  da_mempool* pool = MakePool(GetParam());
  Streams streams(1);
  cudaStream_t s = streams[0];
  bool pinned = GetParam() == DA_MEMPOOL_BACKEND_PINNED;
  for (size_t bytes : {(size_t)1, 4 * KiB, MiB + 1, 64 * MiB}) {
    uint8_t* p = (uint8_t*)Alloc(pool, bytes, s);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ((uintptr_t)p % 256, 0u);
    cudaPointerAttributes attr;
    CUDA_OK(cudaPointerGetAttributes(&attr, p));
    EXPECT_EQ(attr.type, pinned ? cudaMemoryTypeHost : cudaMemoryTypeDevice) << bytes;
    std::vector<uint8_t> back(bytes < 4096 ? bytes : 4096);
    if (pinned) {
      memset(p, 0x5a, bytes);
      void* d = nullptr;
      CUDA_OK(cudaMallocAsync(&d, back.size(), s));
      CUDA_OK(cudaMemcpyAsync(d, p + bytes - back.size(), back.size(), cudaMemcpyDefault, s));
      CUDA_OK(cudaMemcpyAsync(back.data(), d, back.size(), cudaMemcpyDefault, s));
      CUDA_OK(cudaFreeAsync(d, s));
    } else {
      CUDA_OK(cudaMemsetAsync(p, 0x5a, bytes, s));
      CUDA_OK(cudaMemcpyAsync(back.data(), p + bytes - back.size(), back.size(),
                              cudaMemcpyDeviceToHost, s));
    }
    CUDA_OK(cudaStreamSynchronize(s));
    for (uint8_t b : back) ASSERT_EQ(b, 0x5a);
    Free(pool, p, s);
  }
  EXPECT_EQ(da_mempool_check(pool), DA_STATUS_SUCCESS) << da_last_error();
  da_mempool_stats st = Stats(pool);
  EXPECT_EQ(st.live_allocations, 0u);
  EXPECT_GE(st.backend_allocs, 3u);
  EXPECT_EQ(da_mempool_destroy(pool), DA_STATUS_SUCCESS) << da_last_error();
}

TEST_P(Backends, SameStreamReuseIsImmediateEvenWhileTheStreamIsBusy) {
  REQUIRE_GPU();
  da_mempool* pool = MakePool(GetParam());
  Streams streams(1);
  Gate gate;
  void* warm = Alloc(pool, 8 * MiB, streams[0]);
  Free(pool, warm, streams[0]);
  gate.Close({streams[0]});
  da_mempool_stats before = Stats(pool);
  auto start = Clock::now();
  void* a = Alloc(pool, 8 * MiB, streams[0]);
  Free(pool, a, streams[0]);
  void* b = Alloc(pool, 8 * MiB, streams[0]);
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  gate.Open();
  EXPECT_EQ(a, warm);
  EXPECT_EQ(b, warm);
  EXPECT_LT(ms, 1000.0) << "the pool waited for the blocked stream";
  da_mempool_stats after = Stats(pool);
  EXPECT_EQ(after.backend_syncs, before.backend_syncs);
  EXPECT_EQ(after.backend_allocs, before.backend_allocs);
  EXPECT_EQ(after.events_recorded, before.events_recorded);
  Free(pool, b, streams[0]);
  EXPECT_EQ(da_mempool_destroy(pool), DA_STATUS_SUCCESS);
}

TEST_P(Backends, OtherStreamsReuseABlockOnlyAfterTheFreeingStreamsWorkIsDone) {
  REQUIRE_GPU();
  da_mempool* pool = MakePool(GetParam());
  Streams streams(2);
  Gate gate;
  void* x = Alloc(pool, 16 * MiB, streams[0]);
  gate.Close({streams[0]});  // stream 0's work (on x) cannot finish yet
  if (GetParam() != DA_MEMPOOL_BACKEND_PINNED) {
    CUDA_OK(cudaMemsetAsync(x, 1, 16 * MiB, streams[0]));
  }
  Free(pool, x, streams[0]);
  void* y = Alloc(pool, 16 * MiB, streams[1]);
  EXPECT_NE(y, x) << "x was handed to stream 1 while stream 0 may still write it";
  void* z = Alloc(pool, 16 * MiB, streams[1]);
  EXPECT_NE(z, x);
  da_mempool_stats mid = Stats(pool);
  EXPECT_GE(mid.events_recorded, 1u);
  EXPECT_EQ(mid.backend_syncs, 0u);
  gate.Open();
  CUDA_OK(cudaStreamSynchronize(streams[0]));  // the test waits, not the pool
  void* w = Alloc(pool, 16 * MiB, streams[1]);  // the fence has completed now
  EXPECT_EQ(w, x);
  EXPECT_EQ(Stats(pool).backend_syncs, 0u);
  for (void* p : {y, z, w}) Free(pool, p, streams[1]);
  EXPECT_EQ(da_mempool_destroy(pool), DA_STATUS_SUCCESS);
}

TEST_P(Backends, SteadyStateMakesNoSynchronizingCall) {
  REQUIRE_GPU();
  da_mempool* pool = MakePool(GetParam());
  Streams streams(3);
  const size_t sizes[] = {4 * KiB, 200 * KiB, MiB, 3 * MiB, 25 * MiB, 64 * MiB};
  // Warm-up: every size on every stream, including handover 0 -> 1 -> 2.
  auto round = [&](int k) {
    std::vector<void*> held;
    for (size_t bytes : sizes) held.push_back(Alloc(pool, bytes, streams[k % 3]));
    for (size_t i = 0; i < held.size(); i++) Free(pool, held[i], streams[(k + i) % 3]);
  };
  for (int k = 0; k < 12; k++) round(k);
  // Let every fence be recorded and complete, so every block is ready: trim with
  // nothing to release only polls the fences.
  for (int i = 0; i < 2; i++) {
    CUDA_OK(cudaDeviceSynchronize());
    ASSERT_EQ(da_mempool_trim(pool, SIZE_MAX), DA_STATUS_SUCCESS);
  }
  da_mempool_stats before = Stats(pool);

  // Same-stream pairs with every stream held shut: any synchronizing call would hang
  // here until the gates' 20 s timeout.
  Gate gate;
  gate.Close({streams[0], streams[1], streams[2]});
  auto start = Clock::now();
  for (int it = 0; it < 2000; it++) {
    cudaStream_t s = streams[it % 3];
    void* p = Alloc(pool, sizes[it % 6], s);
    Free(pool, p, s);
  }
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  gate.Open();
  da_mempool_stats after = Stats(pool);
  EXPECT_LT(ms, 2000.0) << "steady-state allocate/free waited for the device";
  EXPECT_EQ(after.backend_syncs, before.backend_syncs);
  EXPECT_EQ(after.backend_allocs, before.backend_allocs);
  EXPECT_EQ(after.backend_frees, before.backend_frees);
  EXPECT_EQ(after.misses, before.misses);
  printf("%s: 2000 pairs on blocked streams in %.2f ms, %llu syncs, %llu backend allocs\n",
         da_mempool_backend_name(GetParam()), ms,
         (unsigned long long)(after.backend_syncs - before.backend_syncs),
         (unsigned long long)(after.backend_allocs - before.backend_allocs));

  // Cross-stream steady state: blocks freed on other streams come back through
  // fences, never through a wait. The test lets the GPU finish each round (it
  // waits, not the pool), so every fence is complete when queried and the run is
  // deterministic: after warming up, the pool takes nothing more.
  auto settled_round = [&](int k) {
    round(k);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  };
  for (int k = 0; k < 60; k++) settled_round(k);
  before = Stats(pool);
  for (int k = 0; k < 300; k++) settled_round(k);
  after = Stats(pool);
  EXPECT_EQ(after.backend_syncs, before.backend_syncs);
  EXPECT_EQ(after.backend_allocs, before.backend_allocs);
  printf("%s: 300 cross-stream rounds: %llu fences recorded, %llu queries, %llu new segments\n",
         da_mempool_backend_name(GetParam()),
         (unsigned long long)(after.events_recorded - before.events_recorded),
         (unsigned long long)(after.event_queries - before.event_queries),
         (unsigned long long)(after.backend_allocs - before.backend_allocs));
  EXPECT_EQ(da_mempool_destroy(pool), DA_STATUS_SUCCESS);
}

INSTANTIATE_TEST_SUITE_P(Device, Backends,
                         ::testing::Values(DA_MEMPOOL_BACKEND_DEVICE,
                                           DA_MEMPOOL_BACKEND_DEVICE_ASYNC,
                                           DA_MEMPOOL_BACKEND_PINNED),
                         BackendName);

TEST(Device, AsyncBackendTrimsWithoutWaiting) {
  REQUIRE_GPU();
  da_mempool* pool = MakePool(DA_MEMPOOL_BACKEND_DEVICE_ASYNC);
  Streams streams(1);
  Gate gate;
  void* p = Alloc(pool, 64 * MiB, streams[0]);
  gate.Close({streams[0]});
  CUDA_OK(cudaMemsetAsync(p, 0, 64 * MiB, streams[0]));
  Free(pool, p, streams[0]);
  auto start = Clock::now();
  EXPECT_EQ(da_mempool_trim(pool, 0), DA_STATUS_SUCCESS) << da_last_error();
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  gate.Open();
  EXPECT_LT(ms, 1000.0);
  da_mempool_stats s = Stats(pool);
  EXPECT_EQ(s.reserved_bytes, 0u);
  EXPECT_EQ(s.backend_syncs, 0u);
  EXPECT_EQ(da_mempool_destroy(pool), DA_STATUS_SUCCESS);
}

TEST(Device, CudaMallocBackendTrimReleasesPendingBlocksSafely) {
  REQUIRE_GPU();
  da_mempool* pool = MakePool(DA_MEMPOOL_BACKEND_DEVICE);
  Streams streams(1);
  void* p = Alloc(pool, 64 * MiB, streams[0]);
  CUDA_OK(cudaMemsetAsync(p, 0, 64 * MiB, streams[0]));
  Free(pool, p, streams[0]);
  EXPECT_EQ(da_mempool_trim(pool, 0), DA_STATUS_SUCCESS) << da_last_error();
  da_mempool_stats s = Stats(pool);
  EXPECT_EQ(s.reserved_bytes, 0u);
  EXPECT_GE(s.backend_syncs, 1u);  // trim may wait; it is not the steady state
  EXPECT_EQ(da_mempool_destroy(pool), DA_STATUS_SUCCESS);
}

TEST(Device, OutOfMemoryIsAStatusAndThePoolKeepsWorking) {
  REQUIRE_GPU();
  da_mempool* pool = MakePool(DA_MEMPOOL_BACKEND_DEVICE);
  size_t free_bytes = 0, total = 0;
  CUDA_OK(cudaMemGetInfo(&free_bytes, &total));
  void* keep = Alloc(pool, 32 * MiB, nullptr);
  void* p = (void*)1;
  EXPECT_EQ(da_mempool_allocate(pool, 2 * total, nullptr, &p), DA_STATUS_OUT_OF_MEMORY);
  EXPECT_EQ(p, nullptr);
  EXPECT_NE(strstr(da_last_error(), "cudaMalloc"), nullptr) << da_last_error();
  EXPECT_EQ(Stats(pool).oom_retries, 1u);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // no error left behind
  void* q = Alloc(pool, 32 * MiB, nullptr);
  EXPECT_NE(q, nullptr);
  Free(pool, keep, nullptr);
  Free(pool, q, nullptr);
  EXPECT_EQ(da_mempool_destroy(pool), DA_STATUS_SUCCESS);
}

TEST(Device, PressureReleasesCacheBeforeGrowing) {
  REQUIRE_GPU();
  da_mempool_config c = da_mempool_config_default();
  c.pressure_free_fraction = 1.0;  // always "under pressure": every growth cleans up
  da_mempool* pool = MakePool(DA_MEMPOOL_BACKEND_DEVICE, c);
  void* a = Alloc(pool, 64 * MiB, nullptr);
  void* b = Alloc(pool, 64 * MiB, nullptr);
  Free(pool, a, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  void* d = Alloc(pool, 128 * MiB, nullptr);  // a's fence completes; then pressure
  da_mempool_stats s = Stats(pool);
  EXPECT_GE(s.pressure_cleanups, 1u);
  EXPECT_EQ(s.reserved_bytes, 64 * MiB + 128 * MiB);  // a's cached segment went first
  Free(pool, b, nullptr);
  Free(pool, d, nullptr);
  EXPECT_EQ(da_mempool_destroy(pool), DA_STATUS_SUCCESS);
}

TEST(Device, ReleaseStreamBeforeDestroyingIt) {
  REQUIRE_GPU();
  da_mempool* pool = MakePool(DA_MEMPOOL_BACKEND_DEVICE);
  Streams keep(1);
  cudaStream_t temp = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&temp, cudaStreamNonBlocking));
  void* x = Alloc(pool, 8 * MiB, temp);
  CUDA_OK(cudaMemsetAsync(x, 0, 8 * MiB, temp));
  Free(pool, x, temp);
  EXPECT_EQ(da_mempool_release_stream(pool, temp), DA_STATUS_SUCCESS);
  CUDA_OK(cudaStreamDestroy(temp));  // work may still be running: the fence covers it
  CUDA_OK(cudaDeviceSynchronize());
  void* y = Alloc(pool, 8 * MiB, keep[0]);
  EXPECT_EQ(y, x);
  Free(pool, y, keep[0]);
  EXPECT_EQ(da_mempool_check(pool), DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_EQ(da_mempool_destroy(pool), DA_STATUS_SUCCESS);
}

TEST(Device, DefaultPoolOfDeviceZero) {
  REQUIRE_GPU();
  da_mempool* pool = nullptr;
  ASSERT_EQ(da_mempool_default(0, &pool), DA_STATUS_SUCCESS) << da_last_error();
  void* p = Alloc(pool, MiB, nullptr);
  Free(pool, p, nullptr);
  da_mempool* again = nullptr;
  ASSERT_EQ(da_mempool_default(0, &again), DA_STATUS_SUCCESS);
  EXPECT_EQ(again, pool);
  EXPECT_EQ(da_mempool_default_destroy(0), DA_STATUS_SUCCESS) << da_last_error();
}

TEST(Device, ThreadsWithTheirOwnStreams) {
  REQUIRE_GPU();
  da_mempool* pool = MakePool(DA_MEMPOOL_BACKEND_DEVICE);
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; t++) {
    threads.emplace_back([&, t] {
      cudaStream_t s = nullptr;
      if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) {
        errors++;
        return;
      }
      for (int i = 0; i < 2000; i++) {
        void* p = nullptr;
        size_t bytes = (size_t)(1 + (i * 7 + t) % 64) * 64 * KiB;
        if (da_mempool_allocate(pool, bytes, s, &p) != DA_STATUS_SUCCESS) errors++;
        if (i % 100 == 0 && cudaMemsetAsync(p, t, bytes, s) != cudaSuccess) errors++;
        if (da_mempool_free(pool, p, s) != DA_STATUS_SUCCESS) errors++;
      }
      cudaStreamSynchronize(s);
      da_mempool_release_stream(pool, s);
      cudaStreamDestroy(s);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(da_mempool_check(pool), DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_EQ(Stats(pool).live_allocations, 0u);
  EXPECT_EQ(da_mempool_destroy(pool), DA_STATUS_SUCCESS);
}

}  // namespace
