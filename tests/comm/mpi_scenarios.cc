// The MPI engine and the gradient communicator, run by every rank of an mpirun
// (mpi_run.sh). Every rank runs the same tests in the same order; expected values
// come from deterministic data every rank can recompute (test_util.h), so checks
// need no extra communication. A failed assertion on one rank leaves its peers in a
// collective: they end with the engine's timeout error, not a hang.
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "comm/bucket.h"
#include "comm/compress.h"
#include "comm/da_comm.h"
#include "tests/comm/grad_sim.h"
#include "tests/comm/test_util.h"

namespace {

int g_rank = 0, g_size = 1;

double now_s() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

struct Comm {
  da_comm* c = nullptr;
  explicit Comm(int timeout_ms = 20000, int verify = 1) {
    da_comm_config cfg = da_comm_config_default();
    cfg.timeout_ms = timeout_ms;
    cfg.verify_sizes = verify;
    EXPECT_EQ(da_comm_create_mpi(&cfg, &c), DA_STATUS_SUCCESS) << da_last_error();
  }
  ~Comm() {
    if (c) da_comm_destroy(c);
  }
};

// --- Communicator ---------------------------------------------------------------------------

TEST(MpiComm, Basics) {
  Comm comm;
  int rank = -1, size = -1, device = 0;
  da_comm_engine engine;
  void* stream = (void*)1;
  ASSERT_EQ(da_comm_rank(comm.c, &rank), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_comm_size(comm.c, &size), DA_STATUS_SUCCESS);
  EXPECT_EQ(rank, g_rank);
  EXPECT_EQ(size, g_size);
  ASSERT_EQ(da_comm_engine_of(comm.c, &engine), DA_STATUS_SUCCESS);
  EXPECT_EQ(engine, DA_COMM_ENGINE_MPI);
  EXPECT_STREQ(da_comm_engine_name(engine), "mpi");
  ASSERT_EQ(da_comm_device(comm.c, &device), DA_STATUS_SUCCESS);
  EXPECT_EQ(device, -1);
  ASSERT_EQ(da_comm_stream(comm.c, &stream), DA_STATUS_SUCCESS);
  EXPECT_EQ(stream, nullptr);
  EXPECT_EQ(da_comm_barrier(comm.c), DA_STATUS_SUCCESS) << da_last_error();
}

template <typename T>
std::vector<T> exact_data(int rank, size_t n, uint64_t salt) {
  std::vector<T> v(n);
  for (size_t i = 0; i < n; i++) v[i] = (T)da_test::exact_value(da_test::mix_seed(salt, rank), i);
  return v;
}

template <typename T>
void check_allreduce(da_comm* c, da_dtype dtype, size_t n, bool in_place) {
  std::vector<T> mine = exact_data<T>(g_rank, n, 11);
  std::vector<T> sum(n, 0), mx(n), mn(n);
  for (int r = 0; r < g_size; r++) {
    std::vector<T> v = exact_data<T>(r, n, 11);
    for (size_t i = 0; i < n; i++) {
      sum[i] += v[i];
      mx[i] = r == 0 ? v[i] : std::max(mx[i], v[i]);
      mn[i] = r == 0 ? v[i] : std::min(mn[i], v[i]);
    }
  }
  for (da_comm_op op : {DA_COMM_SUM, DA_COMM_AVG, DA_COMM_MAX, DA_COMM_MIN}) {
    std::vector<T> send = mine, recv(n, (T)-777);
    T* out = in_place ? send.data() : recv.data();
    ASSERT_EQ(da_comm_allreduce(c, send.data(), out, n, dtype, op), DA_STATUS_SUCCESS) << da_last_error();
    ASSERT_EQ(da_comm_synchronize(c), DA_STATUS_SUCCESS) << da_last_error();
    for (size_t i = 0; i < n; i++) {
      T want = op == DA_COMM_SUM ? sum[i] : op == DA_COMM_MAX ? mx[i] : op == DA_COMM_MIN ? mn[i]
                                                                                         : (T)(sum[i] * (T)(1.0 / g_size));
      ASSERT_EQ(out[i], want) << "op " << op << " i " << i;  // exact: the data sums exactly
    }
  }
}

TEST(MpiComm, AllreduceExactFloat32AndFloat64) {
  Comm comm;
  for (bool in_place : {false, true}) {
    check_allreduce<float>(comm.c, DA_DTYPE_F32, 1000, in_place);
    check_allreduce<double>(comm.c, DA_DTYPE_F64, 777, in_place);
  }
  check_allreduce<float>(comm.c, DA_DTYPE_F32, (1 << 20) + 3, false);  // several MPI segments
}

TEST(MpiComm, AllreduceHalfTypes) {
  Comm comm;
  const size_t n = 4099;
  for (da_dtype dtype : {DA_DTYPE_F16, DA_DTYPE_BF16}) {
    auto enc = dtype == DA_DTYPE_F16 ? da_cx_f32_to_f16 : da_cx_f32_to_bf16;
    auto dec = dtype == DA_DTYPE_F16 ? da_cx_f16_to_f32 : da_cx_bf16_to_f32;
    // Integers in [-25, 25]: every partial sum is exact even in bfloat16.
    auto small = [](int r, size_t n_) {
      std::vector<float> v = exact_data<float>(r, n_, 12);
      for (auto& x : v) x = std::round(x / 4);
      return v;
    };
    std::vector<float> mine = small(g_rank, n);
    std::vector<uint16_t> h(n), out(n);
    for (size_t i = 0; i < n; i++) h[i] = enc(mine[i]);
    std::vector<float> sum(n, 0.0f), mx(n, -1e9f);
    for (int r = 0; r < g_size; r++) {
      std::vector<float> v = small(r, n);
      for (size_t i = 0; i < n; i++) {
        sum[i] += v[i];
        mx[i] = std::max(mx[i], v[i]);
      }
    }
    ASSERT_EQ(da_comm_allreduce(comm.c, h.data(), out.data(), n, dtype, DA_COMM_SUM), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_synchronize(comm.c), DA_STATUS_SUCCESS) << da_last_error();
    for (size_t i = 0; i < n; i++) ASSERT_EQ(dec(out[i]), sum[i]) << i;
    ASSERT_EQ(da_comm_allreduce(comm.c, h.data(), out.data(), n, dtype, DA_COMM_MAX), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_synchronize(comm.c), DA_STATUS_SUCCESS) << da_last_error();
    for (size_t i = 0; i < n; i++) ASSERT_EQ(dec(out[i]), mx[i]) << i;
  }
}

TEST(MpiComm, AllgatherReduceScatterBroadcast) {
  Comm comm;
  const size_t n = 1001;
  std::vector<float> mine = exact_data<float>(g_rank, n, 13);
  // all-gather, out of place and in place
  std::vector<float> all(n * g_size, -1.0f);
  ASSERT_EQ(da_comm_allgather(comm.c, mine.data(), all.data(), n, DA_DTYPE_F32), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_comm_synchronize(comm.c), DA_STATUS_SUCCESS) << da_last_error();
  for (int r = 0; r < g_size; r++) {
    std::vector<float> v = exact_data<float>(r, n, 13);
    ASSERT_TRUE(std::equal(v.begin(), v.end(), all.begin() + r * n)) << r;
  }
  std::vector<float> in_place(n * g_size, -1.0f);
  std::copy(mine.begin(), mine.end(), in_place.begin() + g_rank * n);
  ASSERT_EQ(da_comm_allgather(comm.c, in_place.data() + g_rank * n, in_place.data(), n, DA_DTYPE_F32),
            DA_STATUS_SUCCESS);
  ASSERT_EQ(da_comm_synchronize(comm.c), DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_EQ(in_place, all);
  // reduce-scatter: rank r gets the sum of every rank's r-th slice
  std::vector<float> send = exact_data<float>(g_rank, n * g_size, 14), part(n, -1.0f);
  ASSERT_EQ(da_comm_reduce_scatter(comm.c, send.data(), part.data(), n, DA_DTYPE_F32, DA_COMM_SUM),
            DA_STATUS_SUCCESS);
  ASSERT_EQ(da_comm_synchronize(comm.c), DA_STATUS_SUCCESS) << da_last_error();
  std::vector<float> want(n, 0.0f);
  for (int r = 0; r < g_size; r++) {
    std::vector<float> v = exact_data<float>(r, n * g_size, 14);
    for (size_t i = 0; i < n; i++) want[i] += v[g_rank * n + i];
  }
  EXPECT_EQ(part, want);
  // reduce-scatter in place: the result lands in this rank's slice of send
  ASSERT_EQ(da_comm_reduce_scatter(comm.c, send.data(), send.data() + g_rank * n, n, DA_DTYPE_F32, DA_COMM_SUM),
            DA_STATUS_SUCCESS);
  ASSERT_EQ(da_comm_synchronize(comm.c), DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_TRUE(std::equal(want.begin(), want.end(), send.begin() + g_rank * n));
  // broadcast from every root, out of place and in place
  for (int root = 0; root < g_size; root++) {
    std::vector<double> src = exact_data<double>(root, n, 15), dst(n, -1.0);
    ASSERT_EQ(da_comm_broadcast(comm.c, src.data(), dst.data(), n, DA_DTYPE_F64, root), DA_STATUS_SUCCESS);
    std::vector<double> buf = g_rank == root ? src : std::vector<double>(n, -2.0);
    ASSERT_EQ(da_comm_broadcast(comm.c, buf.data(), buf.data(), n, DA_DTYPE_F64, root), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_synchronize(comm.c), DA_STATUS_SUCCESS) << da_last_error();
    std::vector<double> want_b = exact_data<double>(root, n, 15);
    EXPECT_EQ(dst, want_b);
    EXPECT_EQ(buf, want_b);
  }
}

TEST(MpiComm, RingSendRecvAndGroups) {
  Comm comm;
  const size_t n = 5000;
  int next = (g_rank + 1) % g_size, prev = (g_rank + g_size - 1) % g_size;
  std::vector<float> mine = exact_data<float>(g_rank, n, 16), got(n, -1.0f);
  ASSERT_EQ(da_comm_sendrecv(comm.c, mine.data(), n, next, got.data(), n, prev, DA_DTYPE_F32), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_comm_synchronize(comm.c), DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_EQ(got, exact_data<float>(prev, n, 16));
  // The same ring with send and recv as separate calls in a group, plus a send to self.
  std::vector<float> got2(n, -1.0f), self(n, -1.0f);
  ASSERT_EQ(da_comm_group_start(comm.c), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_comm_recv(comm.c, got2.data(), n, DA_DTYPE_F32, prev), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_comm_send(comm.c, mine.data(), n, DA_DTYPE_F32, next), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_comm_send(comm.c, mine.data(), n, DA_DTYPE_F32, g_rank), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_comm_recv(comm.c, self.data(), n, DA_DTYPE_F32, g_rank), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_comm_group_end(comm.c), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_comm_synchronize(comm.c), DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_EQ(got2, got);
  EXPECT_EQ(self, mine);
  // Blocking-order pairs: even ranks send first, odd ranks receive first.
  if (g_size % 2 == 0) {
    std::vector<float> got3(n, -1.0f);
    if (g_rank % 2 == 0) {
      ASSERT_EQ(da_comm_send(comm.c, mine.data(), n, DA_DTYPE_F32, next), DA_STATUS_SUCCESS);
      ASSERT_EQ(da_comm_recv(comm.c, got3.data(), n, DA_DTYPE_F32, prev), DA_STATUS_SUCCESS);
    } else {
      ASSERT_EQ(da_comm_recv(comm.c, got3.data(), n, DA_DTYPE_F32, prev), DA_STATUS_SUCCESS);
      ASSERT_EQ(da_comm_send(comm.c, mine.data(), n, DA_DTYPE_F32, next), DA_STATUS_SUCCESS);
    }
    ASSERT_EQ(da_comm_synchronize(comm.c), DA_STATUS_SUCCESS) << da_last_error();
    EXPECT_EQ(got3, got);
  }
}

TEST(MpiComm, EventsTrackTheQueue) {
  Comm comm;
  const size_t n = 1 << 22;  // 16 MiB: takes a while on the worker
  std::vector<float> a(n, 1.0f), b(n, 0.0f);
  da_comm_event* ev = nullptr;
  ASSERT_EQ(da_comm_event_create(comm.c, &ev), DA_STATUS_SUCCESS);
  int done = 0;
  ASSERT_EQ(da_comm_event_query(ev, &done), DA_STATUS_SUCCESS);
  EXPECT_EQ(done, 1);  // never recorded
  for (int i = 0; i < 4; i++)
    ASSERT_EQ(da_comm_allreduce(comm.c, a.data(), b.data(), n, DA_DTYPE_F32, DA_COMM_SUM), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_comm_event_record(ev), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_comm_event_query(ev, &done), DA_STATUS_SUCCESS);
  // Almost surely still running (4 x 16 MiB); not asserted: only that waiting works.
  ASSERT_EQ(da_comm_event_synchronize(ev), DA_STATUS_SUCCESS) << da_last_error();
  ASSERT_EQ(da_comm_event_query(ev, &done), DA_STATUS_SUCCESS);
  EXPECT_EQ(done, 1);
  EXPECT_EQ(b[12345], (float)g_size);
  EXPECT_EQ(da_comm_event_stream_wait(ev, nullptr), DA_STATUS_SUCCESS);
  EXPECT_EQ(da_comm_wait_stream(comm.c, nullptr), DA_STATUS_SUCCESS);
  EXPECT_EQ(da_comm_event_destroy(ev), DA_STATUS_SUCCESS);
}

TEST(MpiComm, BadArgumentsNameTheRule) {
  Comm comm;
  float x[4] = {0};
  EXPECT_EQ(da_comm_allreduce(comm.c, nullptr, x, 4, DA_DTYPE_F32, DA_COMM_SUM), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "send"), nullptr);
  EXPECT_EQ(da_comm_allreduce(comm.c, x, x, 4, (da_dtype)7, DA_COMM_SUM), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "dtype"), nullptr);
  EXPECT_EQ(da_comm_allreduce(comm.c, x, x, 4, DA_DTYPE_F32, (da_comm_op)9), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_comm_broadcast(comm.c, x, x, 4, DA_DTYPE_F32, g_size), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "root"), nullptr);
  EXPECT_EQ(da_comm_send(comm.c, x, 4, DA_DTYPE_F32, -1), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_comm_group_end(comm.c), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_comm_allreduce(nullptr, x, x, 4, DA_DTYPE_F32, DA_COMM_SUM), DA_STATUS_INVALID_ARGUMENT);
  da_comm_config cfg = da_comm_config_default();
  cfg.timeout_ms = 0;
  da_comm* bad = nullptr;
  EXPECT_EQ(da_comm_create_mpi(&cfg, &bad), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "timeout_ms"), nullptr);
  // Nothing was enqueued by the refused calls: the communicator still works.
  EXPECT_EQ(da_comm_barrier(comm.c), DA_STATUS_SUCCESS) << da_last_error();
}

// --- Failure: sizes that disagree, a silent peer ------------------------------------------------

TEST(MpiFailure, MismatchedCountsAreAnErrorOnEveryRankNotAHang) {
  Comm comm(20000);
  std::vector<float> a(2000, 1.0f), b(2000, 0.0f);
  size_t count = g_rank == 0 ? 1000 : 1001;
  ASSERT_EQ(da_comm_allreduce(comm.c, a.data(), b.data(), count, DA_DTYPE_F32, DA_COMM_SUM), DA_STATUS_SUCCESS);
  EXPECT_EQ(da_comm_synchronize(comm.c), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "count"), nullptr) << da_last_error();
  EXPECT_NE(strstr(da_last_error(), "from 1000 to 1001"), nullptr) << da_last_error();
  EXPECT_EQ(b[0], 0.0f);  // nothing moved
  // Other disagreements: dtype, root, operation.
  ASSERT_EQ(da_comm_allreduce(comm.c, a.data(), b.data(), 100, g_rank == 0 ? DA_DTYPE_F32 : DA_DTYPE_F16,
                              DA_COMM_SUM),
            DA_STATUS_SUCCESS);
  EXPECT_EQ(da_comm_synchronize(comm.c), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "dtype"), nullptr) << da_last_error();
  ASSERT_EQ(da_comm_broadcast(comm.c, a.data(), b.data(), 100, DA_DTYPE_F32, g_rank == 0 ? 0 : g_size - 1),
            DA_STATUS_SUCCESS);
  EXPECT_EQ(da_comm_synchronize(comm.c), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "root"), nullptr) << da_last_error();
  if (g_rank == 0) {
    ASSERT_EQ(da_comm_allgather(comm.c, a.data(), b.data(), 10, DA_DTYPE_F32), DA_STATUS_SUCCESS);
  } else {
    ASSERT_EQ(da_comm_allreduce(comm.c, a.data(), b.data(), 10, DA_DTYPE_F32, DA_COMM_SUM), DA_STATUS_SUCCESS);
  }
  EXPECT_EQ(da_comm_synchronize(comm.c), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "operation"), nullptr) << da_last_error();
  // Every rank refused together, so the communicator is still in step.
  ASSERT_EQ(da_comm_allreduce(comm.c, a.data(), b.data(), 2000, DA_DTYPE_F32, DA_COMM_SUM), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_comm_synchronize(comm.c), DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_EQ(b[1999], (float)g_size);
}

