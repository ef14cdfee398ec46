// The CPU block-sparse attention against a dense masked oracle in double precision
// (the layout expanded to a token mask, one softmax over every allowed key), the
// oracle's gradient against central finite differences, rows with no key, thread
// count independence, and argument checks.
#include <math.h>
#include <omp.h>
#include <string.h>

#include <limits>
#include <vector>

#include "tests/sparse_pattern/pattern_test_util.h"

namespace {

using da_pattern_test::Chance;
using da_pattern_test::Config;
using da_pattern_test::Layout;
using da_pattern_test::Rejected;
using da_pattern_test::ScaledCount;
using da_pattern_test::UniformInt;
using da_pattern_test::View;

struct Problem {
  Layout layout;
  da_pattern_attention_params params = da_pattern_attention_params_default();
  int64_t n = 0, B = 1, nb = 0, tokens = 0;
  int h = 1, hk = 1, d = 1;
  double scale = 1.0;
  bool causal = false;
  std::vector<std::vector<char>> mask;  // [head][row * nb + col]: block kept
  std::vector<float> q, k, v, dout;

  size_t QElems() const { return (size_t)tokens * h * d; }
  size_t KvElems() const { return (size_t)tokens * hk * d; }
  size_t LseElems() const { return (size_t)tokens * h; }
  bool Allowed(int j, int64_t p, int64_t t) const {  // p, t within one sequence
    return mask[j][(p / B) * nb + t / B] && (!causal || t <= p);
  }
};

std::vector<float> RandomTensor(std::mt19937_64& rng, size_t count, float magnitude = 1.0f) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(count);
  for (float& e : x) {
    float z;
    do z = normal(rng);
    while (fabsf(z) < 0.05f);
    e = magnitude * z;
  }
  return x;
}

void Finish(std::mt19937_64& rng, Problem& pr, da_pattern_layout* layout, int64_t batch) {
  pr.layout.reset(layout);
  da_pattern_bsr b = View(layout);
  pr.n = b.seqlen;
  pr.B = b.block_size;
  pr.nb = b.num_blocks;
  pr.h = b.num_heads;
  pr.causal = b.causal;
  pr.tokens = batch * pr.n;
  std::vector<int> divisors;
  for (int x = 1; x <= pr.h; x++)
    if (pr.h % x == 0) divisors.push_back(x);
  pr.hk = divisors[UniformInt(rng, 0, (int)divisors.size() - 1)];
  static const int kDims[] = {1, 3, 8, 16, 33, 64};
  pr.d = kDims[UniformInt(rng, 0, 5)];
  pr.params.batch = batch;
  pr.params.num_heads = pr.h;
  pr.params.num_kv_heads = Chance(rng, 0.2) && pr.hk == pr.h ? 0 : pr.hk;
  pr.params.head_dim = pr.d;
  pr.params.softmax_scale =
      Chance(rng, 0.5) ? 0.0f : (float)da_pattern_test::Uniform(rng, 0.05, 1.0);
  pr.scale = pr.params.softmax_scale == 0.0f ? (double)(1.0f / sqrtf((float)pr.d))
                                             : (double)pr.params.softmax_scale;
  pr.mask.assign(pr.h, std::vector<char>(pr.nb * pr.nb, 0));
  for (int j = 0; j < pr.h; j++) {
    const int64_t* off = b.row_offsets + (size_t)j * (pr.nb + 1);
    for (int64_t i = 0; i < pr.nb; i++)
      for (int64_t x = off[i]; x < off[i + 1]; x++) pr.mask[j][i * pr.nb + b.col_indices[x]] = 1;
  }
  const float magnitude = Chance(rng, 0.15) ? 8.0f : 1.0f;
  pr.q = RandomTensor(rng, pr.QElems(), magnitude);
  pr.k = RandomTensor(rng, pr.KvElems());
  pr.v = RandomTensor(rng, pr.KvElems());
  pr.dout = RandomTensor(rng, pr.QElems());
}

