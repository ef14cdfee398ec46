// Argument checking of the public attention API: every broken rule of
// dilated_attention.h gets a failure status and a da_last_error() sentence that
// names the offending argument; valid edge cases succeed.
#include <math.h>
#include <string.h>

#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "attention/dilated_attention.h"

namespace {

bool IsIdentChar(char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         ch == '_';
}

// Whether `message` mentions `name` as a whole identifier ("q" must not match
// inside "seqlen").
bool NamesArgument(const std::string& message, const std::string& name) {
  for (size_t at = message.find(name); at != std::string::npos; at = message.find(name, at + 1)) {
    bool left = at == 0 || !IsIdentChar(message[at - 1]);
    bool right = at + name.size() >= message.size() || !IsIdentChar(message[at + name.size()]);
    if (left && right) return true;
  }
  return false;
}

// status must be a failure and the last error must name one of `names`.
::testing::AssertionResult Rejected(da_status status, std::vector<std::string> names) {
  const std::string message = da_last_error();
  if (status == DA_STATUS_SUCCESS) return ::testing::AssertionFailure() << "accepted";
  if (message.empty())
    return ::testing::AssertionFailure() << da_status_string(status) << " with no message";
  for (const std::string& name : names)
    if (NamesArgument(message, name)) return ::testing::AssertionSuccess();
  std::string wanted;
  for (const std::string& name : names) wanted += (wanted.empty() ? "" : " or ") + name;
  return ::testing::AssertionFailure() << "message \"" << message << "\" does not name " << wanted;
}

// A valid call: 2 sequences of 10 tokens, h = 4, h_kv = 2, d = 8, patterns
// (4,1) and (8,2). All tensors live in one buffer so tests can make them overlap.
struct Call {
  std::vector<int> w = {4, 8}, r = {1, 2};
  da_attention_params params;
  da_attention_batch batch;
  std::vector<int64_t> cu;
  static constexpr int64_t kTokens = 20;
  static constexpr int kH = 4, kHkv = 2, kD = 8;
  static constexpr size_t kQ = kTokens * kH * kD, kKv = kTokens * kHkv * kD, kLse = kTokens * kH;
  std::vector<float> buffer;
  float *q, *k, *v, *out, *lse, *dout, *dq, *dk, *dv;