TEST(MpiFailure, SilentPeerEndsInTimeoutError) {
  const int timeout_ms = 1500;
  Comm comm(timeout_ms);
  std::vector<float> a(100, 1.0f), b(100, 0.0f);
  if (g_rank == 1) {
    // Stays alive but never joins the collective.
    usleep(200000);
    return;  // ~Comm: its own queue is empty, destroy returns at once
  }
  double start = now_s();
  ASSERT_EQ(da_comm_allreduce(comm.c, a.data(), b.data(), 100, DA_DTYPE_F32, DA_COMM_SUM), DA_STATUS_SUCCESS);
  da_status st = da_comm_synchronize(comm.c);
  double elapsed = now_s() - start;
  EXPECT_EQ(st, DA_STATUS_COMM_ERROR);
  EXPECT_NE(strstr(da_last_error(), "did not complete within timeout_ms=1500"), nullptr) << da_last_error();
  EXPECT_GE(elapsed, 0.9 * timeout_ms / 1000.0);
  EXPECT_LE(elapsed, 3.0 * timeout_ms / 1000.0 + 1.0);
  // The error is sticky: later calls answer with it at once.
  EXPECT_EQ(da_comm_allreduce(comm.c, a.data(), b.data(), 100, DA_DTYPE_F32, DA_COMM_SUM), DA_STATUS_COMM_ERROR);
  EXPECT_EQ(da_comm_barrier(comm.c), DA_STATUS_COMM_ERROR);
  EXPECT_EQ(da_comm_destroy(comm.c), DA_STATUS_COMM_ERROR);
  comm.c = nullptr;
}

