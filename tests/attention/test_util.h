// test_util.h: what the attention tests share: a random configuration generator
// (patterns, heads, ragged and packed batches), random non-zero inputs, NaN
// poisoning, the CPU passes run the way every test runs them, the float-vs-double
// comparisons and the relative-L2 ones the 16-bit GPU passes are judged by. One
// copy of each piece of logic.
#ifndef DA_TESTS_ATTENTION_TEST_UTIL_H
#define DA_TESTS_ATTENTION_TEST_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include <algorithm>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "attention/dense_oracle.h"
#include "attention/dilated_attention.h"

namespace da_test {

// Multiplier for the random iteration counts: DA_TEST_SCALE if set (e.g. 0.25 for
// a quick run, 10 for a soak), else 1. The sanitizer build runs the full counts
// too (about 10 s per file at -O1).
inline double IterationScale() {
  const char* env = getenv("DA_TEST_SCALE");
  if (env != nullptr && *env != '\0') return std::max(0.01, atof(env));
  return 1.0;
}

inline int ScaledCount(int n) {
  return std::max(1, static_cast<int>(lround(n * IterationScale())));
}

// One call's worth of parameters, owning the pattern lists and cu_seqlens that
// da_attention_params / da_attention_batch only borrow.
struct Config {
  std::vector<int> w, r;
  da_attention_mode mode = DA_MODE_LONGNET;
  da_offset_policy offset = DA_OFFSET_DEFAULT;
  int causal = 0;
  float scale = 0.0f;
  int h = 1, h_kv = 0, d = 4;
  int64_t batch = 1, seqlen = 1;
  std::vector<int64_t> cu;   // empty: batch x seqlen; else batch + 1 offsets
  float q_magnitude = 1.0f;  // q is drawn this much larger (stresses the softmax)

  da_attention_params Params() const {
    da_attention_params p = da_attention_params_default();
    p.segment_lengths = w.data();
    p.num_segment_lengths = static_cast<int>(w.size());
    p.dilation_rates = r.data();
    p.num_dilation_rates = static_cast<int>(r.size());
    p.mode = mode;
    p.offset_policy = offset;
    p.causal = causal;
    p.softmax_scale = scale;
    p.num_heads = h;
    p.num_kv_heads = h_kv;
    p.head_dim = d;
    return p;
  }
  da_attention_batch Batch() const {
    da_attention_batch b;
    b.batch = batch;
    b.seqlen = cu.empty() ? seqlen : 0;
    b.cu_seqlens = cu.empty() ? nullptr : cu.data();
    return b;
  }
  int KvHeads() const { return h_kv == 0 ? h : h_kv; }
  int64_t Tokens() const { return cu.empty() ? batch * seqlen : cu.back(); }
  size_t QElems() const { return static_cast<size_t>(Tokens() * h * d); }
  size_t KvElems() const { return static_cast<size_t>(Tokens() * KvHeads() * d); }
  size_t LseElems() const { return static_cast<size_t>(Tokens() * h); }

  std::string Describe() const {
    std::ostringstream s;
    s << "patterns (w,r)=";
    for (size_t i = 0; i < w.size(); i++) s << (i ? "," : "") << "(" << w[i] << "," << r[i] << ")";
    s << " mode=" << (mode == DA_MODE_LONGNET ? "longnet" : "head_group")
      << " offset=" << static_cast<int>(offset) << " causal=" << causal << " scale=" << scale
      << " h=" << h << " h_kv=" << h_kv << " d=" << d << " batch=" << batch;
    if (cu.empty()) {
      s << " seqlen=" << seqlen;
    } else {
      s << " cu_seqlens=";
      for (size_t i = 0; i < cu.size(); i++) s << (i ? "," : "") << cu[i];
    }
    s << " q_magnitude=" << q_magnitude;
    return s.str();
  }
};

// A hand-picked configuration: patterns (w, r), one sequence of n tokens, h query
// heads (h_kv = h), head_dim d; everything else at its default.
inline Config Chosen(std::vector<int> w, std::vector<int> r, int64_t n, int h, int d) {
  Config c;
  c.w = std::move(w);
  c.r = std::move(r);
  c.seqlen = n;
  c.h = h;
  c.d = d;
  return c;
}

inline int UniformInt(std::mt19937_64& rng, int lo, int hi) {  // inclusive
  return std::uniform_int_distribution<int>(lo, hi)(rng);
}

inline bool Chance(std::mt19937_64& rng, double p) {
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng) < p;
}