  Call() {
    params = da_attention_params_default();
    params.segment_lengths = w.data();
    params.num_segment_lengths = 2;
    params.dilation_rates = r.data();
    params.num_dilation_rates = 2;
    params.num_heads = kH;
    params.num_kv_heads = kHkv;
    params.head_dim = kD;
    batch.batch = 2;
    batch.seqlen = kTokens / 2;
    batch.cu_seqlens = nullptr;
    // Every k/v-shaped range gets kQ elements, room for h_kv = h.
    buffer.assign(8 * kQ + kLse, 0.5f);
    float* at = buffer.data();
    auto take = [&at](size_t count) {
      float* p = at;
      at += count;
      return p;
    };
    // Adjacent, non-overlapping ranges: touching is not overlapping.
    q = take(kQ);
    k = take(kQ);
    v = take(kQ);
    out = take(kQ);
    lse = take(kLse);
    dout = take(kQ);
    dq = take(kQ);
    dk = take(kQ);
    dv = take(kQ);
  }
  Call(const Call&) = delete;  // params and batch point into this object
  Call& operator=(const Call&) = delete;
  da_status Validate() { return da_attention_validate(&params, &batch); }
  da_status Forward() { return da_attention_forward_cpu(&params, &batch, q, k, v, out, lse); }
  da_status Backward() {
    return da_attention_backward_cpu(&params, &batch, q, k, v, out, lse, dout, dq, dk, dv);
  }
};

// Each parameter mutation must be rejected by validate, forward, backward and the
// counting functions alike.
void ExpectParamsRejected(const std::function<void(Call&)>& mutate, std::vector<std::string> names,
                          const char* what) {
  SCOPED_TRACE(what);
  Call call;
  mutate(call);
  EXPECT_TRUE(Rejected(call.Validate(), names));
  EXPECT_TRUE(Rejected(call.Forward(), names));
  EXPECT_TRUE(Rejected(call.Backward(), names));
  int64_t pairs = 0;
  EXPECT_TRUE(Rejected(da_attention_count_pairs(&call.params, &call.batch, &pairs), names));
  double flops = 0;
  EXPECT_TRUE(Rejected(da_attention_count_flops(&call.params, &call.batch, 1, &flops), names));
}

TEST(Validation, TheBaseCallIsValid) {
  Call call;
  EXPECT_EQ(call.Validate(), DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_EQ(call.Forward(), DA_STATUS_SUCCESS) << da_last_error();
  EXPECT_EQ(call.Backward(), DA_STATUS_SUCCESS) << da_last_error();
  int64_t tokens = 0;
  EXPECT_EQ(da_attention_num_tokens(&call.batch, &tokens), DA_STATUS_SUCCESS);
  EXPECT_EQ(tokens, Call::kTokens);
}

TEST(Validation, PatternLists) {
  const std::vector<std::string> counts = {"num_segment_lengths", "num_dilation_rates"};
  ExpectParamsRejected([](Call& c) { c.params.num_dilation_rates = 1; }, counts,
                       "mismatched list lengths");
  ExpectParamsRejected(
      [](Call& c) { c.params.num_segment_lengths = c.params.num_dilation_rates = 0; }, counts,
      "no patterns");
  ExpectParamsRejected(
      [](Call& c) {
        c.w.assign(DA_MAX_PATTERNS + 1, 4);
        c.r.assign(DA_MAX_PATTERNS + 1, 1);
        c.params.segment_lengths = c.w.data();
        c.params.dilation_rates = c.r.data();
        c.params.num_segment_lengths = c.params.num_dilation_rates = DA_MAX_PATTERNS + 1;
      },
      counts, "more than DA_MAX_PATTERNS");
  ExpectParamsRejected(
      [](Call& c) { c.params.num_segment_lengths = c.params.num_dilation_rates = -1; }, counts,
      "negative count");
  ExpectParamsRejected([](Call& c) { c.params.segment_lengths = nullptr; }, {"segment_lengths"},
                       "NULL segment_lengths");
  ExpectParamsRejected([](Call& c) { c.params.dilation_rates = nullptr; }, {"dilation_rates"},
                       "NULL dilation_rates");
  const std::vector<std::string> w_name = {"segment_lengths"}, r_name = {"dilation_rates"};
  ExpectParamsRejected([](Call& c) { c.w[1] = 0; }, w_name, "w = 0");
  ExpectParamsRejected([](Call& c) { c.w[0] = -4; }, w_name, "w < 0");
  ExpectParamsRejected([](Call& c) { c.r[1] = 0; }, r_name, "r = 0");
  ExpectParamsRejected([](Call& c) { c.r[0] = -1; }, r_name, "r < 0");
  ExpectParamsRejected([](Call& c) { c.r[1] = 9; }, {"dilation_rates", "segment_lengths"}, "r > w");
}

TEST(Validation, HeadsAndScale) {
  ExpectParamsRejected([](Call& c) { c.params.num_heads = 0; }, {"num_heads"}, "h = 0");
  ExpectParamsRejected([](Call& c) { c.params.num_heads = -4; }, {"num_heads"}, "h < 0");
  ExpectParamsRejected([](Call& c) { c.params.num_kv_heads = 3; }, {"num_kv_heads"},
                       "h % h_kv != 0");
  ExpectParamsRejected([](Call& c) { c.params.num_kv_heads = 8; }, {"num_kv_heads"}, "h_kv > h");
  ExpectParamsRejected([](Call& c) { c.params.num_kv_heads = -2; }, {"num_kv_heads"}, "h_kv < 0");
  ExpectParamsRejected([](Call& c) { c.params.head_dim = 0; }, {"head_dim"}, "d = 0");
  ExpectParamsRejected([](Call& c) { c.params.head_dim = -8; }, {"head_dim"}, "d < 0");
  ExpectParamsRejected([](Call& c) { c.params.head_dim = DA_MAX_HEAD_DIM + 1; }, {"head_dim"},
                       "d > DA_MAX_HEAD_DIM");
  const float bad_scales[] = {std::numeric_limits<float>::quiet_NaN(), -0.5f,
                              std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity()};
  for (float scale : bad_scales)
    ExpectParamsRejected([scale](Call& c) { c.params.softmax_scale = scale; }, {"softmax_scale"},
                         "bad softmax_scale");
}

TEST(Validation, EnumValues) {
  ExpectParamsRejected([](Call& c) { c.params.mode = (da_attention_mode)2; }, {"mode"}, "mode 2");
  ExpectParamsRejected([](Call& c) { c.params.mode = (da_attention_mode)-1; }, {"mode"}, "mode -1");
  ExpectParamsRejected([](Call& c) { c.params.offset_policy = (da_offset_policy)4; },
                       {"offset_policy"}, "offset 4");
  ExpectParamsRejected([](Call& c) { c.params.offset_policy = (da_offset_policy)-1; },
                       {"offset_policy"}, "offset -1");
}

TEST(Validation, Batch) {
  ExpectParamsRejected([](Call& c) { c.batch.batch = 0; }, {"batch"}, "batch 0");
  ExpectParamsRejected([](Call& c) { c.batch.batch = -1; }, {"batch"}, "batch < 0");
  ExpectParamsRejected([](Call& c) { c.batch.seqlen = 0; }, {"seqlen"}, "seqlen 0");
  ExpectParamsRejected([](Call& c) { c.batch.seqlen = -3; }, {"seqlen"}, "seqlen < 0");
  ExpectParamsRejected(
      [](Call& c) {
        c.cu = {1, 10, 20};
        c.batch.cu_seqlens = c.cu.data();
      },
      {"cu_seqlens"}, "cu_seqlens[0] != 0");
  ExpectParamsRejected(
      [](Call& c) {
        c.cu = {0, 12, 8};
        c.batch.cu_seqlens = c.cu.data();
      },
      {"cu_seqlens"}, "cu_seqlens decreasing");
  ExpectParamsRejected(
      [](Call& c) {
        c.cu = {0, 0, 0};
        c.batch.cu_seqlens = c.cu.data();
      },
      {"cu_seqlens"}, "no tokens");
}

TEST(Validation, NullParamsAndBatch) {
  Call c;
  int64_t pairs = 0, tokens = 0;
  EXPECT_TRUE(Rejected(da_attention_validate(nullptr, &c.batch), {"params"}));
  EXPECT_TRUE(Rejected(da_attention_validate(&c.params, nullptr), {"batch"}));
  EXPECT_TRUE(Rejected(da_attention_forward_cpu(nullptr, &c.batch, c.q, c.k, c.v, c.out, c.lse),
                       {"params"}));
  EXPECT_TRUE(Rejected(da_attention_forward_cpu(&c.params, nullptr, c.q, c.k, c.v, c.out, c.lse),
                       {"batch"}));
  EXPECT_TRUE(Rejected(da_attention_backward_cpu(nullptr, &c.batch, c.q, c.k, c.v, c.out, c.lse,
                                                 c.dout, c.dq, c.dk, c.dv),
                       {"params"}));
  EXPECT_TRUE(Rejected(da_attention_backward_cpu(&c.params, nullptr, c.q, c.k, c.v, c.out, c.lse,
                                                 c.dout, c.dq, c.dk, c.dv),
                       {"batch"}));
  EXPECT_TRUE(Rejected(da_attention_count_pairs(nullptr, &c.batch, &pairs), {"params"}));
  EXPECT_TRUE(Rejected(da_attention_count_pairs(&c.params, &c.batch, nullptr), {"pairs"}));
  EXPECT_TRUE(Rejected(da_attention_count_flops(&c.params, &c.batch, 0, nullptr), {"flops"}));
  EXPECT_TRUE(Rejected(da_attention_num_tokens(nullptr, &tokens), {"batch"}));
  EXPECT_TRUE(Rejected(da_attention_num_tokens(&c.batch, nullptr), {"tokens"}));
}

TEST(Validation, NullTensors) {
  struct Case {
    const char* name;
    float* Call::*member;
  };
  const Case forward_cases[] = {
      {"q", &Call::q}, {"k", &Call::k}, {"v", &Call::v}, {"out", &Call::out}};
  for (const Case& cs : forward_cases) {
    Call c;
    c.*cs.member = nullptr;
    EXPECT_TRUE(Rejected(c.Forward(), {cs.name})) << cs.name;
  }
  const Case backward_cases[] = {{"q", &Call::q},     {"k", &Call::k},     {"v", &Call::v},
                                 {"out", &Call::out}, {"lse", &Call::lse}, {"dout", &Call::dout},
                                 {"dq", &Call::dq},   {"dk", &Call::dk},   {"dv", &Call::dv}};
  for (const Case& cs : backward_cases) {
    Call c;
    c.*cs.member = nullptr;
    EXPECT_TRUE(Rejected(c.Backward(), {cs.name})) << cs.name;
  }
}

TEST(Validation, OverlappingTensors) {
  // Forward: out and lse must overlap neither each other nor q, k, v.
  {
    Call c;
    c.out = c.q + Call::kQ - 1;  // last element of q is out's first
    EXPECT_TRUE(Rejected(c.Forward(), {"out"}));
  }
  {
    Call c;
    c.out = c.k + 3;
    EXPECT_TRUE(Rejected(c.Forward(), {"out"}));
  }
  {
    Call c;
    c.lse = c.out + Call::kQ - 5;
    EXPECT_TRUE(Rejected(c.Forward(), {"lse", "out"}));
  }
  {
    Call c;
    c.lse = c.v + 1;
    EXPECT_TRUE(Rejected(c.Forward(), {"lse"}));
  }
  {
    Call c;
    c.out = c.q;  // in-place is not allowed either
    EXPECT_TRUE(Rejected(c.Forward(), {"out"}));
  }
  // Backward: dq, dk, dv must overlap neither each other nor any input.
  struct Case {
    const char* what;
    std::function<void(Call&)> mutate;
    std::vector<std::string> names;
  };
  const Case cases[] = {
      {"dq over dk", [](Call& c) { c.dk = c.dq + Call::kQ - 1; }, {"dq", "dk"}},
      {"dk over dv", [](Call& c) { c.dv = c.dk + 2; }, {"dk", "dv"}},
      {"dq over dv", [](Call& c) { c.dq = c.dv + 1; }, {"dq", "dv"}},
      {"dq over q", [](Call& c) { c.dq = c.q + 7; }, {"dq"}},
      {"dk over v", [](Call& c) { c.dk = c.v + Call::kKv - 1; }, {"dk"}},
      {"dv over k", [](Call& c) { c.dv = c.k; }, {"dv"}},
      {"dv over dout", [](Call& c) { c.dv = c.dout + 10; }, {"dv"}},
      {"dq over out", [](Call& c) { c.dq = c.out; }, {"dq"}},
      {"dk over lse", [](Call& c) { c.dk = c.lse + Call::kLse - 1; }, {"dk"}},
  };
  for (const Case& cs : cases) {
    Call c;
    cs.mutate(c);
    EXPECT_TRUE(Rejected(c.Backward(), cs.names)) << cs.what;
  }
}

TEST(Validation, EdgeCasesThatAreValid) {
  struct Case {
    const char* what;
    std::function<void(Call&)> mutate;
  };
  const Case cases[] = {
      {"w = 1",
       [](Call& c) {
         c.w = {1, 1};
         c.r = {1, 1};
         c.params.segment_lengths = c.w.data();
         c.params.dilation_rates = c.r.data();
       }},
      {"r = w",
       [](Call& c) {
         c.r = {4, 8};
         c.params.dilation_rates = c.r.data();
       }},
      {"w > n",
       [](Call& c) {
         c.w = {1000, 8};
         c.params.segment_lengths = c.w.data();
       }},
      {"h_kv = 1", [](Call& c) { c.params.num_kv_heads = 1; }},
      {"h_kv = 0 means h",
       [](Call& c) {
         c.params.num_kv_heads = 0;
         c.k = c.q + Call::kQ / 2;  // inputs may alias each other
         c.v = c.q;
       }},
      {"n = 1", [](Call& c) { c.batch.seqlen = 1; }},
      {"causal, custom scale, head-group, block",
       [](Call& c) {
         c.params.causal = 1;
         c.params.softmax_scale = 0.3f;
         c.params.mode = DA_MODE_HEAD_GROUP;
         c.params.offset_policy = DA_OFFSET_BLOCK;
       }},
      {"packed with empty sequences",
       [](Call& c) {
         c.cu = {0, 0, 20};
         c.batch.cu_seqlens = c.cu.data();
       }},
      {"DA_MAX_PATTERNS patterns",
       [](Call& c) {
         c.w.assign(DA_MAX_PATTERNS, 4);
         c.r.assign(DA_MAX_PATTERNS, 2);
         c.params.segment_lengths = c.w.data();
         c.params.dilation_rates = c.r.data();
         c.params.num_segment_lengths = c.params.num_dilation_rates = DA_MAX_PATTERNS;
       }},
      {"head_dim = 1", [](Call& c) { c.params.head_dim = 1; }},
  };
  for (const Case& cs : cases) {
    Call c;
    cs.mutate(c);
    EXPECT_EQ(c.Validate(), DA_STATUS_SUCCESS) << cs.what << ": " << da_last_error();
    EXPECT_EQ(c.Forward(), DA_STATUS_SUCCESS) << cs.what << ": " << da_last_error();
    EXPECT_EQ(c.Backward(), DA_STATUS_SUCCESS) << cs.what << ": " << da_last_error();
    // lse may be omitted in the forward pass.
    EXPECT_EQ(da_attention_forward_cpu(&c.params, &c.batch, c.q, c.k, c.v, c.out, nullptr),
              DA_STATUS_SUCCESS)
        << cs.what << ": " << da_last_error();
  }
}

TEST(Validation, DefaultsAreAsDocumented) {
  da_attention_params p = da_attention_params_default();
  EXPECT_EQ(p.segment_lengths, nullptr);
  EXPECT_EQ(p.num_segment_lengths, 0);
  EXPECT_EQ(p.dilation_rates, nullptr);
  EXPECT_EQ(p.num_dilation_rates, 0);
  EXPECT_EQ(p.mode, DA_MODE_LONGNET);
  EXPECT_EQ(p.offset_policy, DA_OFFSET_DEFAULT);
  EXPECT_EQ(p.causal, 0);
  EXPECT_EQ(p.softmax_scale, 0.0f);
  EXPECT_EQ(p.num_heads, 0);
  EXPECT_EQ(p.num_kv_heads, 0);
  EXPECT_EQ(p.head_dim, 0);
}

}  // namespace