// --- Gradient communicator ---------------------------------------------------------------------

struct Grad {
  da_grad_comm* g = nullptr;
  Grad(da_comm* c, const da_grad_config& cfg) {
    EXPECT_EQ(da_grad_create(c, &cfg, &g), DA_STATUS_SUCCESS) << da_last_error();
  }
  ~Grad() {
    if (g) da_grad_destroy(g);
  }
};

da_grad_config small_buckets() {
  da_grad_config cfg = da_grad_config_default();
  cfg.first_bucket_cap_bytes = 4096;
  cfg.bucket_cap_bytes = 16384;
  cfg.max_tensors_per_bucket = 4;
  return cfg;
}

TEST(MpiGrad, BucketsFollowThePlannerInReverseOrder) {
  Comm comm;
  da_grad_config cfg = small_buckets();
  Grad grad(comm.c, cfg);
  std::vector<size_t> counts = {300, 5000, 17, 1024, 1024, 1, 4000, 64, 64, 64, 64, 64, 2000};
  std::vector<da_dtype> dtypes(counts.size(), DA_DTYPE_F32);
  dtypes[3] = DA_DTYPE_F64;
  dtypes[7] = DA_DTYPE_F64;
  std::vector<std::vector<double>> storage;
  for (size_t i = 0; i < counts.size(); i++) {
    storage.emplace_back(counts[i], 0.0);
    int index = -1;
    ASSERT_EQ(da_grad_register(grad.g, ("t" + std::to_string(i)).c_str(), storage.back().data(), counts[i],
                               dtypes[i], &index),
              DA_STATUS_SUCCESS)
        << da_last_error();
    EXPECT_EQ(index, (int)i);
  }
  ASSERT_EQ(da_grad_finalize(grad.g), DA_STATUS_SUCCESS) << da_last_error();
  da_bucket_plan plan;
  ASSERT_EQ(da_bucket_plan_build(counts.data(), dtypes.data(), (int)counts.size(), cfg.bucket_cap_bytes,
                                 cfg.first_bucket_cap_bytes, cfg.max_tensors_per_bucket, &plan),
            DA_STATUS_SUCCESS);
  int buckets = 0;
  ASSERT_EQ(da_grad_num_buckets(grad.g, &buckets), DA_STATUS_SUCCESS);
  ASSERT_EQ(buckets, plan.num_buckets);
  for (int b = 0; b < buckets; b++) {
    da_grad_bucket_info info;
    int tensors[64];
    ASSERT_EQ(da_grad_bucket(grad.g, b, &info, tensors, 64), DA_STATUS_SUCCESS);
    ASSERT_EQ(info.num_tensors, plan.buckets[b].num_tensors);
    EXPECT_EQ(info.count, plan.buckets[b].count);
    EXPECT_EQ(info.dtype, plan.buckets[b].dtype);
    for (int j = 0; j < info.num_tensors; j++) EXPECT_EQ(tensors[j], plan.tensors[plan.buckets[b].first + j]);
  }
  da_grad_bucket_info first;
  int tensors[64];
  ASSERT_EQ(da_grad_bucket(grad.g, 0, &first, tensors, 64), DA_STATUS_SUCCESS);
  EXPECT_EQ(tensors[first.num_tensors - 1], (int)counts.size() - 1);  // the last tensor goes first
  da_bucket_plan_free(&plan);
  int idx = -1;
  EXPECT_EQ(da_grad_find(grad.g, "t7", &idx), DA_STATUS_SUCCESS);
  EXPECT_EQ(idx, 7);
  EXPECT_EQ(da_grad_find(grad.g, "nope", &idx), DA_STATUS_INVALID_ARGUMENT);
  float late[4];
  EXPECT_EQ(da_grad_register(grad.g, "late", late, 4, DA_DTYPE_F32, nullptr), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "final"), nullptr);
}