// What RandomConfig draws from. The defaults are the CPU tests' space (any head
// dim); the CUDA test narrows the head dims to those its kernels serve and lets
// sequences grow over several tiles. A given rng draws the same configs from the
// default space as it always has.
struct ConfigSpace {
  std::vector<int> head_dims{1, 3, 8, 16, 33, 64, 128};
  int max_heads = 8;
  int max_batch = 3;
  int long_seqlen_max = 700;  // a quarter of the draws allow n up to this (>= 100)
};

// A valid random configuration whose brute-force cost (pairs x head_dim) stays
// within max_work. Covers: n not a multiple of any w and n < w, w = 1 .. > n,
// r = 1 .. w including r > h, duplicate patterns, GQA/MQA, both modes, every
// offset policy, causal, custom scales, packed batches with empty sequences, and
// large q magnitudes.
inline Config RandomConfig(std::mt19937_64& rng, double max_work,
                           const ConfigSpace& space = ConfigSpace()) {
  for (;;) {
    Config c;
    c.d = space.head_dims[UniformInt(rng, 0, static_cast<int>(space.head_dims.size()) - 1)];
    c.h = UniformInt(rng, 1, space.max_heads);
    std::vector<int> divisors;
    for (int x = 1; x <= c.h; x++)
      if (c.h % x == 0) divisors.push_back(x);
    c.h_kv = Chance(rng, 0.2) ? 0 : divisors[UniformInt(rng, 0, (int)divisors.size() - 1)];
    // Sequence lengths: mostly short, sometimes long enough to span several blocks.
    int n_max = Chance(rng, 0.25) ? UniformInt(rng, 100, space.long_seqlen_max)
                                  : UniformInt(rng, 1, 100);
    c.batch = UniformInt(rng, 1, space.max_batch);
    if (Chance(rng, 0.4)) {
      c.cu.push_back(0);
      for (int64_t s = 0; s < c.batch; s++) {
        int len = Chance(rng, 0.15) ? 0 : UniformInt(rng, 1, n_max);
        c.cu.push_back(c.cu.back() + len);
      }
      if (c.cu.back() == 0) c.cu.back() = UniformInt(rng, 1, n_max);
    } else {
      c.seqlen = UniformInt(rng, 1, n_max);
    }
    int k = UniformInt(rng, 1, 4);
    for (int i = 0; i < k; i++) {
      if (i > 0 && Chance(rng, 0.15)) {  // duplicate: those keys count twice
        int src = UniformInt(rng, 0, i - 1);
        c.w.push_back(c.w[src]);
        c.r.push_back(c.r[src]);
        continue;
      }
      int w;
      double kind = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
      if (kind < 0.3)
        w = UniformInt(rng, 1, 8);
      else if (kind < 0.8)
        w = UniformInt(rng, 1, std::max(1, n_max));
      else
        w = UniformInt(rng, n_max, 2 * n_max + 3);  // one segment, longer than n
      int r = Chance(rng, 0.3) ? 1 : UniformInt(rng, 1, std::min(w, 12));
      c.w.push_back(w);
      c.r.push_back(r);
    }
    c.mode = Chance(rng, 0.3) ? DA_MODE_HEAD_GROUP : DA_MODE_LONGNET;
    c.offset = static_cast<da_offset_policy>(UniformInt(rng, 0, 3));
    c.causal = Chance(rng, 0.5);
    c.scale = Chance(rng, 0.5) ? 0.0f : std::uniform_real_distribution<float>(0.05f, 1.0f)(rng);
    c.q_magnitude = Chance(rng, 0.15) ? 10.0f : 1.0f;

    da_attention_params p = c.Params();
    da_attention_batch b = c.Batch();
    // The library's closed-form count rejects oversized draws at once (the oracle
    // would enumerate every pair); accepted draws are counted by the oracle.
    int64_t pairs = 0;
    if (da_attention_count_pairs(&p, &b, &pairs) == DA_STATUS_SUCCESS &&
        static_cast<double>(pairs) * c.d > max_work)
      continue;
    if (da_oracle_count_pairs(&p, &b, &pairs) != DA_STATUS_SUCCESS) {
      ADD_FAILURE() << "generated an invalid config: " << da_last_error() << "\n" << c.Describe();
      return c;
    }
    if (static_cast<double>(pairs) * c.d <= max_work) return c;
  }
}

