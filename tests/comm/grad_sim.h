// A host model of the gradient communicator's compressed path for one bucket, over
// every rank at once: what grad.c does with the host compressors (compress.h). The
// MPI tests compare the engine's results with it bit for bit (where MPI's own
// summation order does not enter), the GPU tests compare the device path with it.
#ifndef DA_TESTS_COMM_GRAD_SIM_H
#define DA_TESTS_COMM_GRAD_SIM_H

#include <algorithm>
#include <vector>

#include "comm/compress.h"

namespace da_test {

// What rank r sends for one bucket of gradient a (error-compensated with its residual
// e, which is updated), decoded as the receivers add it: mirrors grad.c with the
// host compressors.
struct GradSimulation {
  da_compress_config c;
  size_t n;
  std::vector<std::vector<float>> residual;  // per rank
  std::vector<std::vector<float>> sent;      // per rank: the error-compensated gradient of the last step
  int g_size;  // ranks
  GradSimulation(const da_compress_config& cfg, size_t n_, int ranks)
      : c(cfg), n(n_), residual(ranks, std::vector<float>(n_, 0.0f)), sent(ranks), g_size(ranks) {}

  std::vector<float> step(const std::vector<std::vector<float>>& g, uint64_t step_index) {
    da_cx_layout l = da_cx_payload_layout(&c, n);
    const float average = (float)(1.0 / g_size);
    std::vector<std::vector<char>> payload(g_size, std::vector<char>(l.bytes + 16));
    std::vector<std::vector<uint32_t>> idx(g_size, std::vector<uint32_t>(std::max<size_t>(l.slots, 1)));
    for (int r = 0; r < g_size; r++) {
      std::vector<float> a = g[r];
      float* e = c.error_feedback ? residual[r].data() : nullptr;
      if (e) da_cx_add(a.data(), e, n);
      sent[r] = a;
      char* p = payload[r].data();
      switch (c.algorithm) {
        case DA_COMPRESS_FP16:
        case DA_COMPRESS_BF16:
          da_cx_cast_encode(c.algorithm == DA_COMPRESS_FP16 ? DA_DTYPE_F16 : DA_DTYPE_BF16, a.data(), n, average,
                            (uint16_t*)p, e);
          break;
        case DA_COMPRESS_TOPK:
          da_cx_topk_encode(a.data(), n, l.slots, (uint32_t*)(p + l.idx_offset), (float*)(p + l.val_offset), e);
          break;
        case DA_COMPRESS_THRESHOLD:
          da_cx_threshold_encode(a.data(), n, c.ratio, l.slots, (uint32_t*)(p + l.idx_offset),
                                 (float*)(p + l.val_offset), e, nullptr);
          break;
        case DA_COMPRESS_RANDOMK:
          da_cx_randomk_encode(a.data(), n, l.slots, da_cx_randomk_key(c.seed, step_index, 0), idx[r].data(),
                               (float*)p, e);
          break;
        case DA_COMPRESS_INT8:
          da_cx_int8_encode(a.data(), n, c.int8_chunk, (float*)(p + l.scales_offset), (int8_t*)(p + l.q_offset), e);
          break;
        default: break;
      }
    }
    std::vector<float> out(n, 0.0f);
    switch (c.algorithm) {
      case DA_COMPRESS_FP16:
      case DA_COMPRESS_BF16: {
        // The MPI reduction adds rank by rank in some tree order: with 2 ranks the
        // half-precision sum is a single rounding, so it is exact to simulate.
        bool f16 = c.algorithm == DA_COMPRESS_FP16;
        for (size_t i = 0; i < n; i++) {
          float acc = 0;
          for (int r = 0; r < g_size; r++) {
            uint16_t h = ((uint16_t*)payload[r].data())[i];
            acc += f16 ? da_cx_f16_to_f32(h) : da_cx_bf16_to_f32(h);
          }
          out[i] = f16 ? da_cx_f16_to_f32(da_cx_f32_to_f16(acc)) : da_cx_bf16_to_f32(da_cx_f32_to_bf16(acc));
        }
        break;
      }
      case DA_COMPRESS_TOPK:
      case DA_COMPRESS_THRESHOLD:
        for (int r = 0; r < g_size; r++)
          da_cx_sparse_accumulate(out.data(), (uint32_t*)(payload[r].data() + l.idx_offset),
                                  (float*)(payload[r].data() + l.val_offset), l.slots);
        da_cx_scale(out.data(), n, average);
        break;
      case DA_COMPRESS_RANDOMK: {
        std::vector<float> sum(l.slots, 0.0f);
        for (int r = 0; r < g_size; r++)
          for (size_t j = 0; j < l.slots; j++) sum[j] += ((float*)payload[r].data())[j];
        for (size_t j = 0; j < l.slots; j++) out[idx[0][j]] = sum[j] * average;
        break;
      }
      case DA_COMPRESS_INT8:
        for (int r = 0; r < g_size; r++)
          da_cx_int8_accumulate(out.data(), n, c.int8_chunk, (float*)(payload[r].data() + l.scales_offset),
                                (int8_t*)(payload[r].data() + l.q_offset));
        da_cx_scale(out.data(), n, average);
        break;
      default: break;
    }
    return out;
  }
};

}  // namespace da_test

#endif  // DA_TESTS_COMM_GRAD_SIM_H