// Model of a few layers: float32 and float64 gradients of assorted sizes, the data of
// one step derived from (rank, step, tensor).
struct Model {
  std::vector<size_t> counts;
  std::vector<da_dtype> dtypes;
  std::vector<std::vector<float>> f32;
  std::vector<std::vector<double>> f64;
  Model(std::vector<size_t> c, std::vector<da_dtype> d) : counts(c), dtypes(d), f32(c.size()), f64(c.size()) {
    for (size_t i = 0; i < c.size(); i++) {
      if (d[i] == DA_DTYPE_F64)
        f64[i].resize(c[i]);
      else
        f32[i].resize(c[i]);
    }
  }
  void* data(size_t i) { return dtypes[i] == DA_DTYPE_F64 ? (void*)f64[i].data() : (void*)f32[i].data(); }
  void fill(int rank, int step) {
    for (size_t i = 0; i < counts.size(); i++)
      for (size_t j = 0; j < counts[i]; j++) {
        float v = da_test::exact_value(da_test::mix_seed(rank, step, i), j);
        if (dtypes[i] == DA_DTYPE_F64)
          f64[i][j] = v;
        else
          f32[i][j] = v;
      }
  }
};

void register_all(da_grad_comm* g, Model& m) {
  for (size_t i = 0; i < m.counts.size(); i++)
    ASSERT_EQ(da_grad_register(g, ("w" + std::to_string(i)).c_str(), m.data(i), m.counts[i], m.dtypes[i], nullptr),
              DA_STATUS_SUCCESS)
        << da_last_error();
}