// A generated layout (any type, with dilated patterns) over a short sequence.
Problem GeneratedProblem(std::mt19937_64& rng) {
  Problem pr;
  Config cfg = da_pattern_test::RandomConfig(rng, 12);
  cfg.c.block_size = 1 << UniformInt(rng, 0, 4);
  int nb = UniformInt(rng, 1, 10);
  cfg.c.seqlen = (int64_t)(nb - 1) * cfg.c.block_size + UniformInt(rng, 1, cfg.c.block_size);
  for (int p = 0; p < cfg.c.num_patterns; p++) {
    cfg.c.segment_lengths[p] = std::min<int>(cfg.c.segment_lengths[p], 64);
    cfg.c.dilation_rates[p] = std::min(cfg.c.dilation_rates[p], cfg.c.segment_lengths[p]);
  }
  da_pattern_layout* l = nullptr;
  EXPECT_EQ(da_pattern_layout_create(cfg.get(), &l), DA_STATUS_SUCCESS) << da_last_error();
  Finish(rng, pr, l, UniformInt(rng, 1, 2));
  return pr;
}

// A caller-made layout with random blocks per row, empty rows included.
Problem RandomBsrProblem(std::mt19937_64& rng) {
  Problem pr;
  da_pattern_bsr b;
  memset(&b, 0, sizeof b);
  b.block_size = 1 << UniformInt(rng, 0, 3);
  b.num_blocks = UniformInt(rng, 1, 10);
  b.seqlen = (b.num_blocks - 1) * b.block_size + UniformInt(rng, 1, b.block_size);
  b.num_heads = UniformInt(rng, 1, 4);
  b.causal = Chance(rng, 0.5);
  b.row_begin = 0;
  b.row_end = b.num_blocks;
  std::vector<int64_t> off = {0};
  std::vector<int32_t> cols;
  const double keep = da_pattern_test::Uniform(rng, 0.0, 1.0);
  for (int j = 0; j < b.num_heads; j++) {
    if (j > 0) off.push_back(off.back());
    for (int64_t i = 0; i < b.num_blocks; i++) {
      for (int64_t c = 0; c < (b.causal ? i + 1 : b.num_blocks); c++)
        if (Chance(rng, keep)) cols.push_back((int32_t)c);
      off.push_back(cols.size());
    }
  }
  b.row_offsets = off.data();
  b.col_indices = cols.data();
  b.levels = nullptr;
  b.nnz = cols.size();
  da_pattern_layout* l = nullptr;
  EXPECT_EQ(da_pattern_layout_from_bsr(&b, &l), DA_STATUS_SUCCESS) << da_last_error();
  Finish(rng, pr, l, UniformInt(rng, 1, 2));
  return pr;
}

struct Outputs {
  std::vector<double> out, lse;
};

Outputs OracleForward(const Problem& pr, const std::vector<double>& q, const std::vector<double>& k,
                      const std::vector<double>& v) {
  Outputs o;
  o.out.assign(pr.QElems(), 0.0);
  o.lse.assign(pr.LseElems(), -INFINITY);
  const int group = pr.h / pr.hk;
  std::vector<double> s;
  for (int64_t seq = 0; seq < pr.tokens / pr.n; seq++)
    for (int j = 0; j < pr.h; j++)
      for (int64_t p = 0; p < pr.n; p++) {
        const size_t row = (size_t)(seq * pr.n + p) * pr.h + j;
        s.assign(pr.n, -INFINITY);
        double m = -INFINITY;
        for (int64_t t = 0; t < pr.n; t++) {
          if (!pr.Allowed(j, p, t)) continue;
          const size_t kv = ((size_t)(seq * pr.n + t) * pr.hk + j / group) * pr.d;
          double dot = 0.0;
          for (int c = 0; c < pr.d; c++) dot += q[row * pr.d + c] * k[kv + c];
          s[t] = pr.scale * dot;
          m = std::max(m, s[t]);
        }
        if (std::isinf(m)) continue;
        double sum = 0.0;
        for (int64_t t = 0; t < pr.n; t++) {
          if (std::isinf(s[t])) continue;
          const double w = exp(s[t] - m);
          sum += w;
          const size_t kv = ((size_t)(seq * pr.n + t) * pr.hk + j / group) * pr.d;
          for (int c = 0; c < pr.d; c++) o.out[row * pr.d + c] += w * v[kv + c];
        }
        for (int c = 0; c < pr.d; c++) o.out[row * pr.d + c] /= sum;
        o.lse[row] = m + log(sum);
      }
  return o;
}

struct Grads {
  std::vector<double> dq, dk, dv;
};

