// The local level's dilated structure is, block for block, what the attention
// component's dilated attention touches: probed through da_attention_forward_cpu
// with q = 0 (uniform softmax over each query's key set) and v[t] = e_t, so
// out[p][t] > 0 exactly when key t is in K(p). This ties the sparse_pattern copy of
// the selection rules (head groups, offset policies, causality, ragged segments) to
// the attention component's.
#include <vector>

#include "attention/dilated_attention.h"
#include "sparse_pattern/pattern_internal.h"
#include "tests/sparse_pattern/pattern_test_util.h"

namespace {

using da_pattern_test::Chance;
using da_pattern_test::ScaledCount;
using da_pattern_test::UniformInt;

TEST(StructureTest, MatchesTheDilatedAttentionKeySets) {
  std::mt19937_64 rng(99);
  for (int it = 0; it < ScaledCount(150); it++) {
    da_pattern_config c = da_pattern_config_default();
    const int n = UniformInt(rng, 1, DA_MAX_HEAD_DIM);  // head_dim = n: one column per key
    c.seqlen = n;
    c.block_size = 1 << UniformInt(rng, 0, 5);
    c.num_heads = UniformInt(rng, 1, 6);
    c.causal = Chance(rng, 0.5);
    c.global_density = 0.0;
    c.local_window_blocks = 0;
    c.num_patterns = UniformInt(rng, 1, 3);
    for (int p = 0; p < c.num_patterns; p++) {
      int w = Chance(rng, 0.3) ? UniformInt(rng, 1, 12) : UniformInt(rng, 1, n + 5);
      c.segment_lengths[p] = w;
      c.dilation_rates[p] = UniformInt(rng, 1, std::min(w, 40));
    }
    c.mode = Chance(rng, 0.3) ? DA_MODE_HEAD_GROUP : DA_MODE_LONGNET;
    c.offset_policy = static_cast<da_offset_policy>(UniformInt(rng, 0, 3));

    da_attention_params ap = da_attention_params_default();
    std::vector<int> w(c.segment_lengths, c.segment_lengths + c.num_patterns);
    std::vector<int> r(c.dilation_rates, c.dilation_rates + c.num_patterns);
    ap.segment_lengths = w.data();
    ap.num_segment_lengths = c.num_patterns;
    ap.dilation_rates = r.data();
    ap.num_dilation_rates = c.num_patterns;
    ap.mode = c.mode;
    ap.offset_policy = c.offset_policy;
    ap.causal = c.causal;
    ap.num_heads = c.num_heads;
    ap.head_dim = n;
    da_attention_batch batch = {1, n, nullptr};
    const size_t elems = (size_t)n * c.num_heads * n;
    std::vector<float> q(elems, 0.0f), k(elems, 0.0f), v(elems, 0.0f), out(elems);
    for (int t = 0; t < n; t++)
      for (int h = 0; h < c.num_heads; h++) v[((size_t)t * c.num_heads + h) * n + t] = 1.0f;
    ASSERT_EQ(
        da_attention_forward_cpu(&ap, &batch, q.data(), k.data(), v.data(), out.data(), nullptr),
        DA_STATUS_SUCCESS)
        << da_last_error();

    da_pattern_plan plan;
    ASSERT_EQ(da_pattern_plan_init(&c, &plan), DA_STATUS_SUCCESS) << da_last_error();
    const int64_t nb = plan.nb, B = c.block_size;
    std::vector<int32_t> blocks(nb);
    for (int h = 0; h < c.num_heads; h++) {
      for (int64_t i = 0; i < nb; i++) {
        std::vector<char> want(nb, 0);
        for (int64_t p = i * B; p < std::min<int64_t>((i + 1) * B, n); p++)
          for (int t = 0; t < n; t++)
            if (out[((size_t)p * c.num_heads + h) * n + t] > 0.0f) want[t / B] = 1;
        want[i] = 1;  // the window (radius 0) always holds the diagonal
        int64_t count = da_pattern_structure_blocks(&plan, h, i, blocks.data());
        std::vector<char> got(nb, 0);
        for (int64_t x = 0; x < count; x++) {
          if (x > 0) {
            ASSERT_LT(blocks[x - 1], blocks[x]);
          }
          got[blocks[x]] = 1;
        }
        ASSERT_EQ(got, want) << "head " << h << " row " << i << " n=" << n << " B=" << B
                             << " causal=" << c.causal << " mode=" << c.mode
                             << " offset=" << c.offset_policy;
      }
    }
  }
}

}  // namespace