void expect_exact_average(Model& m, int step) {
  for (size_t i = 0; i < m.counts.size(); i++)
    for (size_t j = 0; j < m.counts[i]; j++) {
      double sum = 0;
      for (int r = 0; r < g_size; r++) sum += da_test::exact_value(da_test::mix_seed(r, step, i), j);
      double want = sum / g_size;  // exact: size is a power of two in CI
      double got = m.dtypes[i] == DA_DTYPE_F64 ? m.f64[i][j] : (double)m.f32[i][j];
      ASSERT_EQ(got, want) << "tensor " << i << " element " << j << " step " << step;
    }
}

TEST(MpiGrad, UncompressedAverageIsExactOverSteps) {
  Comm comm;
  Grad grad(comm.c, small_buckets());
  Model m({700, 3000, 5, 4096, 1000, 1500, 64, 2048}, {DA_DTYPE_F32, DA_DTYPE_F64, DA_DTYPE_F32, DA_DTYPE_F32,
                                                       DA_DTYPE_F64, DA_DTYPE_F32, DA_DTYPE_F32, DA_DTYPE_F32});
  register_all(grad.g, m);
  da_test::Rng order_rng(100 + g_rank);
  for (int step = 0; step < 5; step++) {
    m.fill(g_rank, step);
    // Each rank marks in its own random order: launch order stays the plan's.
    std::vector<int> order(m.counts.size());
    for (size_t i = 0; i < order.size(); i++) order[i] = (int)i;
    for (size_t i = order.size() - 1; i > 0; i--) std::swap(order[i], order[order_rng.below((int)i + 1)]);
    for (int i : order) ASSERT_EQ(da_grad_mark_ready(grad.g, i, nullptr), DA_STATUS_SUCCESS) << da_last_error();
    ASSERT_EQ(da_grad_synchronize(grad.g), DA_STATUS_SUCCESS) << da_last_error();
    expect_exact_average(m, step);
  }
  da_grad_stats stats;
  ASSERT_EQ(da_grad_get_stats(grad.g, &stats), DA_STATUS_SUCCESS);
  int buckets = 0;
  da_grad_num_buckets(grad.g, &buckets);
  EXPECT_EQ(stats.steps, 5u);
  EXPECT_EQ(stats.buckets_launched, 5u * buckets);
  EXPECT_EQ(stats.buckets_completed, 5u * buckets);
  EXPECT_EQ(stats.unmarked_last_step, 0);
}

