// The NCCL engine on several GPUs of one process: one thread per GPU, N = min(visible
// GPUs, 4) ranks of a clique made with da_comm_nccl_get_id + da_comm_create_nccl_rank
// (no MPI, no mpirun). What the one-rank nccl_test cannot see:
//   - all-reduce with ragged counts, every op and dtype, against host references, with
//     the ragged tail of ncclAvg checked explicitly (nccl_test saw NCCL 2.28.3 leave it
//     unwritten on one rank; comm/nccl_engine.c, nccl_op_for; NcclProbe below);
//   - the other collectives, groups, events across ranks;
//   - the gradient communicator with every compressor against the host model of all
//     ranks (grad_sim.h), on the MPI tests' inputs, and error feedback over 240 steps;
//   - failures: sizes that disagree (DA_STATUS_INVALID_ARGUMENT on every rank) and a
//     rank that stops taking part (DA_STATUS_COMM_ERROR on the others within the
//     timeout).
// Every case skips, with the reason, without 2 GPUs. A watchdog ends the process if a
// test runs past its bound, so a hang is a loud failure. main() sets NCCL_NVLS_ENABLE=0
// (and CUDA_MODULE_LOADING=EAGER unless set) before any CUDA or NCCL call.
#include <cuda_runtime_api.h>
#include <math.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "comm/compress.h"
#include "comm/da_comm.h"
#include "device/da_device.h"
#include "tests/comm/grad_sim.h"
#include "tests/comm/test_util.h"

