// Bad use gives a status and a sentence, never corruption: double free, foreign and
// interior pointers, destroyed pools, zero and absurd sizes, destroy with live
// allocations, bad configs, NULL arguments, and device backends without a GPU.
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <string>

#include <gtest/gtest.h>

#include "device/da_device.h"
#include "mempool/da_mempool.h"
#include "mempool/mempool_internal.h"

namespace {

constexpr size_t MiB = 1024 * 1024;

da_mempool* HostPool() {
  da_mempool_config c = da_mempool_config_default();
  c.backend = DA_MEMPOOL_BACKEND_HOST;
  da_mempool* pool = nullptr;
  EXPECT_EQ(da_mempool_create(&c, &pool), DA_STATUS_SUCCESS) << da_last_error();
  return pool;
}

bool Says(const char* needle) { return strstr(da_last_error(), needle) != nullptr; }

void ExpectUnchanged(da_mempool* pool, size_t live, size_t requested) {
  da_mempool_stats s;
  ASSERT_EQ(da_mempool_get_stats(pool, &s), DA_STATUS_SUCCESS);
  EXPECT_EQ(s.live_allocations, live);
  EXPECT_EQ(s.requested_bytes, requested);
  EXPECT_EQ(da_mempool_check(pool), DA_STATUS_SUCCESS) << da_last_error();
}

TEST(Errors, DoubleFreeIsReportedAndChangesNothing) {
  da_mempool* pool = HostPool();
  void* a = nullptr;
  void* b = nullptr;
  ASSERT_EQ(da_mempool_allocate(pool, 1000, nullptr, &a), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_mempool_allocate(pool, 1000, nullptr, &b), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_mempool_free(pool, a, nullptr), DA_STATUS_SUCCESS);
  EXPECT_EQ(da_mempool_free(pool, a, nullptr), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(Says("double free")) << da_last_error();
  ExpectUnchanged(pool, 1, 1000);
  // Freed again after the memory merged with its neighbours: still a double free.
  ASSERT_EQ(da_mempool_free(pool, b, nullptr), DA_STATUS_SUCCESS);
  EXPECT_EQ(da_mempool_free(pool, b, nullptr), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(Says("double free")) << da_last_error();
  ExpectUnchanged(pool, 0, 0);
  EXPECT_EQ(da_mempool_destroy(pool), DA_STATUS_SUCCESS);
}

TEST(Errors, PointersThePoolDoesNotOwnAreRefused) {
  da_mempool* pool = HostPool();
  void* a = nullptr;
  ASSERT_EQ(da_mempool_allocate(pool, 4096, nullptr, &a), DA_STATUS_SUCCESS);
  int on_stack = 0;
  EXPECT_EQ(da_mempool_free(pool, &on_stack, nullptr), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(Says("not allocated by this pool")) << da_last_error();
  void* heap = malloc(64);
  EXPECT_EQ(da_mempool_free(pool, heap, nullptr), DA_STATUS_INVALID_ARGUMENT);
  free(heap);
  // Inside a live block: named with the block's start.
  EXPECT_EQ(da_mempool_free(pool, (char*)a + 100, nullptr), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(Says("100 bytes into the live allocation")) << da_last_error();
  // A pointer from another pool.
  da_mempool* other = HostPool();
  void* o = nullptr;
  ASSERT_EQ(da_mempool_allocate(other, 4096, nullptr, &o), DA_STATUS_SUCCESS);
  EXPECT_EQ(da_mempool_free(pool, o, nullptr), DA_STATUS_INVALID_ARGUMENT);
  ExpectUnchanged(pool, 1, 4096);
  ExpectUnchanged(other, 1, 4096);
  EXPECT_EQ(da_mempool_free(other, o, nullptr), DA_STATUS_SUCCESS);
  EXPECT_EQ(da_mempool_free(pool, a, nullptr), DA_STATUS_SUCCESS);
  EXPECT_EQ(da_mempool_destroy(other), DA_STATUS_SUCCESS);
  EXPECT_EQ(da_mempool_destroy(pool), DA_STATUS_SUCCESS);
}

TEST(Errors, NullPointerFreeIsANoOp) {
  da_mempool* pool = HostPool();
  EXPECT_EQ(da_mempool_free(pool, nullptr, nullptr), DA_STATUS_SUCCESS);
  da_mempool_stats s;
  da_mempool_get_stats(pool, &s);
  EXPECT_EQ(s.frees, 0u);
  EXPECT_EQ(da_mempool_destroy(pool), DA_STATUS_SUCCESS);
}

TEST(Errors, ZeroAndAbsurdSizes) {
  da_mempool* pool = HostPool();
  void* p = (void*)1;
  EXPECT_EQ(da_mempool_allocate(pool, 0, nullptr, &p), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(p, nullptr);
  EXPECT_TRUE(Says("bytes=0")) << da_last_error();
  p = (void*)1;
  EXPECT_EQ(da_mempool_allocate(pool, (size_t)-4, nullptr, &p), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(p, nullptr);
  EXPECT_TRUE(Says("absurd")) << da_last_error();
  EXPECT_EQ(da_mempool_allocate(pool, DA_MEMPOOL_MAX_ALLOCATION_BYTES + 1, nullptr, &p),
            DA_STATUS_INVALID_ARGUMENT);
  ExpectUnchanged(pool, 0, 0);
  // Not absurd, but more than the pool may take: a clean OUT_OF_MEMORY.
  da_mempool_config c = da_mempool_config_default();
  c.backend = DA_MEMPOOL_BACKEND_HOST;
  c.max_reserved_bytes = 1024 * MiB;
  da_mempool* capped = nullptr;
  ASSERT_EQ(da_mempool_create(&c, &capped), DA_STATUS_SUCCESS);
  EXPECT_EQ(da_mempool_allocate(capped, 2048 * MiB, nullptr, &p), DA_STATUS_OUT_OF_MEMORY);
  EXPECT_EQ(p, nullptr);
  EXPECT_TRUE(Says("max_reserved_bytes=1073741824")) << da_last_error();
  ExpectUnchanged(capped, 0, 0);
  EXPECT_EQ(da_mempool_destroy(capped), DA_STATUS_SUCCESS);
  EXPECT_EQ(da_mempool_allocate(pool, 10, nullptr, nullptr), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_mempool_destroy(pool), DA_STATUS_SUCCESS);
}

TEST(Errors, EveryCallOnADestroyedPoolIsRefused) {
  da_mempool* pool = HostPool();
  void* p = nullptr;
  ASSERT_EQ(da_mempool_allocate(pool, 64, nullptr, &p), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_mempool_free(pool, p, nullptr), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_mempool_destroy(pool), DA_STATUS_SUCCESS);
  da_mempool_stats s;
  da_mempool_class_stats cs;
  EXPECT_EQ(da_mempool_free(pool, p, nullptr), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(Says("free: the pool was destroyed")) << da_last_error();
  EXPECT_EQ(da_mempool_allocate(pool, 64, nullptr, &p), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(p, nullptr);
  EXPECT_EQ(da_mempool_get_stats(pool, &s), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_mempool_get_class_stats(pool, 0, &cs), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_mempool_trim(pool, 0), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_mempool_reset(pool), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_mempool_reset_peak_stats(pool), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_mempool_release_stream(pool, nullptr), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_mempool_destroy(pool), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(Says("destroyed")) << da_last_error();
}

TEST(Errors, NullHandleAndNullOutputs) {
  void* p = nullptr;
  da_mempool_stats s;
  EXPECT_EQ(da_mempool_allocate(nullptr, 64, nullptr, &p), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(Says("pool is NULL")) << da_last_error();
  EXPECT_EQ(da_mempool_free(nullptr, p, nullptr), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_mempool_destroy(nullptr), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_mempool_get_stats(nullptr, &s), DA_STATUS_INVALID_ARGUMENT);
  da_mempool_config c = da_mempool_config_default();
  EXPECT_EQ(da_mempool_create(&c, nullptr), DA_STATUS_INVALID_ARGUMENT);
  da_mempool* pool = (da_mempool*)1;
  EXPECT_EQ(da_mempool_create(nullptr, &pool), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(pool, nullptr);
  pool = HostPool();
  EXPECT_EQ(da_mempool_get_stats(pool, nullptr), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_mempool_get_class_stats(pool, 0, nullptr), DA_STATUS_INVALID_ARGUMENT);
  // Something that is not a pool at all.
  uint64_t junk[4] = {1, 2, 3, 4};
  EXPECT_EQ(da_mempool_free((da_mempool*)junk, p, nullptr), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(Says("not a da_mempool handle")) << da_last_error();
  EXPECT_EQ(da_mempool_destroy(pool), DA_STATUS_SUCCESS);
  EXPECT_STREQ(da_last_error(), "");  // a success clears the last error
}

TEST(Errors, DestroyWithLiveAllocationsReportsCountAndBytes) {
  da_mempool* pool = HostPool();
  void* p = nullptr;
  ASSERT_EQ(da_mempool_allocate(pool, 1000, nullptr, &p), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_mempool_allocate(pool, 3 * MiB, nullptr, &p), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_mempool_allocate(pool, 24, nullptr, &p), DA_STATUS_SUCCESS);
  EXPECT_EQ(da_mempool_destroy(pool), DA_STATUS_INVALID_ARGUMENT);
  std::string want = "3 allocations (" + std::to_string(1000 + 3 * MiB + 24) + " bytes)";
  EXPECT_TRUE(Says(want.c_str())) << da_last_error();
  // The pool is gone either way (its memory too): no leak, and the handle is dead.
  EXPECT_EQ(da_mempool_trim(pool, 0), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(Says("destroyed"));
}

struct BadConfig {
  const char* field;  // what the sentence must name
  void (*spoil)(da_mempool_config*);
};

TEST(Errors, EveryBadConfigFieldIsNamed) {
  const BadConfig cases[] = {
      {"config.backend", [](da_mempool_config* c) { c->backend = (da_mempool_backend)7; }},
      {"num_size_classes", [](da_mempool_config* c) { c->num_size_classes = 0; }},
      {"num_size_classes", [](da_mempool_config* c) { c->num_size_classes = 33; }},
      {"size_classes_bytes[0] is 0", [](da_mempool_config* c) { c->size_classes_bytes[0] = 0; }},
      {"must ascend", [](da_mempool_config* c) { c->size_classes_bytes[3] = 1; }},
      {"alignment_bytes=100", [](da_mempool_config* c) { c->alignment_bytes = 100; }},
      {"alignment_bytes=8", [](da_mempool_config* c) { c->alignment_bytes = 8; }},
      {"alignment_bytes=8192", [](da_mempool_config* c) { c->alignment_bytes = 8192; }},
      {"small_segment_bytes", [](da_mempool_config* c) { c->small_segment_bytes = 1000; }},
      {"large_rounding_bytes", [](da_mempool_config* c) { c->large_rounding_bytes = 0; }},
      {"small_request_max_bytes", [](da_mempool_config* c) { c->small_request_max_bytes = 4 * MiB; }},
      {"max_reserved_bytes", [](da_mempool_config* c) { c->max_reserved_bytes = 0; }},
      {"cleanup_threshold", [](da_mempool_config* c) { c->cleanup_threshold = 1.5; }},
      {"cleanup_threshold", [](da_mempool_config* c) { c->cleanup_threshold = NAN; }},
      {"pressure_free_fraction", [](da_mempool_config* c) { c->pressure_free_fraction = -0.1; }},
      {"track_fragmentation", [](da_mempool_config* c) { c->track_fragmentation = 2; }},
      {"profiling", [](da_mempool_config* c) { c->profiling = -1; }},
      {"numa_node=-2", [](da_mempool_config* c) { c->numa_node = -2; }},
  };
  for (const BadConfig& bad : cases) {
    da_mempool_config c = da_mempool_config_default();
    c.backend = DA_MEMPOOL_BACKEND_HOST;
    bad.spoil(&c);
    da_mempool* pool = (da_mempool*)1;
    EXPECT_EQ(da_mempool_create(&c, &pool), DA_STATUS_INVALID_ARGUMENT) << bad.field;
    EXPECT_EQ(pool, nullptr);
    EXPECT_TRUE(Says(bad.field)) << bad.field << ": " << da_last_error();
  }
  // Device-only and host-only fields in the wrong place.
  da_mempool_config c = da_mempool_config_default();
  c.numa_node = 0;  // device backend
  da_mempool* pool = nullptr;
  EXPECT_EQ(da_mempool_create(&c, &pool), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(Says("applies to host memory")) << da_last_error();
  c = da_mempool_config_default();
  c.device = -3;
  EXPECT_EQ(da_mempool_create(&c, &pool), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(Says("config.device=-3")) << da_last_error();
}

bool HaveGpu() {
  int n = 0;
  return da_device_count(&n) == DA_STATUS_SUCCESS && n > 0;
}

TEST(Errors, DeviceBackendsWithoutAGpuSayNoDevice) {
  const da_mempool_backend kinds[] = {DA_MEMPOOL_BACKEND_DEVICE, DA_MEMPOOL_BACKEND_DEVICE_ASYNC,
                                      DA_MEMPOOL_BACKEND_PINNED};
  for (da_mempool_backend kind : kinds) {
    da_mempool_config c = da_mempool_config_default();
    c.backend = kind;
    da_mempool* pool = nullptr;
    da_status st = da_mempool_create(&c, &pool);
    if (HaveGpu()) {
      EXPECT_EQ(st, DA_STATUS_SUCCESS) << da_last_error();
      EXPECT_EQ(da_mempool_destroy(pool), DA_STATUS_SUCCESS);
      c.device = 1 << 20;
      EXPECT_EQ(da_mempool_create(&c, &pool), DA_STATUS_INVALID_ARGUMENT);
    } else {
      EXPECT_EQ(st, DA_STATUS_NO_DEVICE) << da_mempool_backend_name(kind);
      EXPECT_EQ(pool, nullptr);
      EXPECT_STRNE(da_last_error(), "");
    }
  }
  da_mempool* def = nullptr;
  da_status st = da_mempool_default(0, &def);
  if (!HaveGpu()) {
    EXPECT_EQ(st, DA_STATUS_NO_DEVICE);
    EXPECT_EQ(def, nullptr);
    // Failing to create leaves no half-made default behind.
    EXPECT_EQ(da_mempool_default_destroy(0), DA_STATUS_SUCCESS);
  } else {
    EXPECT_EQ(st, DA_STATUS_SUCCESS) << da_last_error();
    EXPECT_EQ(da_mempool_default_destroy(0), DA_STATUS_SUCCESS);
  }
}

TEST(Errors, DefaultPoolArguments) {
  da_mempool* pool = nullptr;
  EXPECT_EQ(da_mempool_default(-2, &pool), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_mempool_default(64, &pool), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_mempool_default(0, nullptr), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_mempool_default_destroy(99), DA_STATUS_INVALID_ARGUMENT);
  da_mempool_config c = da_mempool_config_default();  // a device backend
  EXPECT_EQ(da_mempool_default_create(DA_MEMPOOL_HOST_DEVICE, &c), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(Says("host backend")) << da_last_error();
  c.device = 1;
  EXPECT_EQ(da_mempool_default_create(0, &c), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(Says("differs")) << da_last_error();
  EXPECT_EQ(da_mempool_default_create(0, nullptr), DA_STATUS_INVALID_ARGUMENT);
}

}  // namespace
