// da_attention_forward_cuda / da_attention_backward_cuda (bf16 and fp16 device
// tensors, fp32 lse) against the float32 CPU passes run on the same inputs: q, k,
// v and dout are rounded to the 16-bit type on the host, the GPU gets the 16-bit
// encodings and the CPU their exact float values. Judged by relative L2 error
// (test_util's RelativeL2): out, lse, dq, dk, dv within 1e-2 (bf16) or 5e-3
// (fp16), dq and dk against a floored norm (test_util's GradientFloors); lse -inf and out rows exactly 0 where no pattern covers a query; every
// output poisoned (0xFF bytes, NaN in all three types) before each run, so an
// unwritten element fails. The CPU backward gets the CPU forward's out and lse,
// the GPU backward the GPU forward's. Also: bitwise determinism across runs and
// streams, inputs left alone, the error statuses, and da_attention_cuda_supported
// agreeing with the passes. On sm_90 the Hopper forward runs by default; the
// Portable cases rerun checks with DA_CUDA_PORTABLE=1 (the sm_80 kernels).
//
// Every GPU case skips, saying why, without a GPU. The CudaAttentionSmall cases
// (sequences of <= 300 tokens, a few configs) are the compute-sanitizer subset:
// --gtest_filter=*Small*. Iteration counts scale with DA_TEST_SCALE.
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "attention/dilated_attention.h"
#include "device/da_device.h"
#include "mempool/da_mempool.h"
#include "tests/attention/test_util.h"