namespace {

constexpr int kMaxRanks = 4;
int g_ranks = 0;            // min(visible GPUs, kMaxRanks); set in main
std::string g_skip_reason;  // why every case skips, when g_ranks < 2

#define REQUIRE_GPUS()                              \
  do {                                              \
    if (g_ranks < 2) GTEST_SKIP() << g_skip_reason; \
  } while (0)

double now_s() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

bool power_of_two(int n) { return n > 0 && (n & (n - 1)) == 0; }

// Device memory of the calling thread's current GPU, poisoned (all bytes 0xff: NaN in
// every float type) so that elements a collective never wrote stand out.
// Uploads and the poison end with a wait: cudaMemset and pageable cudaMemcpy run on the
// legacy default stream and may return before the device is done, and the
// communicator's stream is non-blocking, so it does not wait for that stream; a
// collective issued next could otherwise read old data or be overwritten by the poison.
struct DeviceBuffer {
  void* p = nullptr;
  size_t bytes;
  explicit DeviceBuffer(size_t b) : bytes(b ? b : 1) {
    EXPECT_EQ(cudaMalloc(&p, bytes), cudaSuccess);
    poison();
  }
  ~DeviceBuffer() { cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void poison() {
    EXPECT_EQ(cudaMemset(p, 0xff, bytes), cudaSuccess);
    EXPECT_EQ(cudaStreamSynchronize(cudaStreamLegacy), cudaSuccess);
  }
  char* at(size_t byte_offset) { return (char*)p + byte_offset; }
  template <typename T>
  void put(const std::vector<T>& v, size_t byte_offset = 0) {
    EXPECT_EQ(cudaMemcpy(at(byte_offset), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    EXPECT_EQ(cudaStreamSynchronize(cudaStreamLegacy), cudaSuccess);
  }
  template <typename T>
  std::vector<T> get(size_t n, size_t byte_offset = 0) {
    std::vector<T> v(n);
    EXPECT_EQ(cudaMemcpy(v.data(), at(byte_offset), n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }
};

da_comm_config comm_config(int timeout_ms, int verify = 1) {
  da_comm_config cfg = da_comm_config_default();
  cfg.timeout_ms = timeout_ms;
  cfg.verify_sizes = verify;
  return cfg;
}

// One rank of a clique, as its thread sees it. A body that destroys `comm` itself
// sets it to nullptr.
struct Rank {
  int rank, size;
  da_comm* comm;
};

// Runs body on `size` threads, thread r on GPU r as rank r of a fresh clique, and
// destroys what the bodies left. gtest assertions are thread-safe; an ASSERT ends
// only its own rank's body, and the peers' waits end with the engine's timeout.
void run_clique(int size, const da_comm_config& cfg, const std::function<void(Rank&)>& body) {
  da_comm_nccl_id id;
  ASSERT_EQ(da_comm_nccl_get_id(&id), DA_STATUS_SUCCESS) << da_last_error();
  std::vector<std::thread> threads;
  for (int r = 0; r < size; r++)
    threads.emplace_back([&, r] {
      ASSERT_EQ(cudaSetDevice(r), cudaSuccess);
      Rank self{r, size, nullptr};
      ASSERT_EQ(da_comm_create_nccl_rank(&cfg, &id, r, size, r, &self.comm), DA_STATUS_SUCCESS)
          << "rank " << r << ": " << da_last_error();
      body(self);
      if (self.comm) {
        EXPECT_EQ(da_comm_destroy(self.comm), DA_STATUS_SUCCESS) << "rank " << r << ": " << da_last_error();
      }
    });
  for (auto& t : threads) t.join();
}

// Counts down to zero; waiters give up after a bound (a failed peer must not hang us).
struct Latch {
  std::mutex m;
  std::condition_variable cv;
  int left;
  explicit Latch(int n) : left(n) {}
  void count_down() {
    std::lock_guard<std::mutex> g(m);
    if (--left <= 0) cv.notify_all();
  }
  bool wait_for(double seconds) {
    std::unique_lock<std::mutex> g(m);
    return cv.wait_for(g, std::chrono::duration<double>(seconds), [&] { return left <= 0; });
  }
};

// --- Typed host values --------------------------------------------------------------------------

void put_value(da_dtype t, void* base, size_t i, double v) {
  switch (t) {
    case DA_DTYPE_F32: ((float*)base)[i] = (float)v; break;
    case DA_DTYPE_F64: ((double*)base)[i] = v; break;
    case DA_DTYPE_F16: ((uint16_t*)base)[i] = da_cx_f32_to_f16((float)v); break;
    case DA_DTYPE_BF16: ((uint16_t*)base)[i] = da_cx_f32_to_bf16((float)v); break;
  }
}

double get_value(da_dtype t, const void* base, size_t i) {
  switch (t) {
    case DA_DTYPE_F32: return ((const float*)base)[i];
    case DA_DTYPE_F64: return ((const double*)base)[i];
    case DA_DTYPE_F16: return da_cx_f16_to_f32(((const uint16_t*)base)[i]);
    case DA_DTYPE_BF16: return da_cx_bf16_to_f32(((const uint16_t*)base)[i]);
  }
  return NAN;
}

double round_to(da_dtype t, double v) {
  char slot[8];
  put_value(t, slot, 0, v);
  return get_value(t, slot, 0);
}

// Unit roundoff of each type.
double unit_of(da_dtype t) {
  switch (t) {
    case DA_DTYPE_F32: return std::ldexp(1.0, -24);
    case DA_DTYPE_F64: return std::ldexp(1.0, -53);
    case DA_DTYPE_F16: return std::ldexp(1.0, -11);
    case DA_DTYPE_BF16: return std::ldexp(1.0, -8);
  }
  return 1;
}

const char* dtype_name(da_dtype t) {
  switch (t) {
    case DA_DTYPE_F32: return "f32";
    case DA_DTYPE_F64: return "f64";
    case DA_DTYPE_F16: return "f16";
    case DA_DTYPE_BF16: return "bf16";
  }
  return "?";
}

const char* op_name(da_comm_op op) {
  switch (op) {
    case DA_COMM_SUM: return "SUM";
    case DA_COMM_AVG: return "AVG";
    case DA_COMM_MAX: return "MAX";
    case DA_COMM_MIN: return "MIN";
  }
  return "?";
}

// Values every type holds exactly, whose sums and averages over 2 or 4 ranks stay
// exact in it (as the MPI tests use): quarters in [-25, 25] for float32/64, integers
// in [-25, 25] for the half types.
std::vector<double> exact_inputs(da_dtype t, int rank, size_t n, uint64_t salt) {
  std::vector<double> v(n);
  const bool half = t == DA_DTYPE_F16 || t == DA_DTYPE_BF16;
  for (size_t i = 0; i < n; i++) {
    float x = da_test::exact_value(da_test::mix_seed(salt, rank), i);
    v[i] = half ? std::round(x / 4) : x;
  }
  return v;
}

std::vector<double> gradient_inputs(int rank, size_t n, uint64_t salt) {
  std::vector<float> g = da_test::gradient(da_test::mix_seed(salt, rank), n);
  return std::vector<double>(g.begin(), g.end());
}

std::vector<char> encode(da_dtype t, const std::vector<double>& v) {
  std::vector<char> b(v.size() * da_dtype_size(t));
  for (size_t i = 0; i < v.size(); i++) put_value(t, b.data(), i, v[i]);
  return b;
}

// The reference of a reduction of every rank's inputs, rounded to the type, and how
// far from it a result may be: 0 where the reduction is exact, else a few roundings
// of the partial sums (their order is NCCL's).
struct Reference {
  std::vector<double> want, tolerance;
};

Reference reduce_reference(da_dtype t, da_comm_op op, const std::vector<std::vector<double>>& in, bool exact) {
  const int ranks = (int)in.size();
  const size_t n = in[0].size();
  Reference ref{std::vector<double>(n), std::vector<double>(n, 0.0)};
  for (size_t i = 0; i < n; i++) {
    double sum = 0, magnitude = 0, hi = -INFINITY, lo = INFINITY;
    for (int r = 0; r < ranks; r++) {
      double v = in[r][i];
      sum += v;
      magnitude += std::fabs(v);
      hi = std::max(hi, v);
      lo = std::min(lo, v);
    }
    double w = op == DA_COMM_SUM ? sum : op == DA_COMM_AVG ? sum / ranks : op == DA_COMM_MAX ? hi : lo;
    ref.want[i] = round_to(t, w);
    if (!exact && (op == DA_COMM_SUM || op == DA_COMM_AVG))
      ref.tolerance[i] = 2.0 * (ranks + 1) * unit_of(t) * magnitude;
  }
  return ref;
}

// The result of one collective against its reference. `tail_from`: where the ragged
// tail starts (the elements after the last full 16-byte vector).
struct Verdict {
  size_t wrong = 0, unwritten = 0, tail_wrong = 0, tail_from = 0;
  std::string first;
};

Verdict judge(da_dtype t, const std::vector<char>& got, const Reference& ref) {
  const size_t n = ref.want.size(), es = da_dtype_size(t);
  Verdict v;
  v.tail_from = n - n % (16 / es);
  for (size_t i = 0; i < n; i++) {
    double g = get_value(t, got.data(), i);
    bool ok = g == ref.want[i] || std::fabs(g - ref.want[i]) <= ref.tolerance[i];
    if (ok) continue;
    bool poison = true;
    for (size_t b = 0; b < es; b++) poison &= (unsigned char)got[i * es + b] == 0xff;
    v.wrong++;
    v.unwritten += poison;
    v.tail_wrong += i >= v.tail_from;
    if (v.first.empty()) {
      char line[200];
      snprintf(line, sizeof line, "first at %zu: got %.9g%s, want %.9g (tolerance %.3g)", i, g,
               poison ? " (never written)" : "", ref.want[i], ref.tolerance[i]);
      v.first = line;
    }
  }
  return v;
}

// What the AVG checks saw, per dtype, for the summary line the issue asks for.
struct AvgLog {
  std::mutex m;
  struct Row {
    int checks = 0;
    size_t wrong = 0, unwritten = 0, tail_wrong = 0;
  };
  std::map<std::string, Row> rows;
  void add(const std::string& key, const Verdict& v) {
    std::lock_guard<std::mutex> g(m);
    Row& r = rows[key];
    r.checks++;
    r.wrong += v.wrong;
    r.unwritten += v.unwritten;
    r.tail_wrong += v.tail_wrong;
  }
  void print(const char* what) {
    int version = 0;
    ncclGetVersion(&version);
    for (auto& kv : rows)
      printf(
          "[ncclAvg] %s %s on %d ranks, NCCL %d: %d results checked (every rank, in and out of place), %zu wrong "
          "elements, %zu never written, %zu wrong in a ragged tail\n",
          what, kv.first.c_str(), g_ranks, version, kv.second.checks, kv.second.wrong, kv.second.unwritten,
          kv.second.tail_wrong);
  }
};

const size_t kRaggedCounts[] = {1, 3, 4097, 100003, (1u << 20) + 7};

// Every rank: all-reduce of its inputs for every (dtype, count, op), in and out of
// place, each result against the host reference.
void allreduce_sweep(Rank& c, bool gradient_data, AvgLog* log) {
  const std::vector<da_dtype> dtypes =
      gradient_data ? std::vector<da_dtype>{DA_DTYPE_F32}
                    : std::vector<da_dtype>{DA_DTYPE_F32, DA_DTYPE_F16, DA_DTYPE_BF16, DA_DTYPE_F64};
  const std::vector<da_comm_op> ops = gradient_data
                                          ? std::vector<da_comm_op>{DA_COMM_SUM, DA_COMM_AVG}
                                          : std::vector<da_comm_op>{DA_COMM_SUM, DA_COMM_AVG, DA_COMM_MAX, DA_COMM_MIN};
  // Exact: integer-like data over 2 or 4 ranks; with 2 ranks even random floats (one
  // rounding of x0 + x1; NCCL's average pre-multiplies by 1/2, exactly).
  const bool exact = gradient_data ? c.size == 2 : power_of_two(c.size);
  for (da_dtype t : dtypes)
    for (size_t n : kRaggedCounts) {
      const size_t es = da_dtype_size(t);
      std::vector<std::vector<double>> in(c.size);
      for (int r = 0; r < c.size; r++)
        in[r] = gradient_data ? gradient_inputs(r, n, 21) : exact_inputs(t, r, n, 11 + n);
      const std::vector<char> mine = encode(t, in[c.rank]);
      DeviceBuffer send(n * es), recv(n * es);
      send.put(mine);
      for (da_comm_op op : ops) {
        const Reference ref = reduce_reference(t, op, in, exact);
        for (bool in_place : {false, true}) {
          if (in_place)
            recv.put(mine);
          else
            recv.poison();
          ASSERT_EQ(da_comm_allreduce(c.comm, in_place ? recv.p : send.p, recv.p, n, t, op), DA_STATUS_SUCCESS)
              << da_last_error();
          ASSERT_EQ(da_comm_synchronize(c.comm), DA_STATUS_SUCCESS) << da_last_error();
          const Verdict v = judge(t, recv.get<char>(n * es), ref);
          EXPECT_EQ(v.wrong, 0u) << "rank " << c.rank << " of " << c.size << ": all-reduce " << op_name(op) << " "
                                 << dtype_name(t) << " count " << n << (in_place ? " in place" : "") << ": " << v.wrong
                                 << " wrong (" << v.unwritten << " never written, " << v.tail_wrong
                                 << " in the ragged tail [" << v.tail_from << ", " << n << ")); " << v.first;
          if (op == DA_COMM_AVG && log)
            log->add(std::string(dtype_name(t)) + (gradient_data ? " gradient data" : ""), v);
        }
      }
    }
}

// --- The clique ---------------------------------------------------------------------------------

TEST(NcclMulti, OneThreadPerGpuMakesAClique) {
  REQUIRE_GPUS();
  run_clique(g_ranks, comm_config(20000), [](Rank& c) {
    int rank = -1, size = -1, device = -1;
    da_comm_engine engine;
    void* stream = nullptr;
    ASSERT_EQ(da_comm_rank(c.comm, &rank), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_size(c.comm, &size), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_device(c.comm, &device), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_engine_of(c.comm, &engine), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_stream(c.comm, &stream), DA_STATUS_SUCCESS);
    EXPECT_EQ(rank, c.rank);
    EXPECT_EQ(size, c.size);
    EXPECT_EQ(device, c.rank);
    EXPECT_EQ(engine, DA_COMM_ENGINE_NCCL);
    EXPECT_NE(stream, nullptr);
    EXPECT_EQ(da_comm_barrier(c.comm), DA_STATUS_SUCCESS) << da_last_error();
  });
}

// --- All-reduce ---------------------------------------------------------------------------------

TEST(NcclMulti, AllreduceRaggedCountsEveryOpAndDtype) {
  REQUIRE_GPUS();
  AvgLog log;
  run_clique(g_ranks, comm_config(20000), [&](Rank& c) { allreduce_sweep(c, false, &log); });
  log.print("exact data");
}

TEST(NcclMulti, AllreduceGradientDataFloat32WithAndWithoutVerify) {
  REQUIRE_GPUS();
  for (int verify : {1, 0}) {
    AvgLog log;
    run_clique(g_ranks, comm_config(20000, verify), [&](Rank& c) { allreduce_sweep(c, true, &log); });
    log.print(verify ? "verify_sizes=1" : "verify_sizes=0");
  }
}

// --- Other collectives, groups, events -------------------------------------------------------------

std::vector<float> exact_floats(int rank, size_t n, uint64_t salt) {
  const std::vector<double> v = exact_inputs(DA_DTYPE_F32, rank, n, salt);
  return std::vector<float>(v.begin(), v.end());
}

TEST(NcclMulti, AllgatherReduceScatterBroadcastSendRecvEvents) {
  REQUIRE_GPUS();
  run_clique(g_ranks, comm_config(20000), [](Rank& c) {
    const int N = c.size, me = c.rank;
    const size_t n = 1001;  // ragged
    const std::vector<float> mine = exact_floats(me, n, 13);
    // all-gather, out of place and in place
    DeviceBuffer src(n * 4), all(n * N * 4), in_place(n * N * 4);
    src.put(mine);
    ASSERT_EQ(da_comm_allgather(c.comm, src.p, all.p, n, DA_DTYPE_F32), DA_STATUS_SUCCESS) << da_last_error();
    in_place.put(mine, me * n * 4);
    ASSERT_EQ(da_comm_allgather(c.comm, in_place.at(me * n * 4), in_place.p, n, DA_DTYPE_F32), DA_STATUS_SUCCESS)
        << da_last_error();
    ASSERT_EQ(da_comm_synchronize(c.comm), DA_STATUS_SUCCESS) << da_last_error();
    std::vector<float> want_all;
    for (int r = 0; r < N; r++) {
      std::vector<float> v = exact_floats(r, n, 13);
      want_all.insert(want_all.end(), v.begin(), v.end());
    }
    EXPECT_EQ(all.get<float>(n * N), want_all) << "rank " << me;
    EXPECT_EQ(in_place.get<float>(n * N), want_all) << "rank " << me;
    // reduce-scatter, SUM and AVG (ncclAvg with a ragged count), out of place and in place
    std::vector<std::vector<double>> slices(N);
    for (int r = 0; r < N; r++) {
      std::vector<float> v = exact_floats(r, n * N, 14);
      slices[r].assign(v.begin() + me * n, v.begin() + (me + 1) * n);
    }
    for (da_comm_op op : {DA_COMM_SUM, DA_COMM_AVG}) {
      const Reference ref = reduce_reference(DA_DTYPE_F32, op, slices, power_of_two(N));
      for (bool inplace : {false, true}) {
        DeviceBuffer send(n * N * 4), out(n * 4);
        send.put(exact_floats(me, n * N, 14));
        void* recv = inplace ? send.at(me * n * 4) : out.p;
        ASSERT_EQ(da_comm_reduce_scatter(c.comm, send.p, recv, n, DA_DTYPE_F32, op), DA_STATUS_SUCCESS)
            << da_last_error();
        ASSERT_EQ(da_comm_synchronize(c.comm), DA_STATUS_SUCCESS) << da_last_error();
        std::vector<char> got(n * 4);
        ASSERT_EQ(cudaMemcpy(got.data(), recv, n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
        const Verdict v = judge(DA_DTYPE_F32, got, ref);
        EXPECT_EQ(v.wrong, 0u) << "rank " << me << ": reduce-scatter " << op_name(op) << (inplace ? " in place" : "")
                               << ": " << v.wrong << " wrong (" << v.tail_wrong << " in the ragged tail); " << v.first;
      }
    }
    // broadcast from every root, out of place and in place (float64)
    for (int root = 0; root < N; root++) {
      std::vector<float> f = exact_floats(root, n, 15);
      const std::vector<double> want(f.begin(), f.end());
      DeviceBuffer from(n * 8), to(n * 8), buf(n * 8);
      from.put(want);
      if (me == root) buf.put(want);
      ASSERT_EQ(da_comm_broadcast(c.comm, from.p, to.p, n, DA_DTYPE_F64, root), DA_STATUS_SUCCESS);
      ASSERT_EQ(da_comm_broadcast(c.comm, buf.p, buf.p, n, DA_DTYPE_F64, root), DA_STATUS_SUCCESS);
      ASSERT_EQ(da_comm_synchronize(c.comm), DA_STATUS_SUCCESS) << da_last_error();
      EXPECT_EQ(to.get<double>(n), want) << "root " << root << " rank " << me;
      EXPECT_EQ(buf.get<double>(n), want) << "root " << root << " rank " << me;
    }
    // ring send/recv, and the same ring as a group with a send to self
    const int next = (me + 1) % N, prev = (me + N - 1) % N;
    DeviceBuffer ring(n * 4), ring2(n * 4), self(n * 4);
    ASSERT_EQ(da_comm_sendrecv(c.comm, src.p, n, next, ring.p, n, prev, DA_DTYPE_F32), DA_STATUS_SUCCESS)
        << da_last_error();
    ASSERT_EQ(da_comm_group_start(c.comm), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_recv(c.comm, ring2.p, n, DA_DTYPE_F32, prev), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_send(c.comm, src.p, n, DA_DTYPE_F32, next), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_send(c.comm, src.p, n, DA_DTYPE_F32, me), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_recv(c.comm, self.p, n, DA_DTYPE_F32, me), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_group_end(c.comm), DA_STATUS_SUCCESS) << da_last_error();
    ASSERT_EQ(da_comm_synchronize(c.comm), DA_STATUS_SUCCESS) << da_last_error();
    EXPECT_EQ(ring.get<float>(n), exact_floats(prev, n, 13)) << "rank " << me;
    EXPECT_EQ(ring2.get<float>(n), exact_floats(prev, n, 13)) << "rank " << me;
    EXPECT_EQ(self.get<float>(n), mine) << "rank " << me;
    // The caller's stream produces the input and consumes the result, with no host wait
    // in between: wait_stream and event_stream_wait order it across ranks.
    const size_t big = 1 << 22;  // 16 MiB
    cudaStream_t user;
    ASSERT_EQ(cudaStreamCreateWithFlags(&user, cudaStreamNonBlocking), cudaSuccess);
    DeviceBuffer a(big * 4), b(big * 4);
    ASSERT_EQ(cudaMemsetAsync(a.p, 0, big * 4, user), cudaSuccess);
    ASSERT_EQ(cudaMemcpyAsync(a.p, mine.data(), n * 4, cudaMemcpyHostToDevice, user), cudaSuccess);
    ASSERT_EQ(da_comm_wait_stream(c.comm, user), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_allreduce(c.comm, a.p, b.p, big, DA_DTYPE_F32, DA_COMM_SUM), DA_STATUS_SUCCESS);
    da_comm_event* ev = nullptr;
    ASSERT_EQ(da_comm_event_create(c.comm, &ev), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_event_record(ev), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_event_stream_wait(ev, user), DA_STATUS_SUCCESS);
    std::vector<float> back(n + 1);
    ASSERT_EQ(cudaMemcpyAsync(back.data(), b.p, (n + 1) * 4, cudaMemcpyDeviceToHost, user), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(user), cudaSuccess);
    std::vector<float> want_sum(n + 1, 0.0f);  // exact: small quarters
    for (int r = 0; r < N; r++) {
      std::vector<float> v = exact_floats(r, n, 13);
      for (size_t i = 0; i < n; i++) want_sum[i] += v[i];
    }
    EXPECT_EQ(back, want_sum) << "rank " << me;
    int done = 0;
    ASSERT_EQ(da_comm_event_query(ev, &done), DA_STATUS_SUCCESS);
    EXPECT_EQ(done, 1);
    ASSERT_EQ(da_comm_event_synchronize(ev), DA_STATUS_SUCCESS) << da_last_error();
    ASSERT_EQ(da_comm_event_destroy(ev), DA_STATUS_SUCCESS);
    cudaStreamDestroy(user);
    EXPECT_EQ(da_comm_barrier(c.comm), DA_STATUS_SUCCESS) << da_last_error();
  });
}

// --- Gradient communicator: uncompressed ----------------------------------------------------------

da_grad_config small_buckets() {
  da_grad_config cfg = da_grad_config_default();
  cfg.first_bucket_cap_bytes = 4096;
  cfg.bucket_cap_bytes = 16384;
  cfg.max_tensors_per_bucket = 4;
  return cfg;
}

struct Grad {
  da_grad_comm* g = nullptr;
  Grad(da_comm* c, const da_grad_config& cfg) {
    EXPECT_EQ(da_grad_create(c, &cfg, &g), DA_STATUS_SUCCESS) << da_last_error();
  }
  ~Grad() {
    if (g) da_grad_destroy(g);
  }
};

// The MPI tests' model (mpi_scenarios.cc) on the device: float32 and float64 gradients
// of assorted sizes, data of one step derived from (rank, step, tensor).
struct DeviceModel {
  std::vector<size_t> counts;
  std::vector<da_dtype> dtypes;
  std::vector<std::unique_ptr<DeviceBuffer>> buffers;
  DeviceModel(std::vector<size_t> c, std::vector<da_dtype> d) : counts(c), dtypes(d) {
    for (size_t i = 0; i < c.size(); i++) buffers.emplace_back(new DeviceBuffer(c[i] * da_dtype_size(d[i])));
  }
  static double value(int rank, int step, size_t tensor, size_t j) {
    return da_test::exact_value(da_test::mix_seed(rank, step, tensor), j);
  }
  void register_all(da_grad_comm* g) {
    for (size_t i = 0; i < counts.size(); i++)
      ASSERT_EQ(da_grad_register(g, ("w" + std::to_string(i)).c_str(), buffers[i]->p, counts[i], dtypes[i], nullptr),
                DA_STATUS_SUCCESS)
          << da_last_error();
  }
  void fill(int rank, int step) {
    for (size_t i = 0; i < counts.size(); i++) {
      std::vector<double> v(counts[i]);
      for (size_t j = 0; j < counts[i]; j++) v[j] = value(rank, step, i, j);
      std::vector<char> bytes = encode(dtypes[i], v);
      buffers[i]->put(bytes);
    }
  }
  // Exact for 2 and 4 ranks (the data sums exactly); else within a few roundings.
  void expect_average(int rank, int size, int step) {
    for (size_t i = 0; i < counts.size(); i++) {
      std::vector<char> got = buffers[i]->get<char>(counts[i] * da_dtype_size(dtypes[i]));
      for (size_t j = 0; j < counts[i]; j++) {
        double sum = 0;
        for (int r = 0; r < size; r++) sum += value(r, step, i, j);
        double want = round_to(dtypes[i], sum / size);
        double slack = power_of_two(size) ? 0.0 : 4 * unit_of(dtypes[i]) * 100;
        double g = get_value(dtypes[i], got.data(), j);
        ASSERT_LE(std::fabs(g - want), slack) << "rank " << rank << " tensor " << i << " element " << j << " step "
                                              << step << ": got " << g << ", want " << want;
      }
    }
  }
};

TEST(NcclMultiGrad, UncompressedAverageIsExactOverSteps) {
  REQUIRE_GPUS();
  run_clique(g_ranks, comm_config(20000), [](Rank& c) {
    Grad grad(c.comm, small_buckets());
    DeviceModel m({700, 3000, 5, 4096, 1000, 1500, 64, 2048}, {DA_DTYPE_F32, DA_DTYPE_F64, DA_DTYPE_F32, DA_DTYPE_F32,
                                                               DA_DTYPE_F64, DA_DTYPE_F32, DA_DTYPE_F32, DA_DTYPE_F32});
    m.register_all(grad.g);
    da_test::Rng order_rng(100 + c.rank);
    for (int step = 0; step < 5; step++) {
      m.fill(c.rank, step);
      // Each rank marks in its own random order: launch order stays the plan's.
      std::vector<int> order(m.counts.size());
      for (size_t i = 0; i < order.size(); i++) order[i] = (int)i;
      for (size_t i = order.size() - 1; i > 0; i--) std::swap(order[i], order[order_rng.below((int)i + 1)]);
      for (int i : order) ASSERT_EQ(da_grad_mark_ready(grad.g, i, nullptr), DA_STATUS_SUCCESS) << da_last_error();
      ASSERT_EQ(da_grad_synchronize(grad.g), DA_STATUS_SUCCESS) << da_last_error();
      m.expect_average(c.rank, c.size, step);
    }
    da_grad_stats stats;
    ASSERT_EQ(da_grad_get_stats(grad.g, &stats), DA_STATUS_SUCCESS);
    int buckets = 0;
    ASSERT_EQ(da_grad_num_buckets(grad.g, &buckets), DA_STATUS_SUCCESS);
    EXPECT_GT(buckets, 3);
    EXPECT_EQ(stats.steps, 5u);
    EXPECT_EQ(stats.buckets_launched, 5u * buckets);
    EXPECT_EQ(stats.buckets_completed, 5u * buckets);
    EXPECT_EQ(stats.unmarked_last_step, 0);
  });
}

TEST(NcclMultiGrad, BucketsLaunchInPlanOrderAsTheirGradientsBecomeReady) {
  REQUIRE_GPUS();
  run_clique(g_ranks, comm_config(20000), [](Rank& c) {
    Grad grad(c.comm, small_buckets());
    // 20000 bytes each: every tensor closes its own bucket (caps 4096 and 16384).
    DeviceModel m({5000, 5000, 5000, 5000}, std::vector<da_dtype>(4, DA_DTYPE_F32));
    m.register_all(grad.g);
    m.fill(c.rank, 0);
    ASSERT_EQ(da_grad_finalize(grad.g), DA_STATUS_SUCCESS) << da_last_error();
    da_grad_stats stats;
    // Bucket 0 holds the last tensor: marking it launches it while the others wait.
    ASSERT_EQ(da_grad_mark_ready(grad.g, 3, nullptr), DA_STATUS_SUCCESS) << da_last_error();
    da_grad_get_stats(grad.g, &stats);
    EXPECT_EQ(stats.launched_this_step, 1);
    // Tensor 1 first launches nothing: bucket 1 (tensor 2) must go before it.
    ASSERT_EQ(da_grad_mark_ready(grad.g, 1, nullptr), DA_STATUS_SUCCESS);
    da_grad_get_stats(grad.g, &stats);
    EXPECT_EQ(stats.launched_this_step, 1);
    ASSERT_EQ(da_grad_mark_ready(grad.g, 2, nullptr), DA_STATUS_SUCCESS);
    da_grad_get_stats(grad.g, &stats);
    EXPECT_EQ(stats.launched_this_step, 3);
    EXPECT_EQ(da_grad_mark_ready(grad.g, 2, nullptr), DA_STATUS_INVALID_ARGUMENT);
    // Tensor 0 is left unmarked: synchronize marks it, so every rank still reduces it.
    ASSERT_EQ(da_grad_synchronize(grad.g), DA_STATUS_SUCCESS) << da_last_error();
    da_grad_get_stats(grad.g, &stats);
    EXPECT_EQ(stats.unmarked_last_step, 1);
    m.expect_average(c.rank, c.size, 0);
  });
}

TEST(NcclMultiGrad, FlatBufferBucketsAreReducedInPlace) {
  REQUIRE_GPUS();
  run_clique(g_ranks, comm_config(20000), [](Rank& c) {
    Grad grad(c.comm, small_buckets());
    const size_t total = 10000, sizes[] = {1000, 500, 2500, 3000, 3000};
    DeviceBuffer flat(total * 4);
    size_t offset = 0;
    for (int i = 0; i < 5; i++) {
      ASSERT_EQ(da_grad_register(grad.g, ("v" + std::to_string(i)).c_str(), flat.at(offset * 4), sizes[i], DA_DTYPE_F32,
                                 nullptr),
                DA_STATUS_SUCCESS);
      offset += sizes[i];
    }
    auto value = [](int r, size_t j) { return da_test::exact_value(da_test::mix_seed(r, 9), j); };
    std::vector<float> mine(total);
    for (size_t j = 0; j < total; j++) mine[j] = value(c.rank, j);
    flat.put(mine);
    ASSERT_EQ(da_grad_synchronize(grad.g), DA_STATUS_SUCCESS) << da_last_error();
    int buckets = 0;
    ASSERT_EQ(da_grad_num_buckets(grad.g, &buckets), DA_STATUS_SUCCESS);
    for (int b = 0; b < buckets; b++) {
      da_grad_bucket_info info;
      ASSERT_EQ(da_grad_bucket(grad.g, b, &info, nullptr, 0), DA_STATUS_SUCCESS);
      EXPECT_EQ(info.in_place, 1) << b;
    }
    std::vector<float> got = flat.get<float>(total);
    for (size_t j = 0; j < total; j++) {
      double sum = 0;
      for (int r = 0; r < c.size; r++) sum += value(r, j);
      ASSERT_NEAR(got[j], sum / c.size, power_of_two(c.size) ? 0.0 : 1e-5) << "rank " << c.rank << " element " << j;
    }
  });
}

TEST(NcclMultiGrad, RanksThatRegisterDifferentGradientsAreToldSo) {
  REQUIRE_GPUS();
  run_clique(g_ranks, comm_config(20000), [](Rank& c) {
    DeviceBuffer a(400), b(400);
    {
      Grad grad(c.comm, small_buckets());
      ASSERT_EQ(da_grad_register(grad.g, "a", a.p, 100, DA_DTYPE_F32, nullptr), DA_STATUS_SUCCESS);
      if (c.rank == 0) {
        ASSERT_EQ(da_grad_register(grad.g, "b", b.p, 100, DA_DTYPE_F32, nullptr), DA_STATUS_SUCCESS);
      }
      EXPECT_EQ(da_grad_finalize(grad.g), DA_STATUS_INVALID_ARGUMENT) << "rank " << c.rank;
      EXPECT_NE(strstr(da_last_error(), "number of gradients"), nullptr) << da_last_error();
    }
    // Same gradients, different compression: also refused, on every rank.
    da_grad_config cfg = small_buckets();
    cfg.compress.algorithm = c.rank == 0 ? DA_COMPRESS_TOPK : DA_COMPRESS_INT8;
    Grad other(c.comm, cfg);
    ASSERT_EQ(da_grad_register(other.g, "a", a.p, 100, DA_DTYPE_F32, nullptr), DA_STATUS_SUCCESS);
    EXPECT_EQ(da_grad_finalize(other.g), DA_STATUS_INVALID_ARGUMENT) << "rank " << c.rank;
    EXPECT_NE(strstr(da_last_error(), "compress.algorithm"), nullptr) << da_last_error();
    // The plan check moves no gradient data: the communicator is still usable.
    EXPECT_EQ(da_comm_barrier(c.comm), DA_STATUS_SUCCESS) << da_last_error();
  });
}

TEST(NcclMultiGrad, CompressionLeavesOtherDtypesExact) {
  REQUIRE_GPUS();
  run_clique(g_ranks, comm_config(20000), [](Rank& c) {
    da_grad_config cfg = small_buckets();
    cfg.compress.algorithm = DA_COMPRESS_TOPK;
    cfg.compress.ratio = 0.01;
    Grad grad(c.comm, cfg);
    DeviceModel m({500, 800}, {DA_DTYPE_F64, DA_DTYPE_F64});
    m.register_all(grad.g);
    m.fill(c.rank, 3);
    ASSERT_EQ(da_grad_synchronize(grad.g), DA_STATUS_SUCCESS) << da_last_error();
    m.expect_average(c.rank, c.size, 3);
  });
}

// --- Gradient communicator: every compressor against the host model of every rank ------------------

std::vector<float> rank_gradient(int rank, int step, size_t n) {  // as mpi_scenarios.cc
  return da_test::gradient(da_test::mix_seed(rank, step, 77), n, 1.0);
}

// One float32 gradient (one bucket) over `steps` steps; every result against the host
// model (grad_sim.h: what grad.c does with the host compressors, for all ranks).
// Decoding adds ranks in rank order (exact to model); sums NCCL forms on the wire
// (the casts' half-precision sum, random-k's values, the uncompressed average) are one
// rounding with 2 ranks, so exact there, and within a few roundings otherwise.
// Returns the relative error of the summed averages after `early` and all steps.
void compressed_run(Rank& c, da_compress_algorithm alg, size_t n, double ratio, size_t chunk, int steps, int early,
                    double* early_relative, double* final_relative) {
  da_grad_config cfg = da_grad_config_default();
  cfg.compress.algorithm = alg;
  cfg.compress.ratio = ratio;
  cfg.compress.int8_chunk = chunk;
  DeviceBuffer x(n * 4);
  Grad grad(c.comm, cfg);
  ASSERT_EQ(da_grad_register(grad.g, "w", x.p, n, DA_DTYPE_F32, nullptr), DA_STATUS_SUCCESS) << da_last_error();
  da_test::GradSimulation sim(cfg.compress, n, c.size);
  const bool on_the_wire_sum =
      alg == DA_COMPRESS_NONE || alg == DA_COMPRESS_FP16 || alg == DA_COMPRESS_BF16 || alg == DA_COMPRESS_RANDOMK;
  const bool exact = !on_the_wire_sum || c.size == 2;
  const double unit = alg == DA_COMPRESS_FP16   ? std::ldexp(1.0, -11)
                      : alg == DA_COMPRESS_BF16 ? std::ldexp(1.0, -8)
                                                : std::ldexp(1.0, -24);
  std::vector<double> sent(n, 0.0), truth(n, 0.0);
  auto relative_error = [&]() {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
      num += (sent[i] - truth[i]) * (sent[i] - truth[i]);
      den += truth[i] * truth[i];
    }
    return std::sqrt(num / den);
  };
  for (int s = 0; s < steps; s++) {
    std::vector<std::vector<float>> g(c.size);
    for (int r = 0; r < c.size; r++) g[r] = rank_gradient(r, s, n);
    x.put(g[c.rank]);
    ASSERT_EQ(da_grad_mark_ready(grad.g, 0, nullptr), DA_STATUS_SUCCESS) << da_last_error();
    ASSERT_EQ(da_grad_synchronize(grad.g), DA_STATUS_SUCCESS) << da_last_error();
    const std::vector<float> got = x.get<float>(n);
    std::vector<float> want;
    if (alg == DA_COMPRESS_NONE) {
      want.assign(n, 0.0f);  // the model covers compressors only: the average, in rank order
      for (size_t i = 0; i < n; i++) {
        float sum = 0;
        for (int r = 0; r < c.size; r++) sum += g[r][i];
        want[i] = sum * (float)(1.0 / c.size);
      }
    } else {
      want = sim.step(g, (uint64_t)s);
    }
    size_t wrong = 0;
    std::string first;
    for (size_t i = 0; i < n; i++) {
      bool ok = exact ? memcmp(&got[i], &want[i], 4) == 0 : false;
      if (!exact) {
        double magnitude = 0;
        for (int r = 0; r < c.size; r++)
          magnitude += std::fabs(alg == DA_COMPRESS_NONE ? g[r][i] : sim.sent[r][i]) / c.size;
        ok = std::fabs((double)got[i] - want[i]) <= 8 * unit * (magnitude + 1e-3);
      }
      if (!ok && wrong++ == 0)
        first =
            "element " + std::to_string(i) + ": got " + std::to_string(got[i]) + ", want " + std::to_string(want[i]);
      sent[i] += got[i];
      for (int r = 0; r < c.size; r++) truth[i] += g[r][i] / c.size;
    }
    ASSERT_EQ(wrong, 0u) << da_compress_algorithm_name(alg) << " n=" << n << " rank " << c.rank << " step " << s
                         << (exact ? " (bit-exact expected)" : " (within rounding)") << ": " << wrong << " wrong, "
                         << first;
    if (s + 1 == early) *early_relative = relative_error();
  }
  *final_relative = relative_error();
  da_grad_stats stats;
  ASSERT_EQ(da_grad_get_stats(grad.g, &stats), DA_STATUS_SUCCESS);
  EXPECT_EQ(stats.steps, (uint64_t)steps);
  if (alg != DA_COMPRESS_NONE && alg != DA_COMPRESS_FP16 && alg != DA_COMPRESS_BF16) {
    EXPECT_LT(stats.bytes_sent, stats.bytes_reduced);
  }
}

// Every compressor (none: the plain average) on the MPI test's inputs, then on a bucket
// of many GPU tiles with ragged int8 chunks.
void compressed_clique(da_compress_algorithm alg) {
  run_clique(g_ranks, comm_config(20000), [&](Rank& c) {
    // The MPI test's inputs: 4000 elements, ratio 0.05, int8 chunk 64, 240 steps.
    const int early = 30, steps = 240;
    double early_relative = 0, relative = 0;
    compressed_run(c, alg, 4000, 0.05, 64, steps, early, &early_relative, &relative);
    if (::testing::Test::HasFatalFailure()) return;
    if (c.rank == 0)
      printf("%-9s %d ranks: relative error of the summed average after %d steps %.2e, after %d steps %.2e\n",
             da_compress_algorithm_name(alg), c.size, early, early_relative, steps, relative);
    if (alg == DA_COMPRESS_FP16 || alg == DA_COMPRESS_BF16) {
      // The cast's own error is fed back; what remains is the rounding of the
      // half-precision sum across ranks, a fraction of one unit in the last place.
      EXPECT_LT(relative, alg == DA_COMPRESS_FP16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8));
    } else if (alg != DA_COMPRESS_NONE) {
      // Error feedback: the residual stays bounded while the sums grow (~1/T).
      EXPECT_LT(relative, early_relative / 3);
    }
    double unused0 = 0, unused1 = 0;
    compressed_run(c, alg, 300001, 0.02, 128, 5, 1, &unused0, &unused1);
  });
}

// Plain TESTs, not TEST_P: gtest runs parameterized suites after all plain ones, and
// the failure tests below should come last.
#define COMPRESSED_TEST(name, algorithm)                                      \
  TEST(NcclMultiCompressed, name##_MatchesTheHostModelAndFeedsBackTheError) { \
    REQUIRE_GPUS();                                                           \
    compressed_clique(algorithm);                                             \
  }
COMPRESSED_TEST(none, DA_COMPRESS_NONE)
COMPRESSED_TEST(fp16, DA_COMPRESS_FP16)
COMPRESSED_TEST(bf16, DA_COMPRESS_BF16)
COMPRESSED_TEST(topk, DA_COMPRESS_TOPK)
COMPRESSED_TEST(randomk, DA_COMPRESS_RANDOMK)
COMPRESSED_TEST(threshold, DA_COMPRESS_THRESHOLD)
COMPRESSED_TEST(int8, DA_COMPRESS_INT8)

// --- NCCL itself: one-rank ncclAvg ------------------------------------------------------------

// The engine reduces one-rank averages with ncclSum because a one-rank ncclAvg was
// seen leaving the ragged float tail unwritten (NCCL 2.28.3, H100). nccl_test saw it
// with its poison (cudaMemset, legacy stream) not ordered before the collective (the
// NCCL stream is non-blocking), so a race could also explain it. This probe calls NCCL
// directly, with the poison ordered on the collective's own stream, then unordered as
// nccl_test did, and prints what it finds; it asserts nothing about NCCL (the engine
// does not use ncclAvg on one rank), only that the calls work. Needs one GPU.
TEST(NcclProbe, OneRankNcclAvgRaggedTail) {
  int count = 0;
  if (da_device_count(&count) != DA_STATUS_SUCCESS || count < 1) GTEST_SKIP() << "needs a GPU";
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  ncclComm_t comm = nullptr;
  int device = 0;
  ASSERT_EQ(ncclCommInitAll(&comm, 1, &device), ncclSuccess);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  int version = 0;
  ncclGetVersion(&version);
  for (bool ordered : {true, false}) {
    size_t wrong = 0, tail_wrong = 0, results = 0;
    for (int repeat = 0; repeat < 20; repeat++)
      for (size_t n : kRaggedCounts) {
        std::vector<float> x = da_test::gradient(n + repeat, n);
        DeviceBuffer send(n * 4), recv(n * 4);
        send.put(x);
        if (ordered)
          ASSERT_EQ(cudaMemsetAsync(recv.p, 0xff, n * 4, stream), cudaSuccess);
        else
          ASSERT_EQ(cudaMemset(recv.p, 0xff, n * 4), cudaSuccess);  // as nccl_test: legacy stream
        ASSERT_EQ(ncclAllReduce(send.p, recv.p, n, ncclFloat32, ncclAvg, comm, stream), ncclSuccess);
        ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        const std::vector<float> got = recv.get<float>(n);
        results++;
        for (size_t i = 0; i < n; i++)
          if (memcmp(&got[i], &x[i], 4) != 0) {
            wrong++;
            tail_wrong += i >= n - n % 4;
          }
      }
    printf(
        "[probe] NCCL %d one-rank ncclAvg float32, poison %s: %zu results (counts 1 .. 2^20+7, 20 rounds), "
        "%zu elements differ from the input, %zu of them in a ragged tail\n",
        version, ordered ? "ordered on the NCCL stream" : "on the legacy stream (unordered, as nccl_test)", results,
        wrong, tail_wrong);
  }
  cudaStreamDestroy(stream);
  EXPECT_EQ(ncclCommDestroy(comm), ncclSuccess);
}

// --- Failure: sizes that disagree ------------------------------------------------------------------

// The failure tests' bound on every wait: short, but room for NCCL's initialization
// of a fresh clique, which the same bound covers.
constexpr int kFailTimeoutMs = 3000;

double fail_bound_s() { return 1.5 * kFailTimeoutMs / 1000.0 + 2.0; }

// One collective whose signature differs between ranks in `field`: on a fresh clique,
// after the same collectives of both shapes ran on every rank (so that NCCL's lazy
// connection setup is done), every rank must get DA_STATUS_INVALID_ARGUMENT naming
// the field, within the bound. The communicator is aborted afterwards (sticky).
void expect_mismatch(const char* field,
                     const std::function<da_status(Rank&, DeviceBuffer&, DeviceBuffer&, bool)>& issue,
                     const char* detail = nullptr) {
  SCOPED_TRACE(field);
  Latch answered(g_ranks);
  run_clique(g_ranks, comm_config(kFailTimeoutMs), [&](Rank& c) {
    DeviceBuffer a(1 << 16), b(1 << 16);
    for (bool as_rank0 : {true, false}) {  // warm-up: both shapes, on every rank
      ASSERT_EQ(issue(c, a, b, as_rank0), DA_STATUS_SUCCESS) << da_last_error();
      ASSERT_EQ(da_comm_synchronize(c.comm), DA_STATUS_SUCCESS) << da_last_error();
    }
    b.poison();
    const double start = now_s();
    da_status st = issue(c, a, b, c.rank == 0);
    if (st == DA_STATUS_SUCCESS) st = da_comm_synchronize(c.comm);
    const double elapsed = now_s() - start;
    const std::string sentence = da_last_error();
    // Nobody frees memory (cudaFree, cudaFreeHost may wait for every device) while a
    // peer's kernel could still be stuck in the mismatched collective.
    answered.count_down();
    EXPECT_TRUE(answered.wait_for(4 * fail_bound_s())) << "rank " << c.rank << ": a peer did not answer";
    EXPECT_EQ(st, DA_STATUS_INVALID_ARGUMENT) << "rank " << c.rank << ": " << sentence;
    EXPECT_NE(sentence.find(field), std::string::npos) << "rank " << c.rank << ": " << sentence;
    if (detail) {
      EXPECT_NE(sentence.find(detail), std::string::npos) << "rank " << c.rank << ": " << sentence;
    }
    EXPECT_LE(elapsed, fail_bound_s()) << "rank " << c.rank;
    if (c.rank == 0) printf("[mismatch %s] rank 0 after %.3f s: %s\n", field, elapsed, sentence.c_str());
    EXPECT_EQ(da_comm_barrier(c.comm), st) << "sticky";
    EXPECT_EQ(da_comm_destroy(c.comm), st);
    c.comm = nullptr;
  });
}

TEST(NcclMultiFailure, MismatchedCountIsAnErrorOnEveryRankNotAHang) {
  REQUIRE_GPUS();
  expect_mismatch(
      "count",
      [](Rank& c, DeviceBuffer& a, DeviceBuffer& b, bool first) {
        return da_comm_allreduce(c.comm, a.p, b.p, first ? 1000 : 1001, DA_DTYPE_F32, DA_COMM_SUM);
      },
      "from 1000 to 1001");
}

TEST(NcclMultiFailure, MismatchedDtypeIsAnErrorOnEveryRank) {
  REQUIRE_GPUS();
  expect_mismatch("dtype", [](Rank& c, DeviceBuffer& a, DeviceBuffer& b, bool first) {
    return da_comm_allreduce(c.comm, a.p, b.p, 100, first ? DA_DTYPE_F32 : DA_DTYPE_F16, DA_COMM_SUM);
  });
}

TEST(NcclMultiFailure, MismatchedReductionIsAnErrorOnEveryRank) {
  REQUIRE_GPUS();
  expect_mismatch("reduction", [](Rank& c, DeviceBuffer& a, DeviceBuffer& b, bool first) {
    return da_comm_allreduce(c.comm, a.p, b.p, 100, DA_DTYPE_F32, first ? DA_COMM_SUM : DA_COMM_MAX);
  });
}

TEST(NcclMultiFailure, MismatchedRootIsAnErrorOnEveryRank) {
  REQUIRE_GPUS();
  expect_mismatch("root", [](Rank& c, DeviceBuffer& a, DeviceBuffer& b, bool first) {
    return da_comm_broadcast(c.comm, a.p, b.p, 100, DA_DTYPE_F32, first ? 0 : c.size - 1);
  });
}

TEST(NcclMultiFailure, MismatchedOperationIsAnErrorOnEveryRank) {
  REQUIRE_GPUS();
  expect_mismatch("operation", [](Rank& c, DeviceBuffer& a, DeviceBuffer& b, bool first) {
    return first ? da_comm_allgather(c.comm, a.p, b.p, 10, DA_DTYPE_F32)
                 : da_comm_allreduce(c.comm, a.p, b.p, 10, DA_DTYPE_F32, DA_COMM_SUM);
  });
}

// --- Failure: a rank that stops taking part ----------------------------------------------------------

// Ranks 0 .. N-2 run one all-reduce the last rank never joins (it stays alive and
// idle, or destroys its communicator first): each must get DA_STATUS_COMM_ERROR naming
// the timeout after about timeout_ms, never hang, and keep the error (sticky). The
// same collective ran once on every rank before, so NCCL's connections exist (a peer
// lost mid-training).
void expect_lost_peer(bool peer_destroys_its_communicator, int verify) {
  // Memory is freed (cudaFree, cudaFreeHost may wait for every device) only while no
  // rank has a kernel stuck on the lost peer: the peer leaves before the others start,
  // the others free theirs once all have their error.
  Latch gone(1), reported(g_ranks - 1);
  run_clique(g_ranks, comm_config(kFailTimeoutMs, verify), [&](Rank& c) {
    DeviceBuffer a(400), b(400);
    ASSERT_EQ(da_comm_allreduce(c.comm, a.p, b.p, 100, DA_DTYPE_F32, DA_COMM_SUM), DA_STATUS_SUCCESS);
    ASSERT_EQ(da_comm_synchronize(c.comm), DA_STATUS_SUCCESS) << da_last_error();
    ASSERT_EQ(da_comm_barrier(c.comm), DA_STATUS_SUCCESS) << da_last_error();
    if (c.rank == c.size - 1) {
      if (peer_destroys_its_communicator) {
        EXPECT_EQ(da_comm_destroy(c.comm), DA_STATUS_SUCCESS) << da_last_error();
        c.comm = nullptr;
      }
      gone.count_down();
      EXPECT_TRUE(reported.wait_for(4 * fail_bound_s())) << "the other ranks did not report";
      if (c.comm) {
        EXPECT_EQ(da_comm_destroy(c.comm), DA_STATUS_SUCCESS) << da_last_error();  // its queue is empty
        c.comm = nullptr;
      }
      return;
    }
    EXPECT_TRUE(gone.wait_for(fail_bound_s()));
    const double start = now_s();
    da_status st = da_comm_allreduce(c.comm, a.p, b.p, 100, DA_DTYPE_F32, DA_COMM_SUM);
    if (st == DA_STATUS_SUCCESS) st = da_comm_synchronize(c.comm);
    const double elapsed = now_s() - start;
    const std::string sentence = da_last_error();
    reported.count_down();
    EXPECT_TRUE(reported.wait_for(4 * fail_bound_s())) << "rank " << c.rank << ": a peer did not report";
    EXPECT_EQ(st, DA_STATUS_COMM_ERROR) << "rank " << c.rank << ": " << sentence;
    if (!peer_destroys_its_communicator) {
      // A silent peer is seen only by the deadline. One that destroyed its communicator
      // may also be reported earlier by NCCL itself (an asynchronous error).
      EXPECT_NE(sentence.find("within timeout_ms=" + std::to_string(kFailTimeoutMs)), std::string::npos)
          << "rank " << c.rank << ": " << sentence;
      EXPECT_GE(elapsed, 0.9 * kFailTimeoutMs / 1000.0) << "rank " << c.rank;
    }
    EXPECT_LE(elapsed, fail_bound_s()) << "rank " << c.rank;
    if (c.rank == 0)
      printf("[lost peer: %s] rank 0 after %.3f s: %s\n",
             peer_destroys_its_communicator ? "it destroyed its communicator" : "silent", elapsed, sentence.c_str());
    EXPECT_EQ(da_comm_allreduce(c.comm, a.p, b.p, 100, DA_DTYPE_F32, DA_COMM_SUM), DA_STATUS_COMM_ERROR);
    EXPECT_EQ(da_comm_barrier(c.comm), DA_STATUS_COMM_ERROR);
    EXPECT_EQ(da_comm_destroy(c.comm), DA_STATUS_COMM_ERROR);
    c.comm = nullptr;
  });
}

TEST(NcclMultiFailure, SilentPeerEndsInTimeoutErrorOnTheOthers) {
  REQUIRE_GPUS();
  expect_lost_peer(false, 1);
}

TEST(NcclMultiFailure, PeerThatDestroysItsCommunicatorEndsInTimeoutErrorOnTheOthers) {
  REQUIRE_GPUS();
  expect_lost_peer(true, 0);
}

// The gradient communicator's buckets with a rank that never reaches the step's
// collectives (mpi_kill.cc's bucket scenario without the SIGKILL: one process here).
TEST(NcclMultiFailure, SilentPeerInTheGradientStepEndsInTimeoutError) {
  REQUIRE_GPUS();
  Latch reported(g_ranks - 1);
  run_clique(g_ranks, comm_config(kFailTimeoutMs), [&](Rank& c) {
    {
      Grad grad(c.comm, small_buckets());
      DeviceModel m({5000, 5000, 5000, 5000}, std::vector<da_dtype>(4, DA_DTYPE_F32));
      m.register_all(grad.g);
      m.fill(c.rank, 0);
      ASSERT_EQ(da_grad_finalize(grad.g), DA_STATUS_SUCCESS) << da_last_error();     // collective
      ASSERT_EQ(da_grad_synchronize(grad.g), DA_STATUS_SUCCESS) << da_last_error();  // one good step
      if (c.rank == c.size - 1) {
        EXPECT_TRUE(reported.wait_for(4 * fail_bound_s())) << "the other ranks did not report";
        return;  // ~Grad, ~DeviceModel, then the communicator: nothing in flight here
      }
      const double start = now_s();
      da_status st = DA_STATUS_SUCCESS;
      for (int i = 3; i >= 0 && st == DA_STATUS_SUCCESS; i--) st = da_grad_mark_ready(grad.g, i, nullptr);
      if (st == DA_STATUS_SUCCESS) st = da_grad_synchronize(grad.g);
      const double elapsed = now_s() - start;
      const std::string sentence = da_last_error();
      reported.count_down();
      EXPECT_TRUE(reported.wait_for(4 * fail_bound_s())) << "rank " << c.rank << ": a peer did not report";
      EXPECT_EQ(st, DA_STATUS_COMM_ERROR) << "rank " << c.rank << ": " << sentence;
      EXPECT_GE(elapsed, 0.9 * kFailTimeoutMs / 1000.0) << "rank " << c.rank;
      EXPECT_LE(elapsed, fail_bound_s()) << "rank " << c.rank;
      if (c.rank == 0) printf("[lost peer, gradient step] rank 0 after %.3f s: %s\n", elapsed, sentence.c_str());
      EXPECT_EQ(da_grad_synchronize(grad.g), DA_STATUS_COMM_ERROR);
    }
    EXPECT_EQ(da_comm_destroy(c.comm), DA_STATUS_COMM_ERROR);
    c.comm = nullptr;
  });
}

// Last, as the least predictable: MismatchedOperation's disagreement as the first
// collective of a fresh clique, where NCCL sets up different connections on different
// ranks while the signature check runs. The contract asks for an error on every rank
// in bounded time; which error is printed.
TEST(NcclMultiFailure, OperationMismatchOnAFreshCliqueEndsInAnErrorOnEveryRank) {
  REQUIRE_GPUS();
  Latch answered(g_ranks);
  run_clique(g_ranks, comm_config(kFailTimeoutMs), [&](Rank& c) {
    DeviceBuffer a(4096), b(4096 * kMaxRanks);
    const double start = now_s();
    da_status st = c.rank == 0 ? da_comm_allgather(c.comm, a.p, b.p, 10, DA_DTYPE_F32)
                               : da_comm_allreduce(c.comm, a.p, b.p, 10, DA_DTYPE_F32, DA_COMM_SUM);
    if (st == DA_STATUS_SUCCESS) st = da_comm_synchronize(c.comm);
    const double elapsed = now_s() - start;
    answered.count_down();
    EXPECT_TRUE(answered.wait_for(4 * fail_bound_s())) << "rank " << c.rank << ": a peer did not answer";
    EXPECT_TRUE(st == DA_STATUS_INVALID_ARGUMENT || st == DA_STATUS_COMM_ERROR)
        << "rank " << c.rank << ": " << da_status_string(st) << ": " << da_last_error();
    EXPECT_LE(elapsed, fail_bound_s()) << "rank " << c.rank;
    printf("[fresh clique, operation mismatch] rank %d after %.3f s: %s: %s\n", c.rank, elapsed, da_status_string(st),
           da_last_error());
    if (st != DA_STATUS_SUCCESS) {
      da_comm_destroy(c.comm);
      c.comm = nullptr;
    }
  });
}

// --- Watchdog ------------------------------------------------------------------------------------

// Ends the process when a test runs past its bound: a hang in a collective must be a
// failure, not a stuck job. State lives on the heap, never freed, so the detached
// thread never sees it destroyed at exit.
struct WatchdogState {
  std::mutex m;
  std::condition_variable cv;
  double deadline = 0;  // 0: no test running
  std::string test;
};

class Watchdog : public ::testing::EmptyTestEventListener {
 public:
  Watchdog(WatchdogState* s, double limit_s) : s_(s), limit_s_(limit_s) {
    std::thread([s, limit_s] {
      std::unique_lock<std::mutex> g(s->m);
      for (;;) {
        s->cv.wait_for(g, std::chrono::milliseconds(200));
        if (s->deadline > 0 && now_s() > s->deadline) {
          fprintf(stderr, "\nnccl_multi_test: %s still running after %.0f s: a hang; ending the process\n",
                  s->test.c_str(), limit_s);
          fflush(stdout);
          fflush(stderr);
          _exit(3);
        }
      }
    }).detach();
  }
  void OnTestStart(const ::testing::TestInfo& info) override {
    std::lock_guard<std::mutex> g(s_->m);
    s_->test = std::string(info.test_suite_name()) + "." + info.name();
    s_->deadline = now_s() + limit_s_;
  }
  void OnTestEnd(const ::testing::TestInfo&) override {
    std::lock_guard<std::mutex> g(s_->m);
    s_->deadline = 0;
  }

 private:
  WatchdogState* s_;
  double limit_s_;
};

WatchdogState* g_watchdog_state = nullptr;  // reachable: not a leak

}  // namespace

int main(int argc, char** argv) {
  // Before any CUDA or NCCL call. NVLink SHARP (NVLS) needs multicast objects the
  // device machines must not create. Lazy module loading takes a context lock while it
  // waits for the device to drain, which can stall one rank's first kernel behind a
  // peer's collective in a one-process clique: load modules eagerly unless told.
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  setenv("CUDA_MODULE_LOADING", "EAGER", 0);
  ::testing::InitGoogleTest(&argc, argv);
  int count = 0;
  if (da_device_count(&count) != DA_STATUS_SUCCESS) {
    g_skip_reason = std::string("needs 2 GPUs; none here (") + da_last_error() + ")";
  } else if (count < 2) {
    g_skip_reason = "needs 2 GPUs; " + std::to_string(count) + " visible";
  }
  g_ranks = std::min(count, kMaxRanks);
  if (g_ranks >= 2) {
    int version = 0;
    ncclGetVersion(&version);
    printf(
        "nccl_multi_test: %d ranks (threads) on GPUs 0..%d of %d, NCCL %d, NCCL_NVLS_ENABLE=%s, "
        "CUDA_MODULE_LOADING=%s\n",
        g_ranks, g_ranks - 1, count, version, getenv("NCCL_NVLS_ENABLE"), getenv("CUDA_MODULE_LOADING"));
  }
  const char* limit = getenv("DA_TEST_WATCHDOG_S");
  g_watchdog_state = new WatchdogState;
  ::testing::UnitTest::GetInstance()->listeners().Append(
      new Watchdog(g_watchdog_state, limit && atof(limit) > 0 ? atof(limit) : 180.0));
  return RUN_ALL_TESTS();
}