// The textbook gradient: P = exp(s - LSE), dS = P (dO.v - dO.O).
Grads OracleBackward(const Problem& pr, const std::vector<double>& q, const std::vector<double>& k,
                     const std::vector<double>& v, const std::vector<double>& dout) {
  Outputs f = OracleForward(pr, q, k, v);
  Grads g;
  g.dq.assign(pr.QElems(), 0.0);
  g.dk.assign(pr.KvElems(), 0.0);
  g.dv.assign(pr.KvElems(), 0.0);
  const int group = pr.h / pr.hk;
  for (int64_t seq = 0; seq < pr.tokens / pr.n; seq++)
    for (int j = 0; j < pr.h; j++)
      for (int64_t p = 0; p < pr.n; p++) {
        const size_t row = (size_t)(seq * pr.n + p) * pr.h + j;
        if (std::isinf(f.lse[row])) continue;
        double dd = 0.0;
        for (int c = 0; c < pr.d; c++) dd += dout[row * pr.d + c] * f.out[row * pr.d + c];
        for (int64_t t = 0; t < pr.n; t++) {
          if (!pr.Allowed(j, p, t)) continue;
          const size_t kv = ((size_t)(seq * pr.n + t) * pr.hk + j / group) * pr.d;
          double dot = 0.0, dp = 0.0;
          for (int c = 0; c < pr.d; c++) {
            dot += q[row * pr.d + c] * k[kv + c];
            dp += dout[row * pr.d + c] * v[kv + c];
          }
          const double prob = exp(pr.scale * dot - f.lse[row]);
          const double ds = prob * (dp - dd);
          for (int c = 0; c < pr.d; c++) {
            g.dq[row * pr.d + c] += pr.scale * ds * k[kv + c];
            g.dk[kv + c] += pr.scale * ds * q[row * pr.d + c];
            g.dv[kv + c] += prob * dout[row * pr.d + c];
          }
        }
      }
  return g;
}

std::vector<double> D(const std::vector<float>& x) {
  return std::vector<double>(x.begin(), x.end());
}

double MaxAbs(const std::vector<double>& x) {
  double m = 0.0;
  for (double e : x) m = std::max(m, fabs(e));
  return m;
}