namespace {

using da_test::Chosen;
using da_test::Config;

// The kernels need sm_80 (bf16 tensor cores); an older GPU is skipped, not failed.
#define REQUIRE_GPU()                                                                  \
  do {                                                                                 \
    int count_ = 0;                                                                    \
    if (da_device_count(&count_) != DA_STATUS_SUCCESS || count_ == 0)                  \
      GTEST_SKIP() << "no GPU here (" << da_last_error() << ")";                      \
    da_device_info info_;                                                              \
    ASSERT_EQ(da_device_query(0, &info_), DA_STATUS_SUCCESS) << da_last_error();       \
    if (info_.sm_major < 8)                                                            \
      GTEST_SKIP() << info_.name << " is sm_" << info_.sm_major << info_.sm_minor      \
                   << "; the CUDA passes need sm_80 or newer";                        \
  } while (0)

constexpr da_dtype kDtypes[] = {DA_DTYPE_BF16, DA_DTYPE_F16};

// Relative L2 tolerance against the float32 reference on the same inputs. The
// GPU rounds out (and P, dS on the way to the tensor cores) to the 16-bit type:
// unit roundoff 2^-9 (bf16) or 2^-11 (fp16), so errors of ~2e-3 / ~5e-4 are
// expected; the bounds leave a factor ~5 without hiding a lost pattern or a
// wrong mask (those are off by O(1)).
double Tolerance(da_dtype dtype) { return dtype == DA_DTYPE_BF16 ? 1e-2 : 5e-3; }

bool CudaOk(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return true;
  ADD_FAILURE() << what << ": " << cudaGetErrorName(error) << ": " << cudaGetErrorString(error);
  return false;
}

// 16-bit conversions (round to nearest even) come from the library itself.
std::vector<float> Decode(const std::vector<uint16_t>& bits, da_dtype dtype) {
  std::vector<float> x(bits.size());
  EXPECT_EQ(da_convert_to_f32(dtype, bits.data(), x.data(), x.size()), DA_STATUS_SUCCESS);
  return x;
}

// Rounds x to dtype in place (x then holds exactly what the GPU sees) and
// returns the encodings.
std::vector<uint16_t> RoundInPlace(std::vector<float>& x, da_dtype dtype) {
  std::vector<uint16_t> bits(x.size());
  EXPECT_EQ(da_convert_from_f32(dtype, x.data(), bits.data(), x.size()), DA_STATUS_SUCCESS);
  x = Decode(bits, dtype);
  return bits;
}

// cudaMalloc'd bytes, freed on scope exit.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  bool Allocate(size_t bytes) {
    Reset();
    if (!CudaOk(cudaMalloc(&ptr_, std::max<size_t>(bytes, 1)), "cudaMalloc")) {
      ptr_ = nullptr;
      return false;
    }
    bytes_ = bytes;
    return true;
  }
  void Reset() {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  void* get() const { return ptr_; }
  float* f32() const { return static_cast<float*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// One config in one dtype: random inputs rounded to the dtype (host floats, what
// the CPU gets, and encodings, what the GPU gets) and a device buffer per tensor.
struct GpuProblem {
  Config c;
  da_dtype dtype = DA_DTYPE_BF16;
  std::vector<float> q, k, v, dout;
  std::vector<uint16_t> q16, k16, v16, dout16;
  DeviceBuffer d_q, d_k, d_v, d_dout, d_out, d_lse, d_dq, d_dk, d_dv;
};

// False after a reported failure.
bool MakeProblem(const Config& c, da_dtype dtype, std::mt19937_64& rng, GpuProblem* p) {
  p->c = c;
  p->dtype = dtype;
  da_test::Inputs in = da_test::RandomInputs(rng, c);
  p->q = std::move(in.q);
  p->k = std::move(in.k);
  p->v = std::move(in.v);
  p->dout = da_test::RandomTensor(rng, c.QElems());
  p->q16 = RoundInPlace(p->q, dtype);
  p->k16 = RoundInPlace(p->k, dtype);
  p->v16 = RoundInPlace(p->v, dtype);
  p->dout16 = RoundInPlace(p->dout, dtype);
  const size_t q_bytes = c.QElems() * sizeof(uint16_t);
  const size_t kv_bytes = c.KvElems() * sizeof(uint16_t);
  return p->d_q.Allocate(q_bytes) && p->d_k.Allocate(kv_bytes) && p->d_v.Allocate(kv_bytes) &&
         p->d_dout.Allocate(q_bytes) && p->d_out.Allocate(q_bytes) &&
         p->d_lse.Allocate(c.LseElems() * sizeof(float)) && p->d_dq.Allocate(q_bytes) &&
         p->d_dk.Allocate(kv_bytes) && p->d_dv.Allocate(kv_bytes);
}

struct GpuOutputs {
  da_status forward = DA_STATUS_INTERNAL_ERROR;   // stays so when not run
  da_status backward = DA_STATUS_INTERNAL_ERROR;
  std::string error;                               // da_last_error() of a failed pass
  std::vector<uint16_t> out, dq, dk, dv;           // as the GPU wrote them
  std::vector<float> lse;
  bool copied = false;  // every transfer and the final synchronisation succeeded
};

bool Upload(const DeviceBuffer& d, const std::vector<uint16_t>& h, cudaStream_t s,
            const char* what) {
  return CudaOk(cudaMemcpyAsync(d.get(), h.data(), d.bytes(), cudaMemcpyHostToDevice, s), what);
}

template <typename T>
bool Download(std::vector<T>* h, const DeviceBuffer& d, cudaStream_t s, const char* what) {
  h->resize(d.bytes() / sizeof(T));
  return CudaOk(cudaMemcpyAsync(h->data(), d.get(), d.bytes(), cudaMemcpyDeviceToHost, s), what);
}

bool Poison(const DeviceBuffer& d, cudaStream_t s) {
  return CudaOk(cudaMemsetAsync(d.get(), 0xFF, d.bytes(), s), "poisoning an output");
}

// Poisons every output, uploads the inputs, runs the forward (and the backward)
// on `stream` and copies the results back, all ordered on `stream`: the host
// waits once, at the end. with_lse = false gives the forward lse = NULL (and runs
// no backward, which needs it). Also checks the passes left the inputs alone.
GpuOutputs RunGpu(GpuProblem& p, cudaStream_t stream, bool backward, bool with_lse = true) {
  GpuOutputs r;
  const da_attention_params params = p.c.Params();
  const da_attention_batch batch = p.c.Batch();
  bool ok = Upload(p.d_q, p.q16, stream, "upload q") && Upload(p.d_k, p.k16, stream, "upload k") &&
            Upload(p.d_v, p.v16, stream, "upload v") &&
            Upload(p.d_dout, p.dout16, stream, "upload dout") && Poison(p.d_out, stream) &&
            Poison(p.d_lse, stream) && Poison(p.d_dq, stream) && Poison(p.d_dk, stream) &&
            Poison(p.d_dv, stream);
  if (!ok) return r;
  r.forward = da_attention_forward_cuda(&params, &batch, p.dtype, p.d_q.get(), p.d_k.get(),
                                        p.d_v.get(), p.d_out.get(),
                                        with_lse ? p.d_lse.f32() : nullptr, stream);
  if (r.forward != DA_STATUS_SUCCESS) r.error = da_last_error();
  const bool run_backward = backward && with_lse && r.forward == DA_STATUS_SUCCESS;
  if (run_backward) {
    r.backward = da_attention_backward_cuda(
        &params, &batch, p.dtype, p.d_q.get(), p.d_k.get(), p.d_v.get(), p.d_out.get(),
        p.d_lse.f32(), p.d_dout.get(), p.d_dq.get(), p.d_dk.get(), p.d_dv.get(), stream);
    if (r.backward != DA_STATUS_SUCCESS) r.error = da_last_error();
  }
  std::vector<uint16_t> q_after, k_after, v_after, dout_after;
  ok = Download(&r.out, p.d_out, stream, "download out") &&
       Download(&r.lse, p.d_lse, stream, "download lse") &&
       Download(&q_after, p.d_q, stream, "download q") &&
       Download(&k_after, p.d_k, stream, "download k") &&
       Download(&v_after, p.d_v, stream, "download v") &&
       Download(&dout_after, p.d_dout, stream, "download dout");
  if (ok && run_backward)
    ok = Download(&r.dq, p.d_dq, stream, "download dq") &&
         Download(&r.dk, p.d_dk, stream, "download dk") &&
         Download(&r.dv, p.d_dv, stream, "download dv");
  // A fault inside a kernel surfaces here.
  r.copied = ok && CudaOk(cudaStreamSynchronize(stream), "cudaStreamSynchronize after the passes");
  if (r.copied && (q_after != p.q16 || k_after != p.k16 || v_after != p.v16 ||
                   dout_after != p.dout16))
    ADD_FAILURE() << "the CUDA passes modified their inputs\n  config: " << p.c.Describe();
  return r;
}

struct CpuReference {
  da_test::CpuOutputs forward;
  da_test::CpuGrads grads;
};

// The float32 CPU passes on the rounded inputs.
CpuReference RunCpu(const GpuProblem& p, bool backward) {
  da_test::Inputs in;
  in.q = p.q;
  in.k = p.k;
  in.v = p.v;
  CpuReference r;
  if (backward)
    r.grads = da_test::CpuBackward(p.c, in, p.dout, &r.forward);
  else
    r.forward = da_test::CpuForward(p.c, in);
  return r;
}

constexpr int kTensors = 5;
const char* const kTensorNames[kTensors] = {"out", "lse", "dq", "dk", "dv"};

// The largest relative L2 error seen per dtype and tensor, printed at the end of
// a test so the log shows how much of the tolerance is used.
class WorstErrors {
 public:
  void Note(da_dtype dtype, int tensor, double rel, const Config& c) {
    Entry& e = entries_[dtype == DA_DTYPE_BF16 ? 0 : 1][tensor];
    if (rel <= e.rel) return;
    e.rel = rel;
    e.config = c.Describe();
  }
  void Print(const char* what) const {
    for (int t = 0; t < 2; t++) {
      const da_dtype dtype = kDtypes[t];
      printf("%s, %s: worst relative L2 error (tolerance %.0e):", what, da_dtype_name(dtype),
             Tolerance(dtype));
      int worst = 0;
      for (int i = 0; i < kTensors; i++) {
        printf(" %s %.3g", kTensorNames[i], entries_[t][i].rel);
        if (entries_[t][i].rel > entries_[t][worst].rel) worst = i;
      }
      printf("\n  worst (%s) at %s\n", kTensorNames[worst], entries_[t][worst].config.c_str());
    }
    fflush(stdout);
  }

 private:
  struct Entry {
    double rel = 0.0;
    std::string config = "(none)";
  };
  Entry entries_[2][kTensors];
};

// The GPU's results against the CPU reference (see the top of the file). Each
// broken rule is reported with the dtype and config; returns whether all held.
bool ExpectMatchesCpu(const GpuProblem& p, const GpuOutputs& got, const CpuReference& ref,
                      bool backward, WorstErrors* worst) {
  const Config& c = p.c;
  const std::string where =
      std::string("\n  dtype ") + da_dtype_name(p.dtype) + ", config: " + c.Describe();
  if (got.forward != DA_STATUS_SUCCESS) {
    ADD_FAILURE() << "da_attention_forward_cuda: " << da_status_string(got.forward) << ": "
                  << got.error << where;
    return false;
  }
  if (backward && got.backward != DA_STATUS_SUCCESS) {
    ADD_FAILURE() << "da_attention_backward_cuda: " << da_status_string(got.backward) << ": "
                  << got.error << where;
    return false;
  }
  if (!got.copied) return false;  // already reported
  const double tol = Tolerance(p.dtype);
  bool ok = true;
  auto expect = [&](const ::testing::AssertionResult& r) {
    if (!r) {
      ADD_FAILURE() << r.message() << where;
      ok = false;
    }
  };
  double rel[kTensors] = {0.0, 0.0, 0.0, 0.0, 0.0};
  const std::vector<float> out = Decode(got.out, p.dtype);
  expect(da_test::RelativeL2Close("out", out.data(), ref.forward.out.data(), out.size(), tol,
                                  0.0, &rel[0]));
  expect(da_test::LseRelativeL2Close(got.lse.data(), ref.forward.lse.data(), got.lse.size(), tol,
                                     &rel[1]));
  // Uncovered queries: exactly 0 (the semantics' zero fill), not merely small.
  for (size_t row = 0; row < ref.forward.lse.size(); row++) {
    if (!std::isinf(ref.forward.lse[row])) continue;
    bool zero = true;
    for (int x = 0; x < c.d; x++) zero = zero && out[row * c.d + x] == 0.0f;
    if (!zero) {
      expect(::testing::AssertionFailure()
             << "out row " << row << " (token " << row / c.h << ", head " << row % c.h
             << ") is not 0 for a query no pattern covers");
      break;
    }
  }
  if (backward) {
    const std::vector<float> dq = Decode(got.dq, p.dtype);
    const std::vector<float> dk = Decode(got.dk, p.dtype);
    const std::vector<float> dv = Decode(got.dv, p.dtype);
    const da_test::GradFloors floor = da_test::GradientFloors(c, p.q, p.k, ref.grads.dv);
    expect(da_test::RelativeL2Close("dq", dq.data(), ref.grads.dq.data(), dq.size(), tol,
                                    floor.dq, &rel[2]));
    expect(da_test::RelativeL2Close("dk", dk.data(), ref.grads.dk.data(), dk.size(), tol,
                                    floor.dk, &rel[3]));
    expect(da_test::RelativeL2Close("dv", dv.data(), ref.grads.dv.data(), dv.size(), tol, 0.0,
                                    &rel[4]));
  }
  if (worst != nullptr)
    for (int i = 0; i < (backward ? kTensors : 2); i++) worst->Note(p.dtype, i, rel[i], c);
  return ok;
}

// The whole check of one config in one dtype: supported, forward + backward on
// `stream`, against the CPU. Returns whether it passed.
bool CheckConfig(const Config& c, da_dtype dtype, std::mt19937_64& rng, WorstErrors* worst,
                 cudaStream_t stream = nullptr) {
  const da_attention_params params = c.Params();
  const da_status supported = da_attention_cuda_supported(&params, dtype);
  if (supported != DA_STATUS_SUCCESS) {
    ADD_FAILURE() << "da_attention_cuda_supported: " << da_status_string(supported) << ": "
                  << da_last_error() << "\n  dtype " << da_dtype_name(dtype)
                  << ", config: " << c.Describe();
    return false;
  }
  GpuProblem p;
  if (!MakeProblem(c, dtype, rng, &p)) return false;
  const GpuOutputs got = RunGpu(p, stream, /*backward=*/true);
  const CpuReference ref = RunCpu(p, /*backward=*/true);
  return ExpectMatchesCpu(p, got, ref, /*backward=*/true, worst);
}

// test_util's generator narrowed to the head dims the kernels serve.
da_test::ConfigSpace CudaSpace(int long_seqlen_max) {
  da_test::ConfigSpace space;
  space.head_dims = {32, 64, 96, 128};
  space.long_seqlen_max = long_seqlen_max;
  return space;
}

Config WithCausal(Config c, int causal) {
  c.causal = causal;
  return c;
}

// Cases every run covers whatever the random draws; `small` keeps sequences at
// <= 300 tokens for the sanitizer subset.
std::vector<Config> ChosenCases(bool small) {
  std::vector<Config> cases;
  if (small) {
    cases.push_back(Chosen({96, 200}, {3, 5}, 300, 4, 64));   // no r = 1: uncovered queries
    Config c = Chosen({32, 64, 128}, {1, 2, 4}, 257, 4, 128);  // MQA, ragged
    c.h_kv = 1;
    cases.push_back(c);
    c = Chosen({48, 100}, {1, 3}, 211, 8, 96);  // GQA, torchscale offsets
    c.h_kv = 2;
    c.offset = DA_OFFSET_BLOCK;
    cases.push_back(c);
    cases.push_back(Chosen({16, 64}, {4, 8}, 150, 2, 32));  // r > h
    c = Chosen({16, 64, 256}, {1, 2, 4}, 300, 5, 64);        // head groups of 2, 2, 1
    c.mode = DA_MODE_HEAD_GROUP;
    cases.push_back(c);
    c = Chosen({64, 128}, {1, 2}, 0, 4, 64);  // packed, empty sequences first and last
    c.batch = 5;
    c.cu = {0, 0, 130, 131, 290, 290};
    cases.push_back(c);
    c = Chosen({256}, {1}, 300, 2, 128);  // custom scale, large logits
    c.scale = 0.5f;
    c.q_magnitude = 10.0f;
    cases.push_back(c);
    cases.push_back(Chosen({1}, {1}, 1, 1, 32));                 // one token
    cases.push_back(Chosen({1, 7, 7}, {1, 7, 7}, 100, 3, 32));   // w = 1, a pattern twice
    c = Chosen({24, 24}, {3, 3}, 90, 5, 64);                     // fkodom offsets in LongNet
    c.offset = DA_OFFSET_GROUP;
    cases.push_back(c);
    cases.push_back(Chosen({512}, {2}, 200, 2, 96));  // w > n
    return cases;
  }
  cases.push_back(Chosen({96, 200}, {3, 5}, 1000, 8, 64));
  Config c = Chosen({64, 128, 256}, {1, 2, 4}, 777, 4, 128);
  c.h_kv = 1;
  cases.push_back(c);
  c = Chosen({100, 300}, {1, 3}, 450, 8, 96);
  c.h_kv = 2;
  cases.push_back(c);
  c = Chosen({128, 256, 512, 1024}, {1, 2, 4, 8}, 1500, 12, 64);  // 4 head groups of 3
  c.mode = DA_MODE_HEAD_GROUP;
  cases.push_back(c);
  c = Chosen({512, 1024}, {4, 8}, 1100, 6, 128);
  c.offset = DA_OFFSET_BLOCK;
  cases.push_back(c);
  c = Chosen({256, 512}, {1, 2}, 0, 4, 64);
  c.batch = 6;
  c.cu = {0, 0, 513, 514, 1800, 1800, 2300};
  cases.push_back(c);
  c = Chosen({1000, 250}, {1, 2}, 1000, 2, 128);  // logits in the tens over long segments
  c.q_magnitude = 10.0f;
  cases.push_back(c);
  c = Chosen({512}, {1}, 700, 4, 32);  // a tiny scale: nearly flat softmax
  c.scale = 0.05f;
  cases.push_back(c);
  c = Chosen({300, 600}, {3, 6}, 1000, 3, 96);
  c.offset = DA_OFFSET_HEAD;
  cases.push_back(c);
  return cases;
}

// batch sequences of 0..max_len tokens (the last one non-empty).
Config ManySequences(int64_t batch, int max_len, std::mt19937_64& rng) {
  Config c = Chosen({2, 4, 8}, {1, 2, 4}, 0, 2, 32);
  c.batch = batch;
  c.cu.assign(1, 0);
  for (int64_t s = 0; s < batch; s++) {
    const int len = s + 1 == batch ? da_test::UniformInt(rng, 1, max_len)
                                   : da_test::UniformInt(rng, 0, max_len);
    c.cu.push_back(c.cu.back() + len);
  }
  return c;
}

// The LongNet shape at GPU scale: n = 8192, h = 4, w = 512, 1024, 2048,
// r = 1, 2, 4.
Config LongNetCase(int d, int causal) {
  Config c = Chosen({512, 1024, 2048}, {1, 2, 4}, 8192, 4, d);
  c.causal = causal;
  return c;
}

// Sets an environment variable for a scope, restoring what was there.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = getenv(name);
    had_ = old != nullptr;
    if (had_) old_ = old;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_)
      setenv(name_, old_.c_str(), 1);
    else
      unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  bool had_ = false;
  std::string old_;
};