TEST(MpiGrad, BucketLaunchesAsSoonAsItsGradientsAreReady) {
  Comm comm;
  Grad grad(comm.c, small_buckets());
  // 20000 bytes each: every tensor closes its own bucket (caps 4096 and 16384).
  Model m({5000, 5000, 5000, 5000}, std::vector<da_dtype>(4, DA_DTYPE_F32));
  register_all(grad.g, m);
  m.fill(g_rank, 0);
  ASSERT_EQ(da_grad_finalize(grad.g), DA_STATUS_SUCCESS);
  // Bucket 0 holds the last tensor: marking it launches it while the others wait.
  ASSERT_EQ(da_grad_mark_ready(grad.g, 3, nullptr), DA_STATUS_SUCCESS);
  da_grad_stats stats;
  double deadline = now_s() + 10;
  do {
    da_grad_get_stats(grad.g, &stats);
  } while (stats.buckets_completed < 1 && now_s() < deadline);
  EXPECT_EQ(stats.buckets_completed, 1u);  // reduced during the caller's "backward work"
  EXPECT_EQ(stats.launched_this_step, 1);
  // Marking tensor 1 first launches nothing: bucket 1 (tensor 2) must go before it.
  ASSERT_EQ(da_grad_mark_ready(grad.g, 1, nullptr), DA_STATUS_SUCCESS);
  da_grad_get_stats(grad.g, &stats);
  EXPECT_EQ(stats.launched_this_step, 1);
  ASSERT_EQ(da_grad_mark_ready(grad.g, 2, nullptr), DA_STATUS_SUCCESS);
  da_grad_get_stats(grad.g, &stats);
  EXPECT_EQ(stats.launched_this_step, 3);
  EXPECT_EQ(da_grad_mark_ready(grad.g, 2, nullptr), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "already marked"), nullptr);
  // Tensor 0 is left unmarked: synchronize marks it, so every rank still reduces it.
  ASSERT_EQ(da_grad_synchronize(grad.g), DA_STATUS_SUCCESS) << da_last_error();
  da_grad_get_stats(grad.g, &stats);
  EXPECT_EQ(stats.unmarked_last_step, 1);
  expect_exact_average(m, 0);
}