// max |got - ref| <= tol * max(max |ref|, floor), no NaN / inf in got.
::testing::AssertionResult Close(const char* what, const std::vector<float>& got,
                                 const std::vector<double>& ref, double tol, double floor = 0.0) {
  const double scale = std::max(MaxAbs(ref), floor);
  for (size_t i = 0; i < got.size(); i++) {
    if (!std::isfinite(got[i]))
      return ::testing::AssertionFailure() << what << "[" << i << "] = " << got[i];
    if (fabs(got[i] - ref[i]) > tol * std::max(scale, 1e-30))
      return ::testing::AssertionFailure()
             << what << "[" << i << "] = " << got[i] << ", ref " << ref[i] << " (tolerance " << tol
             << " x " << scale << ")";
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult LseClose(const std::vector<float>& got, const std::vector<double>& ref,
                                    double tol) {
  for (size_t i = 0; i < got.size(); i++) {
    if (std::isinf(ref[i])) {
      if (!(std::isinf(got[i]) && got[i] < 0))
        return ::testing::AssertionFailure() << "lse[" << i << "] = " << got[i] << ", ref -inf";
    } else if (!std::isfinite(got[i]) ||
               fabs(got[i] - ref[i]) > tol * std::max(1.0, fabs(ref[i]))) {
      return ::testing::AssertionFailure() << "lse[" << i << "] = " << got[i] << ", ref " << ref[i];
    }
  }
  return ::testing::AssertionSuccess();
}

struct Cpu {
  std::vector<float> out, lse, dq, dk, dv;
};

Cpu RunCpu(const Problem& pr, bool backward) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Cpu r;
  r.out.assign(pr.QElems(), nan);
  r.lse.assign(pr.LseElems(), nan);
  EXPECT_EQ(da_pattern_attention_forward_cpu(pr.layout.get(), &pr.params, pr.q.data(), pr.k.data(),
                                             pr.v.data(), r.out.data(), r.lse.data()),
            DA_STATUS_SUCCESS)
      << da_last_error();
  if (!backward) return r;
  r.dq.assign(pr.QElems(), nan);
  r.dk.assign(pr.KvElems(), nan);
  r.dv.assign(pr.KvElems(), nan);
  EXPECT_EQ(da_pattern_attention_backward_cpu(
                pr.layout.get(), &pr.params, pr.q.data(), pr.k.data(), pr.v.data(), r.out.data(),
                r.lse.data(), pr.dout.data(), r.dq.data(), r.dk.data(), r.dv.data()),
            DA_STATUS_SUCCESS)
      << da_last_error();
  return r;
}

// Logit size relative to unit inputs at the default scale (as tests/attention).
double LogitMagnitude(const Problem& pr) {
  double qmax = 0.0;
  for (float x : pr.q) qmax = std::max(qmax, (double)fabsf(x));
  return std::max(1.0, qmax / 4.0 * pr.scale * sqrt((double)pr.d));
}

void CheckAgainstOracle(const Problem& pr, const std::string& what) {
  Cpu cpu = RunCpu(pr, true);
  const std::vector<double> q = D(pr.q), k = D(pr.k), v = D(pr.v), dout = D(pr.dout);
  Outputs f = OracleForward(pr, q, k, v);
  const double mag = LogitMagnitude(pr);
  ASSERT_TRUE(Close("out", cpu.out, f.out, 1e-5 * mag)) << what;
  ASSERT_TRUE(LseClose(cpu.lse, f.lse, 1e-5 * mag)) << what;
  Grads g = OracleBackward(pr, q, k, v, dout);
  const double floor = MaxAbs(g.dv);
  ASSERT_TRUE(Close("dq", cpu.dq, g.dq, 1e-4 * mag, floor)) << what;
  ASSERT_TRUE(Close("dk", cpu.dk, g.dk, 1e-4 * mag, floor)) << what;
  ASSERT_TRUE(Close("dv", cpu.dv, g.dv, 1e-4 * mag)) << what;
}

std::string Describe(const Problem& pr) {
  std::ostringstream s;
  s << "n=" << pr.n << " B=" << pr.B << " h=" << pr.h << " h_kv=" << pr.hk << " d=" << pr.d
    << " batch=" << pr.tokens / pr.n << " causal=" << pr.causal << " scale=" << pr.scale;
  return s.str();
}

TEST(BlockAttentionTest, GeneratedLayoutsMatchTheOracle) {
  std::mt19937_64 rng(3);
  for (int it = 0; it < ScaledCount(300); it++) {
    Problem pr = GeneratedProblem(rng);
    CheckAgainstOracle(pr, Describe(pr));
    if (HasFatalFailure()) return;
  }
}

TEST(BlockAttentionTest, CallerLayoutsWithEmptyRowsMatchTheOracle) {
  std::mt19937_64 rng(4);
  for (int it = 0; it < ScaledCount(300); it++) {
    Problem pr = RandomBsrProblem(rng);
    CheckAgainstOracle(pr, Describe(pr));
    if (HasFatalFailure()) return;
  }
}

TEST(BlockAttentionTest, QueriesWithoutKeysGetZeroAndMinusInfinity) {
  // Two blocks of 4 tokens; head 0 row 1 keeps nothing, head 1 keeps only block 1
  // in row 1 (so keys 0..3 get no gradient from head 1).
  std::mt19937_64 rng(8);
  std::vector<int64_t> off = {0, 1, 1, 1, 1, 2};
  std::vector<int32_t> cols = {0, 1};
  da_pattern_bsr b;
  memset(&b, 0, sizeof b);
  b.seqlen = 8;
  b.block_size = 4;
  b.num_heads = 2;
  b.num_blocks = 2;
  b.row_end = 2;
  b.row_offsets = off.data();
  b.col_indices = cols.data();
  b.nnz = 2;
  da_pattern_layout* l = nullptr;
  ASSERT_EQ(da_pattern_layout_from_bsr(&b, &l), DA_STATUS_SUCCESS) << da_last_error();
  Problem pr;
  Finish(rng, pr, l, 1);
  Cpu cpu = RunCpu(pr, true);
  for (int64_t p = 0; p < 8; p++)
    for (int j = 0; j < 2; j++) {
      const size_t row = (size_t)p * 2 + j;
      const bool empty = (j == 0 && p >= 4) || (j == 1 && p < 4);
      if (!empty) continue;
      EXPECT_TRUE(std::isinf(cpu.lse[row]) && cpu.lse[row] < 0) << p << "," << j;
      for (int c = 0; c < pr.d; c++) {
        EXPECT_EQ(cpu.out[row * pr.d + c], 0.0f);
        EXPECT_EQ(cpu.dq[row * pr.d + c], 0.0f);
      }
    }
  CheckAgainstOracle(pr, Describe(pr));
}

TEST(BlockAttentionTest, OracleGradientMatchesFiniteDifferences) {
  std::mt19937_64 rng(12);
  const int wanted = ScaledCount(16);
  int checked = 0;
  for (int attempt = 0; checked < wanted && attempt < 5000; attempt++) {
    Problem pr = Chance(rng, 0.5) ? GeneratedProblem(rng) : RandomBsrProblem(rng);
    if (pr.QElems() > 600) continue;  // keep the 2 x inputs evaluations cheap
    checked++;
    std::vector<double> q = D(pr.q), k = D(pr.k), v = D(pr.v), g = D(pr.dout);
    Grads exact = OracleBackward(pr, q, k, v, g);
    auto loss = [&]() {
      Outputs o = OracleForward(pr, q, k, v);
      double sum = 0.0;
      for (size_t i = 0; i < o.out.size(); i++) sum += o.out[i] * g[i];
      return sum;
    };
    std::vector<double>* inputs[3] = {&q, &k, &v};
    const std::vector<double>* grads[3] = {&exact.dq, &exact.dk, &exact.dv};
    for (int t = 0; t < 3; t++)
      for (size_t i = 0; i < inputs[t]->size(); i++) {
        double& x = (*inputs[t])[i];
        const double saved = x, step = 1e-5 * std::max(1.0, fabs(saved));
        x = saved + step;
        const double plus = loss();
        x = saved - step;
        const double minus = loss();
        x = saved;
        const double fd = (plus - minus) / (2 * step);
        ASSERT_NEAR((*grads[t])[i], fd, 1e-6 * std::max(1.0, fabs(fd)))
            << "input " << t << "[" << i << "] " << Describe(pr);
      }
  }
  EXPECT_EQ(checked, wanted);
}

TEST(BlockAttentionTest, BitIdenticalForAnyThreadCount) {
  std::mt19937_64 rng(21);
  const int saved = omp_get_max_threads();
  for (int it = 0; it < ScaledCount(20) + 3; it++) {
    Problem pr = GeneratedProblem(rng);
    if (it < 3) {  // big enough for the threaded path
      Config cfg;
      cfg.c.seqlen = 600 + it;
      cfg.c.block_size = 16;
      cfg.c.num_heads = 4;
      cfg.c.causal = it % 2;
      cfg.c.local_density = 0.6;
      cfg.c.world_size = 2;
      da_pattern_layout* l = nullptr;
      ASSERT_EQ(da_pattern_layout_create(cfg.get(), &l), DA_STATUS_SUCCESS);
      Finish(rng, pr, l, 2);
      pr.d = pr.params.head_dim = 32;
      pr.q = RandomTensor(rng, pr.QElems());
      pr.k = RandomTensor(rng, pr.KvElems());
      pr.v = RandomTensor(rng, pr.KvElems());
      pr.dout = RandomTensor(rng, pr.QElems());
    }
    omp_set_num_threads(1);
    Cpu one = RunCpu(pr, true);
    omp_set_num_threads(3);
    Cpu three = RunCpu(pr, true);
    auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
      return a.size() == b.size() && memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
    };
    EXPECT_TRUE(same(one.out, three.out) && same(one.lse, three.lse) && same(one.dq, three.dq) &&
                same(one.dk, three.dk) && same(one.dv, three.dv))
        << Describe(pr);
  }
  omp_set_num_threads(saved);
}