// DA_CUDA_PORTABLE=1 (dilated_attention.h): the mma.sync kernels (sm_80's path)
// even where the Hopper ones would run, so one H100 checks both.
constexpr const char* kPortableEnv = "DA_CUDA_PORTABLE";
constexpr const char* kForwardVariantEnv = "DA_CUDA_FWD_VARIANT";
constexpr const char* kBackwardVariantEnv = "DA_CUDA_BWD_VARIANT";
constexpr const char* kTmaEnv = "DA_CUDA_TMA";
constexpr const char* kConsumersEnv = "DA_CUDA_FWD_CONSUMERS";
constexpr const char* kPersistentEnv = "DA_CUDA_PERSISTENT";
constexpr const char* kCtasEnv = "DA_CUDA_CTAS";
constexpr const char* kCompactEnv = "DA_CUDA_COMPACT";

void ExpectBitIdentical(const GpuOutputs& a, const GpuOutputs& b, const std::string& what) {
  EXPECT_TRUE(a.out == b.out) << "out differs: " << what;
  EXPECT_EQ(memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)), 0)
      << "lse differs: " << what;
  EXPECT_TRUE(a.dq == b.dq) << "dq differs: " << what;
  EXPECT_TRUE(a.dk == b.dk) << "dk differs: " << what;
  EXPECT_TRUE(a.dv == b.dv) << "dv differs: " << what;
}