TEST(MpiGrad, FlatBufferBucketsAreReducedInPlace) {
  Comm comm;
  Grad grad(comm.c, small_buckets());
  std::vector<float> flat(10000);
  const size_t sizes[] = {1000, 500, 2500, 3000, 3000};
  size_t offset = 0;
  for (int i = 0; i < 5; i++) {
    ASSERT_EQ(da_grad_register(grad.g, ("v" + std::to_string(i)).c_str(), flat.data() + offset, sizes[i],
                               DA_DTYPE_F32, nullptr),
              DA_STATUS_SUCCESS);
    offset += sizes[i];
  }
  for (size_t j = 0; j < flat.size(); j++) flat[j] = da_test::exact_value(da_test::mix_seed(g_rank, 9), j);
  ASSERT_EQ(da_grad_synchronize(grad.g), DA_STATUS_SUCCESS) << da_last_error();
  int buckets = 0;
  da_grad_num_buckets(grad.g, &buckets);
  for (int b = 0; b < buckets; b++) {
    da_grad_bucket_info info;
    ASSERT_EQ(da_grad_bucket(grad.g, b, &info, nullptr, 0), DA_STATUS_SUCCESS);
    EXPECT_EQ(info.in_place, 1) << b;
  }
  for (size_t j = 0; j < flat.size(); j++) {
    double sum = 0;
    for (int r = 0; r < g_size; r++) sum += da_test::exact_value(da_test::mix_seed(r, 9), j);
    ASSERT_EQ(flat[j], (float)(sum / g_size)) << j;
  }
}

TEST(MpiGrad, RanksThatRegisterDifferentGradientsAreToldSo) {
  Comm comm;
  Grad grad(comm.c, small_buckets());
  std::vector<float> a(100), b(100);
  ASSERT_EQ(da_grad_register(grad.g, "a", a.data(), 100, DA_DTYPE_F32, nullptr), DA_STATUS_SUCCESS);
  if (g_rank == 0) {
    ASSERT_EQ(da_grad_register(grad.g, "b", b.data(), 100, DA_DTYPE_F32, nullptr), DA_STATUS_SUCCESS);
  }
  EXPECT_EQ(da_grad_finalize(grad.g), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "number of gradients"), nullptr) << da_last_error();
  // Same gradients, different compression: also refused, on every rank.
  da_grad_config cfg = small_buckets();
  cfg.compress.algorithm = g_rank == 0 ? DA_COMPRESS_TOPK : DA_COMPRESS_INT8;
  Grad other(comm.c, cfg);
  ASSERT_EQ(da_grad_register(other.g, "a", a.data(), 100, DA_DTYPE_F32, nullptr), DA_STATUS_SUCCESS);
  EXPECT_EQ(da_grad_finalize(other.g), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "compress.algorithm"), nullptr) << da_last_error();
  EXPECT_EQ(da_comm_barrier(comm.c), DA_STATUS_SUCCESS) << da_last_error();
}

// --- Compression: bit-exact against a host simulation of every rank, and error feedback --------

std::vector<float> rank_gradient(int rank, int step, size_t n) {
  return da_test::gradient(da_test::mix_seed(rank, step, 77), n, 1.0);
}

class MpiCompressed : public ::testing::TestWithParam<da_compress_algorithm> {};