TEST(BlockAttentionTest, RejectsBadArguments) {
  std::mt19937_64 rng(30);
  Config cfg;
  cfg.c.seqlen = 40;
  cfg.c.block_size = 8;
  cfg.c.num_heads = 4;
  da_pattern_layout* l = nullptr;
  ASSERT_EQ(da_pattern_layout_create(cfg.get(), &l), DA_STATUS_SUCCESS);
  Problem pr;
  Finish(rng, pr, l, 1);
  pr.params.num_kv_heads = 2;
  pr.params.head_dim = 8;
  pr.d = 8;
  pr.hk = 2;
  pr.q = RandomTensor(rng, pr.QElems());
  pr.k = RandomTensor(rng, pr.KvElems());
  pr.v = RandomTensor(rng, pr.KvElems());
  pr.dout = RandomTensor(rng, pr.QElems());
  std::vector<float> out(pr.QElems()), lse(pr.LseElems()), dq(pr.QElems()), dk(pr.KvElems()),
      dv(pr.KvElems());
  auto fwd = [&](const da_pattern_attention_params& p, const float* q, float* o, float* ls) {
    return da_pattern_attention_forward_cpu(pr.layout.get(), &p, q, pr.k.data(), pr.v.data(), o,
                                            ls);
  };
  const da_pattern_attention_params ok = pr.params;
  ASSERT_EQ(fwd(ok, pr.q.data(), out.data(), lse.data()), DA_STATUS_SUCCESS) << da_last_error();
  da_pattern_attention_params p = ok;
  p.batch = 0;
  EXPECT_TRUE(Rejected(fwd(p, pr.q.data(), out.data(), lse.data()), "batch", "0"));
  p = ok;
  p.num_heads = 2;
  EXPECT_TRUE(Rejected(fwd(p, pr.q.data(), out.data(), lse.data()), "num_heads", "2"));
  p = ok;
  p.num_kv_heads = 3;
  EXPECT_TRUE(Rejected(fwd(p, pr.q.data(), out.data(), lse.data()), "num_kv_heads", "3"));
  p = ok;
  p.head_dim = 0;
  EXPECT_TRUE(Rejected(fwd(p, pr.q.data(), out.data(), lse.data()), "head_dim", "0"));
  p.head_dim = 257;
  EXPECT_TRUE(Rejected(fwd(p, pr.q.data(), out.data(), lse.data()), "head_dim", "257"));
  p = ok;
  p.softmax_scale = -1.0f;
  EXPECT_TRUE(Rejected(fwd(p, pr.q.data(), out.data(), lse.data()), "softmax_scale", "-1"));
  p.softmax_scale = INFINITY;
  EXPECT_TRUE(Rejected(fwd(p, pr.q.data(), out.data(), lse.data()), "softmax_scale", "inf"));
  EXPECT_TRUE(Rejected(fwd(ok, nullptr, out.data(), lse.data()), "q"));
  EXPECT_TRUE(Rejected(fwd(ok, pr.q.data(), nullptr, lse.data()), "out"));
  EXPECT_TRUE(Rejected(fwd(ok, pr.q.data(), pr.q.data(), lse.data()), "out"));
  EXPECT_TRUE(Rejected(fwd(ok, pr.q.data(), out.data(), out.data() + 4), "lse"));
  EXPECT_EQ(fwd(ok, pr.q.data(), out.data(), nullptr), DA_STATUS_SUCCESS);  // lse optional
  EXPECT_TRUE(Rejected(da_pattern_attention_forward_cpu(nullptr, &ok, pr.q.data(), pr.k.data(),
                                                        pr.v.data(), out.data(), lse.data()),
                       "layout"));
  auto bwd = [&](float* dqp, float* dkp, float* dvp, const float* lsep) {
    return da_pattern_attention_backward_cpu(pr.layout.get(), &ok, pr.q.data(), pr.k.data(),
                                             pr.v.data(), out.data(), lsep, pr.dout.data(), dqp,
                                             dkp, dvp);
  };
  ASSERT_EQ(fwd(ok, pr.q.data(), out.data(), lse.data()), DA_STATUS_SUCCESS);
  EXPECT_EQ(bwd(dq.data(), dk.data(), dv.data(), lse.data()), DA_STATUS_SUCCESS);
  EXPECT_TRUE(Rejected(bwd(dq.data(), dk.data(), dv.data(), nullptr), "lse"));
  EXPECT_TRUE(Rejected(bwd(dq.data(), dk.data(), dk.data(), lse.data()), "dv"));
  EXPECT_TRUE(Rejected(bwd(dq.data(), pr.k.data(), dv.data(), lse.data()), "dk"));
  EXPECT_TRUE(Rejected(bwd(out.data(), dk.data(), dv.data(), lse.data()), "dq"));
  // A layout of some rows only (one rank's) cannot run attention on its own.
  Config part = cfg;
  part.c.row_begin = 1;
  da_pattern_layout* partial = nullptr;
  ASSERT_EQ(da_pattern_layout_create(part.get(), &partial), DA_STATUS_SUCCESS);
  EXPECT_TRUE(Rejected(da_pattern_attention_forward_cpu(partial, &ok, pr.q.data(), pr.k.data(),
                                                        pr.v.data(), out.data(), lse.data()),
                       "layout"));
  da_pattern_layout_release(partial);
}

}  // namespace