// ---------------------------------------------------------------------------
// The sanitizer subset (names contain "Small").

TEST(CudaAttentionSmall, MatchesCpuOnRandomConfigs) {
  REQUIRE_GPU();
  std::mt19937_64 rng(0x5eed0c01);
  const da_test::ConfigSpace space = CudaSpace(300);
  const int configs = da_test::ScaledCount(6);
  WorstErrors worst;
  int failures = 0;
  for (int i = 0; i < configs && failures < 3; i++) {
    const Config c = da_test::RandomConfig(rng, 3e5, space);
    for (da_dtype dtype : kDtypes) failures += !CheckConfig(c, dtype, rng, &worst);
  }
  worst.Print("small random configs");
}

// Causal alternates over the cases (the full run takes both of every case), so
// the sanitizers' slowed-down kernels get through in time.
TEST(CudaAttentionSmall, MatchesCpuOnChosenCases) {
  REQUIRE_GPU();
  std::mt19937_64 rng(0x5eed0c02);
  WorstErrors worst;
  const std::vector<Config> cases = ChosenCases(/*small=*/true);
  for (size_t i = 0; i < cases.size(); i++)
    for (da_dtype dtype : kDtypes)
      CheckConfig(WithCausal(cases[i], static_cast<int>(i % 2)), dtype, rng, &worst);
  worst.Print("small chosen cases");
}