TEST_P(MpiCompressed, MatchesAHostSimulationAndFeedsBackTheError) {
  const da_compress_algorithm alg = GetParam();
  Comm comm;
  da_grad_config cfg = da_grad_config_default();
  cfg.compress.algorithm = alg;
  cfg.compress.ratio = 0.05;
  cfg.compress.int8_chunk = 64;
  Grad grad(comm.c, cfg);
  const size_t n = 4000;  // one tensor, one bucket
  std::vector<float> x(n);
  ASSERT_EQ(da_grad_register(grad.g, "w", x.data(), n, DA_DTYPE_F32, nullptr), DA_STATUS_SUCCESS);
  da_test::GradSimulation sim(cfg.compress, n, g_size);
  // Measured after 30 steps (the residuals of the sparse formats fill within about
  // 1 / ratio = 20 steps) and after 8 times as many.
  const int early = 30, steps = 240;
  std::vector<double> sent(n, 0.0), truth(n, 0.0);
  auto relative_error = [&]() {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
      num += (sent[i] - truth[i]) * (sent[i] - truth[i]);
      den += truth[i] * truth[i];
    }
    return std::sqrt(num / den);
  };
  double early_relative = 0;
  for (int s = 0; s < steps; s++) {
    std::vector<std::vector<float>> g(g_size);
    for (int r = 0; r < g_size; r++) g[r] = rank_gradient(r, s, n);
    x = g[g_rank];
    ASSERT_EQ(da_grad_mark_ready(grad.g, 0, nullptr), DA_STATUS_SUCCESS) << da_last_error();
    ASSERT_EQ(da_grad_synchronize(grad.g), DA_STATUS_SUCCESS) << da_last_error();
    std::vector<float> want = sim.step(g, (uint64_t)s);
    // Decoding happens on each rank in rank order (exact to simulate); sums that MPI
    // forms in its own tree order (casts, random-k values) are exact only for 2 ranks.
    bool exact = !(alg == DA_COMPRESS_FP16 || alg == DA_COMPRESS_BF16 || alg == DA_COMPRESS_RANDOMK) ||
                 g_size == 2;
    for (size_t i = 0; i < n; i++) {
      if (exact) {
        ASSERT_EQ(x[i], want[i]) << "step " << s << " element " << i;
      } else {
        // A few roundings of partial sums as large as the summands.
        double magnitude = 0;
        for (int r = 0; r < g_size; r++) magnitude += std::fabs(sim.sent[r][i]) / g_size;
        double unit = alg == DA_COMPRESS_FP16 ? std::ldexp(1.0, -11) : alg == DA_COMPRESS_BF16 ? std::ldexp(1.0, -8)
                                                                                              : std::ldexp(1.0, -24);
        ASSERT_NEAR(x[i], want[i], 8 * unit * (magnitude + 1e-3)) << "step " << s << " element " << i;
      }
      sent[i] += x[i];
      for (int r = 0; r < g_size; r++) truth[i] += g[r][i] / g_size;
    }
    if (s + 1 == early) early_relative = relative_error();
  }
  double relative = relative_error();
  if (g_rank == 0)
    printf("%-9s relative error of the summed average: after %d steps %.2e, after %d steps %.2e\n",
           da_compress_algorithm_name(alg), early, early_relative, steps, relative);
  if (alg == DA_COMPRESS_FP16 || alg == DA_COMPRESS_BF16) {
    // The cast's own error is fed back; what remains is the rounding of the
    // half-precision sum across ranks, a fraction of one unit in the last place.
    EXPECT_LT(relative, alg == DA_COMPRESS_FP16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8));
  } else {
    // Error feedback: sum(received) = sum(true average) - mean residual, which stays
    // bounded while the sums grow with the steps, so the relative error falls ~1/T.
    EXPECT_LT(relative, early_relative / 3);
  }
  da_grad_stats stats;
  ASSERT_EQ(da_grad_get_stats(grad.g, &stats), DA_STATUS_SUCCESS);
  double norm = 0;
  for (float e : sim.residual[g_rank]) norm += (double)e * e;
  EXPECT_NEAR(stats.residual_norm, std::sqrt(norm), 1e-4 * (std::sqrt(norm) + 1e-6));
  if (alg != DA_COMPRESS_FP16 && alg != DA_COMPRESS_BF16) {
    EXPECT_LT(stats.bytes_sent, stats.bytes_reduced);
  }
}

INSTANTIATE_TEST_SUITE_P(Algorithms, MpiCompressed,
                         ::testing::Values(DA_COMPRESS_FP16, DA_COMPRESS_BF16, DA_COMPRESS_TOPK,
                                           DA_COMPRESS_RANDOMK, DA_COMPRESS_THRESHOLD, DA_COMPRESS_INT8),
                         [](const ::testing::TestParamInfo<da_compress_algorithm>& info) {
                           return std::string(da_compress_algorithm_name(info.param));
                         });

TEST(MpiGrad, CompressionLeavesOtherDtypesExact) {
  Comm comm;
  da_grad_config cfg = small_buckets();
  cfg.compress.algorithm = DA_COMPRESS_TOPK;
  cfg.compress.ratio = 0.01;
  Grad grad(comm.c, cfg);
  Model m({500, 800}, {DA_DTYPE_F64, DA_DTYPE_F64});
  register_all(grad.g, m);
  m.fill(g_rank, 3);
  ASSERT_EQ(da_grad_synchronize(grad.g), DA_STATUS_SUCCESS) << da_last_error();
  expect_exact_average(m, 3);
}

// Ranks other than 0 print only their failures, prefixed with the rank.
class FailurePrinter : public ::testing::EmptyTestEventListener {
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed())
      fprintf(stderr, "rank %d: %s:%d: Failure\n%s\n", g_rank, r.file_name() ? r.file_name() : "?",
              r.line_number(), r.summary());
  }
};

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  ::testing::InitGoogleTest(&argc, argv);
  if (g_rank != 0) {
    // One report (rank 0's) plus any other rank's failures.
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter);
  }
  int failed = RUN_ALL_TESTS();
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (g_rank == 0) printf("%s on %d ranks\n", any ? "FAILED" : "PASSED", g_size);
  MPI_Finalize();
  return any;
}