// Normal-ish values bounded away from zero (|x| >= 0.05), times magnitude.
inline std::vector<float> RandomTensor(std::mt19937_64& rng, size_t count, float magnitude = 1.0f) {
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

inline std::vector<double> ToDouble(const std::vector<float>& x) {
  return std::vector<double>(x.begin(), x.end());
}

inline std::vector<float> Poisoned(size_t count) {
  return std::vector<float>(count, std::numeric_limits<float>::quiet_NaN());
}

// The inputs of one call, in float and in the identical double values.
struct Inputs {
  std::vector<float> q, k, v;
  std::vector<double> qd, kd, vd;
};

inline Inputs RandomInputs(std::mt19937_64& rng, const Config& c) {
  Inputs in;
  in.q = RandomTensor(rng, c.QElems(), c.q_magnitude);
  in.k = RandomTensor(rng, c.KvElems());
  in.v = RandomTensor(rng, c.KvElems());
  in.qd = ToDouble(in.q);
  in.kd = ToDouble(in.k);
  in.vd = ToDouble(in.v);
  return in;
}

// max |got - ref| (at `worst`) and the scale it is judged against,
// max(max |ref|, scale_floor); ok_finite is false if got holds a NaN or inf.
struct ErrorStats {
  double max_err = 0.0, scale = 0.0;
  size_t worst = 0;
  bool ok_finite = true;
  double Ratio() const { return max_err / std::max(scale, 1e-30); }
};

template <typename T>
ErrorStats CompareStats(const T* got, const double* ref, size_t count, double scale_floor = 0.0) {
  ErrorStats st;
  double max_ref = 0.0;
  for (size_t i = 0; i < count; i++) {
    if (!std::isfinite(static_cast<double>(got[i])) && st.ok_finite) {
      st.ok_finite = false;
      st.worst = i;
    }
    max_ref = std::max(max_ref, fabs(ref[i]));
    double err = fabs(static_cast<double>(got[i]) - ref[i]);
    if (st.ok_finite && err > st.max_err) {
      st.max_err = err;
      st.worst = i;
    }
  }
  st.scale = std::max(max_ref, scale_floor);
  return st;
}

// max |got - ref| <= rel_tol * max(max |ref|, scale_floor), and got has no NaN or
// inf. Names the worst element on failure.
template <typename T>
::testing::AssertionResult AllClose(const char* what, const T* got, const double* ref, size_t count,
                                    double rel_tol, double scale_floor = 0.0) {
  ErrorStats st = CompareStats(got, ref, count, scale_floor);
  if (!st.ok_finite)
    return ::testing::AssertionFailure() << what << "[" << st.worst << "] = " << got[st.worst]
                                         << " is not finite (ref " << ref[st.worst] << ")";
  if (st.Ratio() <= rel_tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": max abs error " << st.max_err << " at [" << st.worst << "] (got "
         << got[st.worst] << ", ref " << ref[st.worst] << ") exceeds " << rel_tol << " x "
         << st.scale << " (max |ref|" << (scale_floor > 0 ? " floored by max |dv|" : "") << ")";
}

// Both -inf, or both finite with |got - ref| <= tol * max(1, |ref|).
template <typename T>
::testing::AssertionResult LseClose(const T* got, const double* ref, size_t count, double tol) {
  for (size_t i = 0; i < count; i++) {
    double g = static_cast<double>(got[i]);
    if (std::isinf(ref[i]) && ref[i] < 0) {
      if (!(std::isinf(g) && g < 0))
        return ::testing::AssertionFailure()
               << "lse[" << i << "] = " << g << " but no key covers the query (ref -inf)";
      continue;
    }
    if (!std::isfinite(g) || fabs(g - ref[i]) > tol * std::max(1.0, fabs(ref[i])))
      return ::testing::AssertionFailure() << "lse[" << i << "] = " << g << ", ref " << ref[i];
  }
  return ::testing::AssertionSuccess();
}

// Typical logit size relative to the default scaling (unit inputs, s = 1/sqrt(d)):
// q_magnitude x s x sqrt(d), at least 1.
inline double LogitMagnitude(const Config& c) {
  const double s = c.scale == 0.0f ? 1.0 / sqrt(static_cast<double>(c.d)) : c.scale;
  return std::max(1.0, c.q_magnitude * s * sqrt(static_cast<double>(c.d)));
}

// Tolerances of the float CPU paths against the double oracle (same input values).
// The only error is float rounding: a logit s q.k carries an absolute error of a
// few ulp of s sum|q_c k_c| (<~ 1e-6 at the default scaling, d <= 128), which
// moves every probability by that relative amount; outputs are convex
// combinations of v rows, so |out error| <~ 1e-6 x max|v|, and 1e-5 x max|out|
// leaves room for exp/log and accumulation over hundreds of keys. The logit error
// grows linearly with the logits, hence the factor LogitMagnitude. (Observed: the
// worst of 600 random configs uses under 10% of this; the runs print the figure.)
inline double ForwardTolerance(const Config& c) { return 1e-5 * LogitMagnitude(c); }
// Backward: dS = P (dO.v - D) cancels (D is the P-weighted mean of dO.v), and
// dK/dV sum up to h x (keys per query) terms, so allow 10x the forward's.
inline double BackwardTolerance(const Config& c) { return 1e-4 * LogitMagnitude(c); }

struct OracleOutputs {
  std::vector<double> out, lse;
};

// The oracle forward over every token (a non-success status fails the test).
inline OracleOutputs OracleForward(const Config& c, const std::vector<double>& q,
                                   const std::vector<double>& k, const std::vector<double>& v) {
  da_attention_params p = c.Params();
  da_attention_batch b = c.Batch();
  OracleOutputs r;
  r.out.assign(c.QElems(), std::numeric_limits<double>::quiet_NaN());
  r.lse.assign(c.LseElems(), std::numeric_limits<double>::quiet_NaN());
  EXPECT_EQ(da_oracle_forward(&p, &b, q.data(), k.data(), v.data(), 0, c.Tokens(), r.out.data(),
                              r.lse.data()),
            DA_STATUS_SUCCESS)
      << da_last_error();
  return r;
}

// L = sum(out * g) through the oracle forward.
inline double OracleLoss(const Config& c, const std::vector<double>& q,
                         const std::vector<double>& k, const std::vector<double>& v,
                         const std::vector<double>& g) {
  std::vector<double> out = OracleForward(c, q, k, v).out;
  double loss = 0.0;
  for (size_t i = 0; i < out.size(); i++) loss += out[i] * g[i];
  return loss;
}

struct CpuOutputs {
  std::vector<float> out, lse;
};

// da_attention_forward_cpu with out and lse poisoned with NaN beforehand.
inline CpuOutputs CpuForward(const Config& c, const Inputs& in) {
  da_attention_params p = c.Params();
  da_attention_batch b = c.Batch();
  CpuOutputs r;
  r.out = Poisoned(c.QElems());
  r.lse = Poisoned(c.LseElems());
  EXPECT_EQ(da_attention_forward_cpu(&p, &b, in.q.data(), in.k.data(), in.v.data(), r.out.data(),
                                     r.lse.data()),
            DA_STATUS_SUCCESS)
      << da_last_error();
  return r;
}

struct CpuGrads {
  std::vector<float> dq, dk, dv;
};

// CpuForward, then da_attention_backward_cpu on its out and lse with dq, dk, dv
// poisoned with NaN beforehand. *forward (when given) gets the forward's results.
inline CpuGrads CpuBackward(const Config& c, const Inputs& in, const std::vector<float>& dout,
                            CpuOutputs* forward = nullptr) {
  CpuOutputs fwd = CpuForward(c, in);
  da_attention_params p = c.Params();
  da_attention_batch b = c.Batch();
  CpuGrads g;
  g.dq = Poisoned(c.QElems());
  g.dk = Poisoned(c.KvElems());
  g.dv = Poisoned(c.KvElems());
  EXPECT_EQ(
      da_attention_backward_cpu(&p, &b, in.q.data(), in.k.data(), in.v.data(), fwd.out.data(),
                                fwd.lse.data(), dout.data(), g.dq.data(), g.dk.data(), g.dv.data()),
      DA_STATUS_SUCCESS)
      << da_last_error();
  if (forward != nullptr) *forward = std::move(fwd);
  return g;
}

struct Grads {
  std::vector<double> dq, dk, dv;
};

// The oracle's backward (a non-success status fails the test).
inline Grads OracleBackward(const Config& c, const std::vector<double>& q,
                            const std::vector<double>& k, const std::vector<double>& v,
                            const std::vector<double>& dout) {
  da_attention_params p = c.Params();
  da_attention_batch b = c.Batch();
  Grads g;
  g.dq.assign(c.QElems(), std::numeric_limits<double>::quiet_NaN());
  g.dk.assign(c.KvElems(), std::numeric_limits<double>::quiet_NaN());
  g.dv.assign(c.KvElems(), std::numeric_limits<double>::quiet_NaN());
  EXPECT_EQ(da_oracle_backward(&p, &b, q.data(), k.data(), v.data(), dout.data(), g.dq.data(),
                               g.dk.data(), g.dv.data()),
            DA_STATUS_SUCCESS)
      << da_last_error();
  return g;
}

// dL/dq, dL/dk, dL/dv of OracleLoss by central differences (step 1e-5 relative):
// truncation error ~ step^2 |L'''| ~ 1e-10, rounding ~ 1e-16 |L| / step ~ 1e-11.
inline Grads FiniteDifferenceGrads(const Config& c, std::vector<double> q, std::vector<double> k,
                                   std::vector<double> v, const std::vector<double>& g) {
  Grads grads;
  std::vector<double>* inputs[3] = {&q, &k, &v};
  std::vector<double>* outputs[3] = {&grads.dq, &grads.dk, &grads.dv};
  for (int t = 0; t < 3; t++) {
    std::vector<double>& x = *inputs[t];
    outputs[t]->assign(x.size(), 0.0);
    for (size_t i = 0; i < x.size(); i++) {
      const double saved = x[i];
      const double step = 1e-5 * std::max(1.0, fabs(saved));
      const double plus = saved + step, minus = saved - step;
      x[i] = plus;
      const double loss_plus = OracleLoss(c, q, k, v, g);
      x[i] = minus;
      const double loss_minus = OracleLoss(c, q, k, v, g);
      x[i] = saved;
      (*outputs[t])[i] = (loss_plus - loss_minus) / (plus - minus);
    }
  }
  return grads;
}

inline double MaxAbs(const std::vector<double>& x) {
  double m = 0.0;
  for (double e : x) m = std::max(m, fabs(e));
  return m;
}

// Gradients against a reference, each within rel_tol of its scale. dQ and dK are
// sums of P (dO.v - D) terms that cancel exactly where a query sees one key (or
// identical values), so their true value can be ~0 while rounding is not; their
// scale is floored by max|dV| (= P-weighted dO, no cancellation), the size of the
// terms being cancelled for unit-scale inputs.
template <typename T>
::testing::AssertionResult GradsClose(const std::vector<T>& dq, const std::vector<T>& dk,
                                      const std::vector<T>& dv, const Grads& ref, double rel_tol) {
  const double floor = MaxAbs(ref.dv);
  ::testing::AssertionResult r =
      AllClose("dq", dq.data(), ref.dq.data(), dq.size(), rel_tol, floor);
  if (!r) return r;
  r = AllClose("dk", dk.data(), ref.dk.data(), dk.size(), rel_tol, floor);
  if (!r) return r;
  return AllClose("dv", dv.data(), ref.dv.data(), dv.size(), rel_tol);
}

// Root mean square of x (0 for an empty x).
template <typename T>
double Rms(const std::vector<T>& x) {
  double sum = 0.0;
  for (const T& e : x) sum += static_cast<double>(e) * static_cast<double>(e);
  return x.empty() ? 0.0 : sqrt(sum / static_cast<double>(x.size()));
}

// Relative L2 error ||got - ref|| / max(||ref||, floor_rms x sqrt(count)): how the
// 16-bit GPU passes are judged. Each of their outputs carries its type's rounding
// (and P, dS are rounded on the way), so the norm-wise error is the meaningful
// figure where an element near 0 may be off by 100%. floor_rms (GradientFloors)
// does for dq and dk what GradsClose's floor does. ok_finite is false when got
// holds a NaN or inf (first at first_nonfinite; those are left out of rel).
struct L2Error {
  double rel = 0.0;
  bool ok_finite = true;
  size_t first_nonfinite = 0;
};

template <typename G, typename R>
L2Error RelativeL2(const G* got, const R* ref, size_t count, double floor_rms = 0.0) {
  L2Error e;
  double err2 = 0.0, ref2 = 0.0;
  for (size_t i = 0; i < count; i++) {
    const double g = static_cast<double>(got[i]), r = static_cast<double>(ref[i]);
    if (!std::isfinite(g)) {
      if (e.ok_finite) e.first_nonfinite = i;
      e.ok_finite = false;
      continue;
    }
    err2 += (g - r) * (g - r);
    ref2 += r * r;
  }
  const double denom = std::max(sqrt(ref2), floor_rms * sqrt(static_cast<double>(count)));
  e.rel = denom > 0.0 ? sqrt(err2) / denom : (err2 > 0.0 ? INFINITY : 0.0);
  return e;
}

// Floors (rms) for the relative L2 errors of dq and dk. Where a query's softmax
// is peaked (few keys, large logits) dS = P (dO.v - D) cancels, so dq = s sum dS k
// and dk = s sum dS q can be far smaller than the terms they sum, while the GPU's
// D, computed from its 16-bit out, carries ~2^-9 of those terms. Their size: dS
// ~ rms(dv), times a key (dq) or query (dk) row norm scaled as the logits are,
// s sqrt(d) rms(k or q); with the default scale and unit inputs that is rms(dv),
// GradsClose's floor. Emulated on the CPU (bf16 inputs, out rounded to bf16 before
// the backward, 600 configs of the CUDA test's space): the worst dq/dk error was
// 0.015 against rms(dv) alone (q 10x larger), 0.002 against these floors.
struct GradFloors {
  double dq = 0.0, dk = 0.0;
};

inline GradFloors GradientFloors(const Config& c, const std::vector<float>& q,
                                 const std::vector<float>& k, const std::vector<float>& dv_ref) {
  const double s = c.scale == 0.0f ? 1.0 / sqrt(static_cast<double>(c.d)) : c.scale;
  const double row = s * sqrt(static_cast<double>(c.d)), ds = Rms(dv_ref);
  GradFloors f;
  f.dq = ds * row * Rms(k);
  f.dk = ds * row * Rms(q);
  return f;
}

// RelativeL2 <= tol and every element finite; *rel (when given) gets the error.
template <typename G, typename R>
::testing::AssertionResult RelativeL2Close(const char* what, const G* got, const R* ref,
                                           size_t count, double tol, double floor_rms = 0.0,
                                           double* rel = nullptr) {
  const L2Error e = RelativeL2(got, ref, count, floor_rms);
  if (rel != nullptr) *rel = e.rel;
  if (!e.ok_finite)
    return ::testing::AssertionFailure()
           << what << "[" << e.first_nonfinite << "] = " << got[e.first_nonfinite]
           << " is not finite (ref " << ref[e.first_nonfinite] << ")";
  if (e.rel <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": relative L2 error " << e.rel << " exceeds " << tol
         << (floor_rms > 0.0 ? " (reference rms floored at " : "")
         << (floor_rms > 0.0 ? std::to_string(floor_rms) + ")" : "");
}

// lse: -inf exactly where ref is -inf (no key covers the query), finite where ref
// is, and relative L2 error over the finite entries <= tol; *rel gets the error.
template <typename G, typename R>
::testing::AssertionResult LseRelativeL2Close(const G* got, const R* ref, size_t count,
                                              double tol, double* rel = nullptr) {
  double err2 = 0.0, ref2 = 0.0;
  if (rel != nullptr) *rel = 0.0;
  for (size_t i = 0; i < count; i++) {
    const double g = static_cast<double>(got[i]), r = static_cast<double>(ref[i]);
    if (std::isinf(r) && r < 0) {
      if (!(std::isinf(g) && g < 0))
        return ::testing::AssertionFailure()
               << "lse[" << i << "] = " << g << " but no key covers the query (ref -inf)";
      continue;
    }
    if (!std::isfinite(g))
      return ::testing::AssertionFailure() << "lse[" << i << "] = " << g << ", ref " << r;
    err2 += (g - r) * (g - r);
    ref2 += r * r;
  }
  const double e = ref2 > 0.0 ? sqrt(err2 / ref2) : sqrt(err2);
  if (rel != nullptr) *rel = e;
  if (e <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "lse: relative L2 error " << e << " over the finite entries exceeds " << tol;
}

}  // namespace da_test

#endif  // DA_TESTS_ATTENTION_TEST_UTIL_H