TEST(CudaAttentionSmall, PortableKernelsMatchCpuOnChosenCases) {
  REQUIRE_GPU();
  ScopedEnv portable(kPortableEnv, "1");
  std::mt19937_64 rng(0x5eed0c06);
  WorstErrors worst;
  const std::vector<Config> cases = ChosenCases(/*small=*/true);
  for (size_t i = 0; i < cases.size(); i++)
    CheckConfig(WithCausal(cases[i], static_cast<int>((i + 1) % 2)), kDtypes[i % 2], rng, &worst);
  worst.Print("small chosen cases, DA_CUDA_PORTABLE=1");
}

// The other Hopper kernels (the defaults ran above): DA_CUDA_FWD_VARIANT 1
// (warp-specialized forward without ping-pong) and 2 (one-role forward),
// DA_CUDA_BWD_VARIANT 1 (one-role dQ and dK/dV), DA_CUDA_TMA=0 (the
// warp-specialized forward's tiles all by cp.async), DA_CUDA_FWD_CONSUMERS 2
// and 3 (the d = 64 forward with two consumer warpgroups and 128-key tiles, or
// three and 64-key tiles, whichever the case would not pick by itself),
// DA_CUDA_PERSISTENT=0 (the forward and backward with one CTA a work item) and
// DA_CUDA_CTAS=3 (the persistent forward and backward on three CTAs, so each
// takes many work items, empty ones and ragged ones among them, across its Q
// or own-row buffers: two at d = 64, one at d = 128; with one CTA an SM the
// small cases have too few items) and DA_CUDA_COMPACT=0 (CTAs for every
// residue, no rows left to zero; the default path leaves them to the Hopper
// kernels' producers, and zero_unselected_kernel before the others). On
// other GPUs the variables are ignored and these repeat the portable path.
TEST(CudaAttentionSmall, OtherHopperKernelsMatchCpuOnChosenCases) {
  REQUIRE_GPU();
  const std::pair<const char*, const char*> variants[] = {{kForwardVariantEnv, "1"},
                                                          {kForwardVariantEnv, "2"},
                                                          {kBackwardVariantEnv, "1"},
                                                          {kTmaEnv, "0"},
                                                          {kConsumersEnv, "2"},
                                                          {kConsumersEnv, "3"},
                                                          {kPersistentEnv, "0"},
                                                          {kCtasEnv, "3"},
                                                          {kCompactEnv, "0"}};
  for (const auto& [name, value] : variants) {
    ScopedEnv env(name, value);
    std::mt19937_64 rng(0x5eed0c07);
    WorstErrors worst;
    const std::vector<Config> cases = ChosenCases(/*small=*/true);
    for (size_t i = 0; i < cases.size(); i++)
      CheckConfig(WithCausal(cases[i], static_cast<int>(i % 2)), kDtypes[(i + 1) % 2], rng,
                  &worst);
    worst.Print((std::string("small chosen cases, ") + name + "=" + value).c_str());
  }
}

// More sequences than travel in the launch parameters (DA_CUDA_MAX_INLINE_SEQS):
// cu_seqlens goes to the device by a copy. Both sides of the boundary, empty
// sequences included.
TEST(CudaAttentionSmall, MoreSequencesThanTheLaunchCarries) {
  REQUIRE_GPU();
  std::mt19937_64 rng(0x5eed0c03);
  WorstErrors worst;
  for (int64_t batch : {int64_t{DA_CUDA_MAX_INLINE_SEQS}, int64_t{DA_CUDA_MAX_INLINE_SEQS + 1},
                        int64_t{300}}) {
    Config c = ManySequences(batch, 5, rng);
    c.causal = batch % 2 == 1;
    for (da_dtype dtype : kDtypes) CheckConfig(c, dtype, rng, &worst);
  }
  worst.Print("many small sequences");
}

// The same problem on the legacy default stream, a cudaStreamCreate stream and a
// non-blocking stream (which the legacy stream does not order): correct on each
// and bitwise identical across them and across repeated runs.
TEST(CudaAttentionSmall, BitIdenticalAcrossRunsAndStreams) {
  REQUIRE_GPU();
  std::mt19937_64 rng(0x5eed0c04);
  Config c = Chosen({32, 64, 128}, {1, 2, 4}, 0, 6, 64);
  c.h_kv = 2;
  c.causal = 1;
  c.batch = 3;
  c.cu = {0, 100, 100, 290};
  cudaStream_t created = nullptr, non_blocking = nullptr;
  ASSERT_TRUE(CudaOk(cudaStreamCreate(&created), "cudaStreamCreate"));
  ASSERT_TRUE(CudaOk(cudaStreamCreateWithFlags(&non_blocking, cudaStreamNonBlocking),
                     "cudaStreamCreateWithFlags"));
  for (da_dtype dtype : kDtypes) {
    SCOPED_TRACE(da_dtype_name(dtype));
    GpuProblem p;
    ASSERT_TRUE(MakeProblem(c, dtype, rng, &p));
    const CpuReference ref = RunCpu(p, true);
    const GpuOutputs first = RunGpu(p, nullptr, true);
    ASSERT_TRUE(ExpectMatchesCpu(p, first, ref, true, nullptr));
    const GpuOutputs again = RunGpu(p, nullptr, true);
    ExpectBitIdentical(first, again, "second run, legacy default stream");
    for (cudaStream_t stream : {created, non_blocking}) {
      const std::string what = stream == created ? "cudaStreamCreate stream"
                                                 : "cudaStreamNonBlocking stream";
      const GpuOutputs on_stream = RunGpu(p, stream, true);
      EXPECT_TRUE(ExpectMatchesCpu(p, on_stream, ref, true, nullptr)) << what;
      ExpectBitIdentical(first, on_stream, what);
    }
  }
  // The passes took workspace from the default pool on these streams.
  da_mempool* pool = nullptr;
  int device = 0;
  ASSERT_TRUE(CudaOk(cudaGetDevice(&device), "cudaGetDevice"));
  ASSERT_EQ(da_mempool_default(device, &pool), DA_STATUS_SUCCESS) << da_last_error();
  for (cudaStream_t stream : {created, non_blocking}) {
    EXPECT_EQ(da_mempool_release_stream(pool, stream), DA_STATUS_SUCCESS) << da_last_error();
    EXPECT_TRUE(CudaOk(cudaStreamDestroy(stream), "cudaStreamDestroy"));
  }
}

