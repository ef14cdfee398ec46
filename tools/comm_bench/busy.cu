/* The busy kernel of busy.h. */
#include <cuda_runtime_api.h>
#include <stdio.h>

#include "tools/comm_bench/busy.h"

namespace {

constexpr int kBlock = 256;
/* Each launch is this many waves of resident blocks, each doing 1/kWaves of the work:
 * SMs a collective takes delay a fraction of the blocks, not the whole launch. */
constexpr int kWaves = 8;
constexpr int kCalibrationIterations = 1 << 18; /* ~0.5 ms on an H100: launch cost is noise */

/* Four independent FMA chains per thread (one would be latency bound); the result is
 * stored only in a case that never happens, which keeps the loop alive. */
__global__ void busy_kernel(float* sink, int iterations) {
  float a = 1.0f + threadIdx.x * 1e-7f, b = a + 1e-3f, c = a + 2e-3f, d = a + 3e-3f;
  for (int i = 0; i < iterations; i++) {
    a = fmaf(a, 0.9999f, 1e-4f);
    b = fmaf(b, 0.9999f, 1e-4f);
    c = fmaf(c, 0.9999f, 1e-4f);
    d = fmaf(d, 0.9999f, 1e-4f);
  }
  if (a + b + c + d == -1.0f) sink[blockIdx.x] = a;
}

int check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return 0;
  fprintf(stderr, "comm_bench: %s: %s\n", what, cudaGetErrorString(err));
  return 1;
}

}  // namespace

extern "C" int bench_busy_init(bench_busy* busy, void* stream_) {
  cudaStream_t stream = (cudaStream_t)stream_;
  int device = 0, sms = 0, per_sm = 0;
  busy->sink = nullptr;
  busy->block = kBlock;
  if (check(cudaGetDevice(&device), "cudaGetDevice") ||
      check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute") ||
      check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, busy_kernel, kBlock, 0), "occupancy") ||
      check(cudaMalloc((void**)&busy->sink, sizeof(float) * (size_t)sms * per_sm * kWaves), "cudaMalloc"))
    return 1;
  busy->grid = sms * per_sm * kWaves;
  cudaEvent_t start, stop;
  if (check(cudaEventCreate(&start), "cudaEventCreate") || check(cudaEventCreate(&stop), "cudaEventCreate")) return 1;
  float best_ms = 1e30f;
  for (int rep = 0; rep < 4; rep++) { /* rep 0 warms up */
    cudaEventRecord(start, stream);
    busy_kernel<<<busy->grid, kBlock, 0, stream>>>(busy->sink, kCalibrationIterations / kWaves);
    cudaEventRecord(stop, stream);
    if (check(cudaEventSynchronize(stop), "busy kernel (calibration)")) return 1;
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    if (rep > 0 && ms < best_ms) best_ms = ms;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  busy->ns_per_iteration = 1e6 * best_ms / (kCalibrationIterations / kWaves);
  return 0;
}

extern "C" int bench_busy_launch(const bench_busy* busy, double ns, void* stream) {
  double iterations = ns / busy->ns_per_iteration;
  int n = iterations < 1 ? 1 : iterations > 1e9 ? 1000000000 : (int)(iterations + 0.5);
  busy_kernel<<<busy->grid, busy->block, 0, (cudaStream_t)stream>>>(busy->sink, n);
  return check(cudaGetLastError(), "busy kernel");
}

extern "C" void bench_busy_free(bench_busy* busy) {
  if (busy->sink) cudaFree(busy->sink);
  busy->sink = nullptr;
}
