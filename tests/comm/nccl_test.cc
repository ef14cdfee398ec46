// The NCCL engine with one rank (ncclCommInitAll over one GPU, and the rank API with
// its non-blocking init), the gradient communicator on device buffers from the
// pool, and every GPU compressor against its host version on random data. Every
// case skips, with the reason, on a machine without a GPU. Links no MPI.
#include <cuda_runtime_api.h>
#include <math.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "comm/compress.h"
#include "comm/da_comm.h"
#include "comm/gpu_compress.h"
#include "device/da_device.h"
#include "mempool/da_mempool.h"
#include "tests/comm/grad_sim.h"
#include "tests/comm/test_util.h"

namespace {

#define REQUIRE_GPU()                                                            \
  do {                                                                           \
    int count_ = 0;                                                              \
    if (da_device_count(&count_) != DA_STATUS_SUCCESS)                           \
      GTEST_SKIP() << "no GPU here (" << da_last_error() << ")";                 \
  } while (0)

#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

// Device memory for the tests themselves (the library's comes from the pool).
struct Dev {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Dev(size_t b) : bytes(b) {
    EXPECT_EQ(cudaMalloc(&p, b ? b : 1), cudaSuccess);
    cudaMemset(p, 0xff, b ? b : 1);  // poisoned
  }
  ~Dev() { cudaFree(p); }
  template <typename T>
  T* as() { return (T*)p; }
  template <typename T>
  void put(const std::vector<T>& v) { EXPECT_EQ(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess); }
  template <typename T>
  std::vector<T> get(size_t n) {
    std::vector<T> v(n);
    EXPECT_EQ(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }
};

struct Local {
  da_comm* c = nullptr;
  explicit Local(int verify = 1) {
    da_comm_config cfg = da_comm_config_default();
    cfg.timeout_ms = 60000;
    cfg.verify_sizes = verify;
    EXPECT_EQ(da_comm_create_nccl_local(&cfg, 1, nullptr, &c), DA_STATUS_SUCCESS) << da_last_error();
  }
  ~Local() {
    if (c) {
      EXPECT_EQ(da_comm_destroy(c), DA_STATUS_SUCCESS) << da_last_error();
    }
  }
};

template <typename T>
std::vector<T> bits_of(const std::vector<float>& v) {
  std::vector<T> out(v.size());
  memcpy(out.data(), v.data(), v.size() * sizeof(T));
  return out;
}

// --- Engine ----------------------------------------------------------------------------------

TEST(NcclEngine, OneRankOverOneGpu) {
  REQUIRE_GPU();
  Local comm;
  ASSERT_NE(comm.c, nullptr);
  int rank = -1, size = -1, device = -1;
  da_comm_engine engine;
  void* stream = nullptr;
  da_comm_rank(comm.c, &rank);
  da_comm_size(comm.c, &size);
  da_comm_device(comm.c, &device);
  da_comm_engine_of(comm.c, &engine);
  da_comm_stream(comm.c, &stream);
  EXPECT_EQ(rank, 0);
  EXPECT_EQ(size, 1);
  EXPECT_EQ(device, 0);
  EXPECT_EQ(engine, DA_COMM_ENGINE_NCCL);
  EXPECT_NE(stream, nullptr);
  EXPECT_EQ(da_comm_barrier(comm.c), DA_STATUS_SUCCESS) << da_last_error();
}

TEST(NcclEngine, EveryCollectiveOnOneRank) {
  REQUIRE_GPU();
  for (int verify : {1, 0}) {
    Local comm(verify);
    const size_t n = 100003;
    std::vector<float> x = da_test::gradient(1, n);
    Dev send(n * 8), recv(n * 8);
    send.put(x);
    for (da_comm_op op : {DA_COMM_SUM, DA_COMM_AVG, DA_COMM_MAX, DA_COMM_MIN}) {
      cudaMemset(recv.p, 0xff, n * 4);
      ASSERT_EQ(da_comm_allreduce(comm.c, send.p, recv.p, n, DA_DTYPE_F32, op), DA_STATUS_SUCCESS) << da_last_error();
      ASSERT_EQ(da_comm_synchronize(comm.c), DA_STATUS_SUCCESS) << da_last_error();
      const std::vector<float> got = recv.get<float>(n);
      if (op != DA_COMM_AVG) {
        EXPECT_EQ(bits_of<uint32_t>(got), bits_of<uint32_t>(x)) << "op " << op;
        continue;
      }
      // One rank: the identity (bits equal; NaN for NaN should a reduction
      // canonicalise payloads). This caught NCCL's ncclAvg leaving a ragged tail
      // unwritten (comm/nccl_engine.c, nccl_op_for).
      size_t bad = 0;
      for (size_t i = 0; i < n; i++) {
        uint32_t gb, xb;
        memcpy(&gb, &got[i], 4);
        memcpy(&xb, &x[i], 4);
        if (gb != xb && !(isnan(got[i]) && isnan(x[i]))) {
          if (bad < 5) printf("AVG element %zu: x=%a (0x%08x) got=%a (0x%08x)\n", i, x[i], xb, got[i], gb);
          bad++;
        }
      }
      EXPECT_EQ(bad, 0u) << "AVG on one rank differs from x in " << bad << " of " << n;
    }
    // Other dtypes go through as their own NCCL types (one rank: identity).
    std::vector<double> d(n);
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    send.put(d);
    ASSERT_EQ(da_comm_allreduce(comm.c, send.p, send.p, n, DA_DTYPE_F64, DA_COMM_SUM), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_synchronize(comm.c), DA_STATUS_SUCCESS) << da_last_error();
    EXPECT_EQ(send.get<double>(n), d);
    std::vector<uint16_t> h(n);
    for (size_t i = 0; i < n; i++) h[i] = da_cx_f32_to_bf16(x[i]);
    send.put(h);
    ASSERT_EQ(da_comm_allreduce(comm.c, send.p, recv.p, n, DA_DTYPE_BF16, DA_COMM_AVG), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_synchronize(comm.c), DA_STATUS_SUCCESS) << da_last_error();
    EXPECT_EQ(recv.get<uint16_t>(n), h);
    // all-gather, reduce-scatter, broadcast: identity on one rank
    send.put(x);
    ASSERT_EQ(da_comm_allgather(comm.c, send.p, recv.p, n, DA_DTYPE_F32), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_synchronize(comm.c), DA_STATUS_SUCCESS) << da_last_error();
    EXPECT_EQ(recv.get<float>(n), x);
    cudaMemset(recv.p, 0, n * 4);
    ASSERT_EQ(da_comm_reduce_scatter(comm.c, send.p, recv.p, n, DA_DTYPE_F32, DA_COMM_SUM), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_synchronize(comm.c), DA_STATUS_SUCCESS) << da_last_error();
    EXPECT_EQ(recv.get<float>(n), x);
    cudaMemset(recv.p, 0, n * 4);
    ASSERT_EQ(da_comm_broadcast(comm.c, send.p, recv.p, n, DA_DTYPE_F32, 0), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_synchronize(comm.c), DA_STATUS_SUCCESS) << da_last_error();
    EXPECT_EQ(recv.get<float>(n), x);
    // send/recv to oneself: allowed by NCCL inside a group
    cudaMemset(recv.p, 0, n * 4);
    ASSERT_EQ(da_comm_sendrecv(comm.c, send.p, n, 0, recv.p, n, 0, DA_DTYPE_F32), DA_STATUS_SUCCESS) << da_last_error();
    ASSERT_EQ(da_comm_synchronize(comm.c), DA_STATUS_SUCCESS) << da_last_error();
    EXPECT_EQ(recv.get<float>(n), x);
    cudaMemset(recv.p, 0, n * 4);
    ASSERT_EQ(da_comm_group_start(comm.c), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_send(comm.c, send.p, n, DA_DTYPE_F32, 0), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_recv(comm.c, recv.p, n, DA_DTYPE_F32, 0), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_group_end(comm.c), DA_STATUS_SUCCESS) << da_last_error();
    ASSERT_EQ(da_comm_synchronize(comm.c), DA_STATUS_SUCCESS) << da_last_error();
    EXPECT_EQ(recv.get<float>(n), x);
    EXPECT_EQ(da_comm_barrier(comm.c), DA_STATUS_SUCCESS) << da_last_error();
  }
}

TEST(NcclEngine, EventsAndCallerStreams) {
  REQUIRE_GPU();
  Local comm;
  const size_t n = 1 << 24;  // 64 MiB
  std::vector<float> x = da_test::gradient(2, 1000);
  Dev a(n * 4), b(n * 4);
  cudaStream_t user;
  CUDA_OK(cudaStreamCreateWithFlags(&user, cudaStreamNonBlocking));
  // The caller produces the input on its own stream; the communicator waits for it.
  CUDA_OK(cudaMemsetAsync(a.p, 0, n * 4, user));
  CUDA_OK(cudaMemcpyAsync(a.p, x.data(), x.size() * 4, cudaMemcpyHostToDevice, user));
  ASSERT_EQ(da_comm_wait_stream(comm.c, user), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_comm_allreduce(comm.c, a.p, b.p, n, DA_DTYPE_F32, DA_COMM_SUM), DA_STATUS_SUCCESS);
  da_comm_event* ev = nullptr;
  ASSERT_EQ(da_comm_event_create(comm.c, &ev), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_comm_event_record(ev), DA_STATUS_SUCCESS);
  // ...and the caller's stream waits for the result without blocking the host.
  ASSERT_EQ(da_comm_event_stream_wait(ev, user), DA_STATUS_SUCCESS);
  std::vector<float> back(x.size());
  CUDA_OK(cudaMemcpyAsync(back.data(), b.p, x.size() * 4, cudaMemcpyDeviceToHost, user));
  CUDA_OK(cudaStreamSynchronize(user));
  EXPECT_EQ(back, x);
  int done = 0;
  ASSERT_EQ(da_comm_event_query(ev, &done), DA_STATUS_SUCCESS);
  EXPECT_EQ(done, 1);
  ASSERT_EQ(da_comm_event_synchronize(ev), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_comm_event_destroy(ev), DA_STATUS_SUCCESS);
  cudaStreamDestroy(user);
}

TEST(NcclEngine, HostMemoryAndBadArgumentsAreRefused) {
  REQUIRE_GPU();
  Local comm;
  std::vector<float> host(16);
  Dev dev(64);
  EXPECT_EQ(da_comm_allreduce(comm.c, host.data(), dev.p, 16, DA_DTYPE_F32, DA_COMM_SUM), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(strstr(da_last_error(), "host memory"), nullptr) << da_last_error();
  EXPECT_EQ(da_comm_broadcast(comm.c, dev.p, dev.p, 16, DA_DTYPE_F32, 1), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_comm_barrier(comm.c), DA_STATUS_SUCCESS) << da_last_error();
  da_comm* comms[2] = {nullptr, nullptr};
  int twice[2] = {0, 0};
  EXPECT_EQ(da_comm_create_nccl_local(nullptr, 2, twice, comms), DA_STATUS_INVALID_ARGUMENT);
  int far[1] = {1 << 20};
  EXPECT_EQ(da_comm_create_nccl_local(nullptr, 1, far, comms), DA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(da_comm_create_nccl_local(nullptr, 0, nullptr, comms), DA_STATUS_INVALID_ARGUMENT);
}

TEST(NcclEngine, RankApiWithNonBlockingInit) {
  REQUIRE_GPU();
  da_comm_nccl_id id;
  ASSERT_EQ(da_comm_nccl_get_id(&id), DA_STATUS_SUCCESS) << da_last_error();
  da_comm_config cfg = da_comm_config_default();
  cfg.timeout_ms = 60000;
  da_comm* comm = nullptr;
  ASSERT_EQ(da_comm_create_nccl_rank(&cfg, &id, 0, 1, 0, &comm), DA_STATUS_SUCCESS) << da_last_error();
  std::vector<float> x = da_test::gradient(3, 4096);
  Dev a(4096 * 4);
  a.put(x);
  ASSERT_EQ(da_comm_allreduce(comm, a.p, a.p, 4096, DA_DTYPE_F32, DA_COMM_AVG), DA_STATUS_SUCCESS) << da_last_error();
  ASSERT_EQ(da_comm_synchronize(comm), DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_EQ(a.get<float>(4096), x);
  EXPECT_EQ(da_comm_destroy(comm), DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_EQ(da_comm_create_nccl_rank(&cfg, &id, 1, 1, 0, &comm), DA_STATUS_INVALID_ARGUMENT);
}

// --- GPU compressors against the host ones ---------------------------------------------------------

std::vector<float> test_data(uint64_t seed, size_t n, bool ties) {
  std::vector<float> a = da_test::gradient(seed, n);
  if (ties)
    for (auto& x : a) x = std::round(x * 64) / 64;
  return a;
}

const size_t kSizes[] = {1, 7, 4096, 4097, 1000003};

TEST(GpuCompress, CastMatchesHostBitForBit) {
  REQUIRE_GPU();
  for (size_t n : kSizes)
    for (int elem : {DA_DTYPE_F16, DA_DTYPE_BF16})
      for (float prescale : {1.0f, 0.125f}) {
        std::vector<float> a = test_data(n, n, false);
        std::vector<uint16_t> h(n);
        std::vector<float> r(n), back(n);
        da_cx_cast_encode(elem, a.data(), n, prescale, h.data(), r.data());
        da_cx_cast_decode(elem, h.data(), n, 2.0f, back.data());
        Dev da(n * 4), dh(n * 2), dr(n * 4), db(n * 4);
        da.put(a);
        ASSERT_EQ(da_gpu_cast_encode(elem, da.as<float>(), n, prescale, dh.as<uint16_t>(), dr.as<float>(), nullptr),
                  DA_STATUS_SUCCESS);
        ASSERT_EQ(da_gpu_cast_decode(elem, dh.as<uint16_t>(), n, 2.0f, db.as<float>(), nullptr), DA_STATUS_SUCCESS);
        CUDA_OK(cudaDeviceSynchronize());
        EXPECT_EQ(dh.get<uint16_t>(n), h) << "n=" << n << " elem=" << elem;
        EXPECT_EQ(bits_of<uint32_t>(dr.get<float>(n)), bits_of<uint32_t>(r));
        EXPECT_EQ(bits_of<uint32_t>(db.get<float>(n)), bits_of<uint32_t>(back));
      }
}

TEST(GpuCompress, TopKSelectsTheSameSetAsTheHost) {
  REQUIRE_GPU();
  for (size_t n : kSizes)
    for (bool ties : {false, true})
      for (double ratio : {0.001, 0.01, 0.3, 1.0}) {
        std::vector<float> a = test_data(n + 10, n, ties);
        size_t k = da_cx_k(n, ratio);
        std::vector<uint32_t> idx(k);
        std::vector<float> val(k), res(n);
        da_cx_topk_encode(a.data(), n, k, idx.data(), val.data(), res.data());
        Dev da(n * 4), di(k * 4), dv(k * 4), dr(n * 4), ws(da_gpu_select_workspace_bytes(n));
        da.put(a);
        ASSERT_EQ(da_gpu_topk_encode(da.as<float>(), n, k, di.as<uint32_t>(), dv.as<float>(), dr.as<float>(), ws.p,
                                     nullptr),
                  DA_STATUS_SUCCESS)
            << da_last_error();
        CUDA_OK(cudaDeviceSynchronize());
        SCOPED_TRACE(testing::Message() << "n=" << n << " ties=" << ties << " k=" << k);
        EXPECT_EQ(di.get<uint32_t>(k), idx);
        EXPECT_EQ(bits_of<uint32_t>(dv.get<float>(k)), bits_of<uint32_t>(val));
        EXPECT_EQ(bits_of<uint32_t>(dr.get<float>(n)), bits_of<uint32_t>(res));
      }
}

TEST(GpuCompress, ThresholdMatchesHost) {
  REQUIRE_GPU();
  for (size_t n : kSizes)
    for (double ratio : {0.01, 0.1, 0.6}) {
      std::vector<float> a = test_data(n + 20, n, n % 2 == 1);
      size_t cap = da_cx_threshold_capacity(n, ratio);
      std::vector<uint32_t> idx(cap);
      std::vector<float> val(cap), res(n);
      da_cx_threshold_encode(a.data(), n, ratio, cap, idx.data(), val.data(), res.data(), nullptr);
      Dev da(n * 4), di(cap * 4), dv(cap * 4), dr(n * 4), ws(da_gpu_select_workspace_bytes(n));
      da.put(a);
      ASSERT_EQ(da_gpu_threshold_encode(da.as<float>(), n, ratio, cap, di.as<uint32_t>(), dv.as<float>(),
                                        dr.as<float>(), ws.p, nullptr),
                DA_STATUS_SUCCESS)
          << da_last_error();
      CUDA_OK(cudaDeviceSynchronize());
      SCOPED_TRACE(testing::Message() << "n=" << n << " ratio=" << ratio);
      EXPECT_EQ(di.get<uint32_t>(cap), idx);
      EXPECT_EQ(bits_of<uint32_t>(dv.get<float>(cap)), bits_of<uint32_t>(val));
      EXPECT_EQ(bits_of<uint32_t>(dr.get<float>(n)), bits_of<uint32_t>(res));
    }
}

TEST(GpuCompress, RandomKDerivesTheSameIndices) {
  REQUIRE_GPU();
  for (size_t n : kSizes) {
    std::vector<float> a = test_data(n + 30, n, false);
    size_t k = da_cx_k(n, 0.05);
    uint64_t key = da_cx_randomk_key(123, 4, 5);
    std::vector<uint32_t> idx(k);
    std::vector<float> val(k), res(n);
    da_cx_randomk_encode(a.data(), n, k, key, idx.data(), val.data(), res.data());
    Dev da(n * 4), di(k * 4), dv(k * 4), dr(n * 4);
    da.put(a);
    ASSERT_EQ(da_gpu_randomk_encode(da.as<float>(), n, k, key, di.as<uint32_t>(), dv.as<float>(), dr.as<float>(), nullptr),
              DA_STATUS_SUCCESS);
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(di.get<uint32_t>(k), idx) << n;
    EXPECT_EQ(dv.get<float>(k), val);
    EXPECT_EQ(dr.get<float>(n), res);
  }
}

TEST(GpuCompress, Int8MatchesHost) {
  REQUIRE_GPU();
  for (size_t n : kSizes)
    for (size_t chunk : {16u, 256u, 1024u}) {
      std::vector<float> a = test_data(n + 40, n, false);
      size_t chunks = da_cx_int8_chunks(n, chunk);
      std::vector<float> scales(chunks), res(n);
      std::vector<int8_t> q(n);
      da_cx_int8_encode(a.data(), n, chunk, scales.data(), q.data(), res.data());
      Dev da(n * 4), ds(chunks * 4), dq(n), dr(n * 4);
      da.put(a);
      ASSERT_EQ(da_gpu_int8_encode(da.as<float>(), n, chunk, ds.as<float>(), dq.as<int8_t>(), dr.as<float>(), nullptr),
                DA_STATUS_SUCCESS);
      CUDA_OK(cudaDeviceSynchronize());
      SCOPED_TRACE(testing::Message() << "n=" << n << " chunk=" << chunk);
      EXPECT_EQ(ds.get<float>(chunks), scales);
      std::vector<int8_t> gq = dq.get<int8_t>(n);
      std::vector<float> gr = dr.get<float>(n);
      // Same operations, same rounding: expected equal; allowed one step of slack.
      size_t differ = 0;
      for (size_t i = 0; i < n; i++) {
        if (gq[i] != q[i]) differ++;
        ASSERT_LE(std::abs(gq[i] - q[i]), 1) << i;
        ASSERT_LE(std::fabs(gr[i] - res[i]), scales[i / chunk] * 1.0001f + 1e-30f) << i;
      }
      EXPECT_EQ(differ, 0u);
    }
}

TEST(GpuCompress, DecodersAddRanksInOrderLikeTheHost) {
  REQUIRE_GPU();
  const size_t n = 300007;
  const int ranks = 3;
  da_compress_config c = da_compress_config_default();
  // Sparse payloads (top-k format) of three "ranks".
  c.algorithm = DA_COMPRESS_TOPK;
  c.ratio = 0.02;
  da_cx_layout l = da_cx_payload_layout(&c, n);
  std::vector<char> gathered(l.bytes * ranks);
  for (int r = 0; r < ranks; r++) {
    std::vector<float> a = test_data(50 + r, n, false);
    char* p = gathered.data() + r * l.bytes;
    da_cx_topk_encode(a.data(), n, l.slots, (uint32_t*)(p + l.idx_offset), (float*)(p + l.val_offset), nullptr);
  }
  std::vector<float> host(n, 0.0f);
  for (int r = 0; r < ranks; r++)
    da_cx_sparse_accumulate(host.data(), (uint32_t*)(gathered.data() + r * l.bytes + l.idx_offset),
                            (float*)(gathered.data() + r * l.bytes + l.val_offset), l.slots);
  Dev dg(gathered.size()), dout(n * 4);
  dg.put(gathered);
  cudaMemset(dout.p, 0, n * 4);
  for (int r = 0; r < ranks; r++)
    ASSERT_EQ(da_gpu_sparse_accumulate(dout.as<float>(), (uint32_t*)(dg.as<char>() + r * l.bytes + l.idx_offset),
                                       (float*)(dg.as<char>() + r * l.bytes + l.val_offset), l.slots, nullptr),
              DA_STATUS_SUCCESS);
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(bits_of<uint32_t>(dout.get<float>(n)), bits_of<uint32_t>(host));
  // Int8 payloads.
  c.algorithm = DA_COMPRESS_INT8;
  c.int8_chunk = 128;
  l = da_cx_payload_layout(&c, n);
  gathered.assign(l.bytes * ranks, 0);
  for (int r = 0; r < ranks; r++) {
    std::vector<float> a = test_data(60 + r, n, false);
    char* p = gathered.data() + r * l.bytes;
    da_cx_int8_encode(a.data(), n, c.int8_chunk, (float*)(p + l.scales_offset), (int8_t*)(p + l.q_offset), nullptr);
  }
  std::fill(host.begin(), host.end(), 0.0f);
  for (int r = 0; r < ranks; r++)
    da_cx_int8_accumulate(host.data(), n, c.int8_chunk, (float*)(gathered.data() + r * l.bytes + l.scales_offset),
                          (int8_t*)(gathered.data() + r * l.bytes + l.q_offset));
  da_cx_scale(host.data(), n, 1.0f / 3);
  Dev dg2(gathered.size());
  dg2.put(gathered);
  ASSERT_EQ(da_gpu_int8_decode_sum(dout.as<float>(), n, c.int8_chunk, dg2.p, l.bytes, l.scales_offset, l.q_offset, ranks,
                                   1.0f / 3, nullptr),
            DA_STATUS_SUCCESS);
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(bits_of<uint32_t>(dout.get<float>(n)), bits_of<uint32_t>(host));
}

// --- Gradient communicator on the GPU ---------------------------------------------------------------

class GpuGrad : public ::testing::TestWithParam<da_compress_algorithm> {};

TEST_P(GpuGrad, DeviceBuffersFromThePoolMatchTheHostModel) {
  REQUIRE_GPU();
  const da_compress_algorithm alg = GetParam();
  Local comm;
  da_mempool* pool = nullptr;
  ASSERT_EQ(da_mempool_default(0, &pool), DA_STATUS_SUCCESS) << da_last_error();
  da_grad_config cfg = da_grad_config_default();
  cfg.compress.algorithm = alg;
  cfg.compress.ratio = 0.02;
  cfg.compress.int8_chunk = 128;
  da_grad_comm* grad = nullptr;
  ASSERT_EQ(da_grad_create(comm.c, &cfg, &grad), DA_STATUS_SUCCESS) << da_last_error();
  // One float32 gradient of 300k elements (one bucket), allocated from the pool.
  const size_t n = 300001;
  void* x = nullptr;
  ASSERT_EQ(da_mempool_allocate(pool, n * 4, nullptr, &x), DA_STATUS_SUCCESS);
  ASSERT_EQ(da_grad_register(grad, "w", x, n, DA_DTYPE_F32, nullptr), DA_STATUS_SUCCESS) << da_last_error();
  da_test::GradSimulation sim(cfg.compress, n, 1);
  cudaStream_t producer;
  CUDA_OK(cudaStreamCreateWithFlags(&producer, cudaStreamNonBlocking));
  for (int step = 0; step < 5; step++) {
    std::vector<float> g = da_test::gradient(da_test::mix_seed(0, step, 5), n, 1.0);
    CUDA_OK(cudaMemcpyAsync(x, g.data(), n * 4, cudaMemcpyHostToDevice, producer));
    ASSERT_EQ(da_grad_mark_ready(grad, 0, producer), DA_STATUS_SUCCESS) << da_last_error();
    ASSERT_EQ(da_grad_synchronize(grad), DA_STATUS_SUCCESS) << da_last_error();
    std::vector<float> got(n);
    CUDA_OK(cudaMemcpy(got.data(), x, n * 4, cudaMemcpyDeviceToHost));
    std::vector<float> want = alg == DA_COMPRESS_NONE ? g : sim.step({g}, (uint64_t)step);
    ASSERT_EQ(bits_of<uint32_t>(got), bits_of<uint32_t>(want)) << "step " << step;
  }
  da_grad_stats stats;
  ASSERT_EQ(da_grad_get_stats(grad, &stats), DA_STATUS_SUCCESS);
  EXPECT_EQ(stats.steps, 5u);
  EXPECT_EQ(stats.buckets_completed, 5u);
  EXPECT_EQ(da_grad_destroy(grad), DA_STATUS_SUCCESS) << da_last_error();
  cudaStreamDestroy(producer);
  EXPECT_EQ(da_mempool_free(pool, x, nullptr), DA_STATUS_SUCCESS);
}

INSTANTIATE_TEST_SUITE_P(Algorithms, GpuGrad,
                         ::testing::Values(DA_COMPRESS_NONE, DA_COMPRESS_FP16, DA_COMPRESS_BF16, DA_COMPRESS_TOPK,
                                           DA_COMPRESS_RANDOMK, DA_COMPRESS_THRESHOLD, DA_COMPRESS_INT8),
                         [](const ::testing::TestParamInfo<da_compress_algorithm>& info) {
                           return std::string(da_compress_algorithm_name(info.param));
                         });

TEST(GpuGrad, ManyTensorsBucketedAndInPlace) {
  REQUIRE_GPU();
  Local comm;
  da_grad_config cfg = da_grad_config_default();
  cfg.first_bucket_cap_bytes = 1 << 16;
  cfg.bucket_cap_bytes = 1 << 18;
  da_grad_comm* grad = nullptr;
  ASSERT_EQ(da_grad_create(comm.c, &cfg, &grad), DA_STATUS_SUCCESS);
  // Half the gradients are views of one flat buffer (in-place buckets), half separate.
  const size_t per = 20000;
  Dev flat(per * 10 * 4);
  std::vector<Dev*> separate;
  std::vector<std::vector<float>> values;
  for (int t = 0; t < 20; t++) {
    void* p;
    if (t < 10) {
      p = flat.as<float>() + t * per;
    } else {
      separate.push_back(new Dev(per * 4));
      p = separate.back()->p;
    }
    values.push_back(da_test::gradient(t, per));
    CUDA_OK(cudaMemcpy(p, values.back().data(), per * 4, cudaMemcpyHostToDevice));
    ASSERT_EQ(da_grad_register(grad, ("g" + std::to_string(t)).c_str(), p, per, DA_DTYPE_F32, nullptr), DA_STATUS_SUCCESS);
  }
  for (int t = 19; t >= 0; t--) ASSERT_EQ(da_grad_mark_ready(grad, t, nullptr), DA_STATUS_SUCCESS) << da_last_error();
  ASSERT_EQ(da_grad_synchronize(grad), DA_STATUS_SUCCESS) << da_last_error();
  int buckets = 0, in_place = 0;
  da_grad_num_buckets(grad, &buckets);
  for (int b = 0; b < buckets; b++) {
    da_grad_bucket_info info;
    da_grad_bucket(grad, b, &info, nullptr, 0);
    in_place += info.in_place;
  }
  EXPECT_GT(in_place, 0);
  EXPECT_LT(in_place, buckets);
  std::vector<float> all = flat.get<float>(per * 10);
  for (int t = 0; t < 20; t++) {
    std::vector<float> got = t < 10 ? std::vector<float>(all.begin() + t * per, all.begin() + (t + 1) * per)
                                    : separate[t - 10]->get<float>(per);
    EXPECT_EQ(got, values[t]) << t;  // one rank: the average is the gradient itself
  }
  EXPECT_EQ(da_grad_destroy(grad), DA_STATUS_SUCCESS);
  for (Dev* d : separate) delete d;
}

}  // namespace