TEST(CudaAttentionSmall, NullLseGivesTheSameOutput) {
  REQUIRE_GPU();
  std::mt19937_64 rng(0x5eed0c05);
  for (const Config& c : {Chosen({96, 200}, {3, 5}, 300, 4, 64),
                          WithCausal(Chosen({64, 128}, {1, 2}, 250, 2, 128), 1)}) {
    for (da_dtype dtype : kDtypes) {
      SCOPED_TRACE(std::string(da_dtype_name(dtype)) + " " + c.Describe());
      GpuProblem p;
      ASSERT_TRUE(MakeProblem(c, dtype, rng, &p));
      const GpuOutputs with_lse = RunGpu(p, nullptr, /*backward=*/false);
      const GpuOutputs without = RunGpu(p, nullptr, /*backward=*/false, /*with_lse=*/false);
      ASSERT_EQ(with_lse.forward, DA_STATUS_SUCCESS) << with_lse.error;
      ASSERT_EQ(without.forward, DA_STATUS_SUCCESS) << without.error;
      EXPECT_TRUE(with_lse.out == without.out);
    }
  }
}

// Device buffers for one call of a config (bytes per element given), poisoned.
struct CallBuffers {
  DeviceBuffer q, k, v, out, lse, dout, dq, dk, dv;
  bool Allocate(const Config& c, size_t element_bytes) {
    const size_t qb = c.QElems() * element_bytes, kvb = c.KvElems() * element_bytes;
    return q.Allocate(qb) && k.Allocate(kvb) && v.Allocate(kvb) && out.Allocate(qb) &&
           lse.Allocate(c.LseElems() * sizeof(float)) && dout.Allocate(qb) && dq.Allocate(qb) &&
           dk.Allocate(kvb) && dv.Allocate(kvb) &&
           CudaOk(cudaMemset(q.get(), 0, qb), "cudaMemset") &&
           CudaOk(cudaMemset(k.get(), 0, kvb), "cudaMemset") &&
           CudaOk(cudaMemset(v.get(), 0, kvb), "cudaMemset") &&
           CudaOk(cudaMemset(dout.get(), 0, qb), "cudaMemset");
  }
};

// The pointer arguments of both passes, replaceable one at a time.
struct PassArgs {
  const void *q, *k, *v;
  void* out;
  float* lse;
  const void* dout;
  void *dq, *dk, *dv;
  explicit PassArgs(const CallBuffers& b)
      : q(b.q.get()), k(b.k.get()), v(b.v.get()), out(b.out.get()), lse(b.lse.f32()),
        dout(b.dout.get()), dq(b.dq.get()), dk(b.dk.get()), dv(b.dv.get()) {}
};

da_status Forward(const Config& c, da_dtype dtype, const PassArgs& a) {
  const da_attention_params params = c.Params();
  const da_attention_batch batch = c.Batch();
  return da_attention_forward_cuda(&params, &batch, dtype, a.q, a.k, a.v, a.out, a.lse, nullptr);
}

da_status Backward(const Config& c, da_dtype dtype, const PassArgs& a) {
  const da_attention_params params = c.Params();
  const da_attention_batch batch = c.Batch();
  return da_attention_backward_cuda(&params, &batch, dtype, a.q, a.k, a.v, a.out, a.lse, a.dout,
                                    a.dq, a.dk, a.dv, nullptr);
}

// status, and a sentence in da_last_error() (read before anything else runs).
::testing::AssertionResult Fails(da_status got, da_status want) {
  const std::string message = da_last_error();
  if (got != want)
    return ::testing::AssertionFailure() << "returned " << da_status_string(got) << " ("
                                         << message << "), want " << da_status_string(want);
  if (message.empty())
    return ::testing::AssertionFailure() << da_status_string(got) << " with no sentence";
  return ::testing::AssertionSuccess();
}

// Head dims and dtypes outside the kernels' set: NOT_SUPPORTED from both passes
// and from da_attention_cuda_supported, never a launch; the set itself is
// supported.
TEST(CudaAttentionSmall, UnsupportedHeadDimsAndDtypes) {
  REQUIRE_GPU();
  for (int d : {32, 64, 96, 128}) {
    const Config c = Chosen({64}, {1}, 128, 2, d);  // owns the lists params borrows
    const da_attention_params params = c.Params();
    for (da_dtype dtype : kDtypes)
      EXPECT_EQ(da_attention_cuda_supported(&params, dtype), DA_STATUS_SUCCESS)
          << "d=" << d << " " << da_dtype_name(dtype) << ": " << da_last_error();
  }
  struct Case {
    int d;
    da_dtype dtype;
  };
  for (Case k : {Case{80, DA_DTYPE_BF16}, Case{256, DA_DTYPE_F16}, Case{16, DA_DTYPE_BF16},
                 Case{64, DA_DTYPE_F32}, Case{64, DA_DTYPE_F64}}) {
    SCOPED_TRACE("head_dim " + std::to_string(k.d) + ", dtype " + da_dtype_name(k.dtype));
    const Config c = Chosen({64}, {1}, 128, 2, k.d);
    const da_attention_params params = c.Params();
    CallBuffers b;
    ASSERT_TRUE(b.Allocate(c, da_dtype_size(k.dtype)));
    const PassArgs a(b);
    EXPECT_TRUE(Fails(da_attention_cuda_supported(&params, k.dtype), DA_STATUS_NOT_SUPPORTED));
    EXPECT_TRUE(Fails(Forward(c, k.dtype, a), DA_STATUS_NOT_SUPPORTED));
    EXPECT_TRUE(Fails(Backward(c, k.dtype, a), DA_STATUS_NOT_SUPPORTED));
  }
  EXPECT_TRUE(CudaOk(cudaDeviceSynchronize(), "cudaDeviceSynchronize"));
}

// A NULL or host pointer in any tensor argument, NULL params or batch, and NULL
// lse in the backward: INVALID_ARGUMENT with a sentence. Then a good call still
// works (nothing sticky).
TEST(CudaAttentionSmall, BadPointers) {
  REQUIRE_GPU();
  const Config c = Chosen({64, 128}, {1, 2}, 200, 2, 64);
  const da_attention_params params = c.Params();
  const da_attention_batch batch = c.Batch();
  const da_dtype dtype = DA_DTYPE_BF16;
  CallBuffers b;
  ASSERT_TRUE(b.Allocate(c, 2));
  std::vector<uint16_t> host(c.QElems() + c.KvElems());  // pageable host memory
  std::vector<float> host_lse(c.LseElems());
  const PassArgs good(b);
  ASSERT_EQ(Forward(c, dtype, good), DA_STATUS_SUCCESS) << da_last_error();

  // The tensor arguments of both passes, by name: a pointer to each slot.
  struct Slot {
    const char* name;
    bool forward;  // also an argument of the forward
    void* PassArgs::*mutable_ptr;
    const void* PassArgs::*const_ptr;
  };
  const Slot slots[] = {{"q", true, nullptr, &PassArgs::q},
                        {"k", true, nullptr, &PassArgs::k},
                        {"v", true, nullptr, &PassArgs::v},
                        {"out", true, &PassArgs::out, nullptr},
                        {"dout", false, nullptr, &PassArgs::dout},
                        {"dq", false, &PassArgs::dq, nullptr},
                        {"dk", false, &PassArgs::dk, nullptr},
                        {"dv", false, &PassArgs::dv, nullptr}};
  for (const Slot& slot : slots) {
    for (void* bad : {static_cast<void*>(nullptr), static_cast<void*>(host.data())}) {
      SCOPED_TRACE(std::string(slot.name) + (bad ? " on the host" : " NULL"));
      PassArgs a = good;
      if (slot.mutable_ptr != nullptr)
        a.*slot.mutable_ptr = bad;
      else
        a.*slot.const_ptr = bad;
      if (slot.forward) {
        EXPECT_TRUE(Fails(Forward(c, dtype, a), DA_STATUS_INVALID_ARGUMENT));
      }
      EXPECT_TRUE(Fails(Backward(c, dtype, a), DA_STATUS_INVALID_ARGUMENT));
    }
  }
  for (float* bad_lse : {static_cast<float*>(nullptr), host_lse.data()}) {
    SCOPED_TRACE(bad_lse ? "lse on the host" : "lse NULL");
    PassArgs a = good;
    a.lse = bad_lse;
    if (bad_lse != nullptr) {
      EXPECT_TRUE(Fails(Forward(c, dtype, a), DA_STATUS_INVALID_ARGUMENT));
    }
    EXPECT_TRUE(Fails(Backward(c, dtype, a), DA_STATUS_INVALID_ARGUMENT));
  }
  EXPECT_TRUE(Fails(da_attention_forward_cuda(nullptr, &batch, dtype, good.q, good.k, good.v,
                                              good.out, good.lse, nullptr),
                    DA_STATUS_INVALID_ARGUMENT));
  EXPECT_TRUE(Fails(da_attention_forward_cuda(&params, nullptr, dtype, good.q, good.k, good.v,
                                              good.out, good.lse, nullptr),
                    DA_STATUS_INVALID_ARGUMENT));
  EXPECT_TRUE(Fails(da_attention_backward_cuda(nullptr, &batch, dtype, good.q, good.k, good.v,
                                               good.out, good.lse, good.dout, good.dq, good.dk,
                                               good.dv, nullptr),
                    DA_STATUS_INVALID_ARGUMENT));
  EXPECT_TRUE(Fails(da_attention_cuda_supported(nullptr, dtype), DA_STATUS_INVALID_ARGUMENT));
  EXPECT_EQ(Forward(c, dtype, good), DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_EQ(Backward(c, dtype, good), DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_TRUE(CudaOk(cudaDeviceSynchronize(), "cudaDeviceSynchronize"));
}

// Parameters da_attention_validate refuses: INVALID_ARGUMENT from both passes,
// and from da_attention_cuda_supported where the rule is about params alone.
TEST(CudaAttentionSmall, InvalidParams) {
  REQUIRE_GPU();
  const da_dtype dtype = DA_DTYPE_BF16;
  Config r_above_w = Chosen({4, 64}, {8, 1}, 100, 2, 64);  // r > w
  Config bad_gqa = Chosen({64}, {1}, 100, 4, 64);           // h % h_kv != 0
  bad_gqa.h_kv = 3;
  for (const Config& c : {r_above_w, bad_gqa}) {
    SCOPED_TRACE(c.Describe());
    const da_attention_params params = c.Params();
    Config sized = c;  // buffers as for a valid config of the same shape
    sized.h_kv = 0;
    CallBuffers b;
    ASSERT_TRUE(b.Allocate(sized, 2));
    const PassArgs a(b);
    EXPECT_TRUE(Fails(da_attention_cuda_supported(&params, dtype), DA_STATUS_INVALID_ARGUMENT));
    EXPECT_TRUE(Fails(Forward(c, dtype, a), DA_STATUS_INVALID_ARGUMENT));
    EXPECT_TRUE(Fails(Backward(c, dtype, a), DA_STATUS_INVALID_ARGUMENT));
  }
  // A batch rule: cu_seqlens must not decrease.
  Config bad_cu = Chosen({64}, {1}, 0, 2, 64);
  bad_cu.batch = 2;
  bad_cu.cu = {0, 80, 60};
  Config sized = bad_cu;
  sized.cu = {0, 80, 80};
  CallBuffers b;
  ASSERT_TRUE(b.Allocate(sized, 2));
  const PassArgs a(b);
  EXPECT_TRUE(Fails(Forward(bad_cu, dtype, a), DA_STATUS_INVALID_ARGUMENT));
  EXPECT_TRUE(Fails(Backward(bad_cu, dtype, a), DA_STATUS_INVALID_ARGUMENT));
  EXPECT_TRUE(CudaOk(cudaDeviceSynchronize(), "cudaDeviceSynchronize"));
}

// ---------------------------------------------------------------------------
// The full run.

TEST(CudaAttention, MatchesCpuOnRandomConfigs) {
  REQUIRE_GPU();
  std::mt19937_64 rng(0x5eed0c10);
  const da_test::ConfigSpace space = CudaSpace(1500);
  const int configs = da_test::ScaledCount(120);
  WorstErrors worst;
  int failures = 0;
  for (int i = 0; i < configs && failures < 5; i++) {
    const Config c = da_test::RandomConfig(rng, 2e7, space);
    for (da_dtype dtype : kDtypes) failures += !CheckConfig(c, dtype, rng, &worst);
  }
  char what[64];
  snprintf(what, sizeof what, "%d random configs", configs);
  worst.Print(what);
}

TEST(CudaAttention, MatchesCpuOnChosenCases) {
  REQUIRE_GPU();
  std::mt19937_64 rng(0x5eed0c11);
  WorstErrors worst;
  for (const Config& base : ChosenCases(/*small=*/false))
    for (int causal = 0; causal <= 1; causal++)
      for (da_dtype dtype : kDtypes) CheckConfig(WithCausal(base, causal), dtype, rng, &worst);
  worst.Print("chosen cases");
}

// The portable kernels over the chosen cases, random configs and the LongNet
// shape (on sm_90 the cases above ran the Hopper forward).
TEST(CudaAttention, PortableKernelsMatchCpu) {
  REQUIRE_GPU();
  ScopedEnv portable(kPortableEnv, "1");
  std::mt19937_64 rng(0x5eed0c15);
  WorstErrors worst;
  for (const Config& base : ChosenCases(/*small=*/false))
    for (int causal = 0; causal <= 1; causal++)
      for (da_dtype dtype : kDtypes) CheckConfig(WithCausal(base, causal), dtype, rng, &worst);
  const da_test::ConfigSpace space = CudaSpace(1500);
  const int configs = da_test::ScaledCount(40);
  int failures = 0;
  for (int i = 0; i < configs && failures < 5; i++) {
    const Config c = da_test::RandomConfig(rng, 2e7, space);
    for (da_dtype dtype : kDtypes) failures += !CheckConfig(c, dtype, rng, &worst);
  }
  for (int causal = 0; causal <= 1; causal++)
    CheckConfig(LongNetCase(128, causal), DA_DTYPE_BF16, rng, &worst);
  worst.Print("chosen cases, random configs and n = 8192 (bf16), DA_CUDA_PORTABLE=1");
}

TEST(CudaAttention, MatchesCpuWithThousandsOfSequences) {
  REQUIRE_GPU();
  std::mt19937_64 rng(0x5eed0c12);
  WorstErrors worst;
  Config c = ManySequences(1000, 40, rng);
  c.h = 4;
  c.h_kv = 2;
  c.d = 64;
  for (int causal = 0; causal <= 1; causal++)
    for (da_dtype dtype : kDtypes) CheckConfig(WithCausal(c, causal), dtype, rng, &worst);
  worst.Print("1000 sequences");
}

TEST(CudaAttention, MatchesCpuAtLongNetScale) {
  REQUIRE_GPU();
  std::mt19937_64 rng(0x5eed0c13);
  WorstErrors worst;
  for (int d : {64, 128})
    for (int causal = 0; causal <= 1; causal++)
      for (da_dtype dtype : kDtypes) CheckConfig(LongNetCase(d, causal), dtype, rng, &worst);
  worst.Print("n = 8192, h = 4, w = 512,1024,2048, r = 1,2,4");
}

TEST(CudaAttention, BitIdenticalAcrossRuns) {
  REQUIRE_GPU();
  std::mt19937_64 rng(0x5eed0c14);
  Config gqa = Chosen({512, 1024, 2048}, {1, 2, 4}, 4096, 4, 128);
  gqa.h_kv = 2;
  gqa.causal = 1;
  Config groups = Chosen({128, 256, 512, 1024}, {1, 2, 4, 8}, 3000, 8, 64);
  groups.mode = DA_MODE_HEAD_GROUP;
  for (const Config& c : {gqa, groups, ManySequences(600, 30, rng)}) {
    for (da_dtype dtype : kDtypes) {
      SCOPED_TRACE(std::string(da_dtype_name(dtype)) + " " + c.Describe());
      GpuProblem p;
      ASSERT_TRUE(MakeProblem(c, dtype, rng, &p));
      const GpuOutputs first = RunGpu(p, nullptr, true);
      ASSERT_EQ(first.forward, DA_STATUS_SUCCESS) << first.error;
      ASSERT_EQ(first.backward, DA_STATUS_SUCCESS) << first.error;
      for (int run = 1; run < 3; run++)
        ExpectBitIdentical(first, RunGpu(p, nullptr, true), "run " + std::to_string(run));
    }
  }
}

// ---------------------------------------------------------------------------
// Without a GPU.

// The header's promise: DA_STATUS_NO_DEVICE with a sentence, never a crash.
TEST(CudaAttentionNoGpu, ReportsNoDevice) {
  int count = 0;
  if (da_device_count(&count) == DA_STATUS_SUCCESS && count > 0)
    GTEST_SKIP() << "a GPU is present; this case is for machines without one";
  const Config c = Chosen({64}, {1}, 100, 2, 64);
  const da_attention_params params = c.Params();
  const da_attention_batch batch = c.Batch();
  EXPECT_TRUE(Fails(da_attention_cuda_supported(&params, DA_DTYPE_BF16), DA_STATUS_NO_DEVICE));
  // Tensor pointers cannot be device memory here; either refusal is fine.
  std::vector<uint16_t> host(c.QElems());
  std::vector<float> lse(c.LseElems());
  const da_status forward = da_attention_forward_cuda(
      &params, &batch, DA_DTYPE_BF16, host.data(), host.data(), host.data(), host.data(),
      lse.data(), nullptr);
  EXPECT_TRUE(forward == DA_STATUS_NO_DEVICE || forward == DA_STATUS_INVALID_ARGUMENT)
      << da_status_string(forward);
  EXPECT_STRNE(da_last_error(), "");
  const da_status backward = da_attention_backward_cuda(
      &params, &batch, DA_DTYPE_BF16, host.data(), host.data(), host.data(), host.data(),
      lse.data(), host.data(), host.data(), host.data(), host.data(), nullptr);
  EXPECT_TRUE(backward == DA_STATUS_NO_DEVICE || backward == DA_STATUS_INVALID_ARGUMENT)
      << da_status_string(backward);
  EXPECT_STRNE(da_last_error(), "");
}

}  // namespace
