// The GPU's dense bf16 GEMM ceiling with cuBLAS (gpu.h): the yardstick the
// bench reports the attention's effective FLOP/s against.
//
// cuBLAS is loaded with dlopen for the measurement only: linked, it and cublasLt
// add ~210 MiB to the resident set (and 0.1 s to the start) of every `da` run,
// which would distort the peak memory the CPU bench reports; and `da` keeps
// working where the library is missing.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>

#include "tools/da/gpu.h"

namespace {

// The three entry points, as cublas_api.h declares them (checked below without
// referencing the symbols, so nothing links against cuBLAS).
typedef cublasStatus_t (*create_fn)(cublasHandle_t*);
typedef cublasStatus_t (*destroy_fn)(cublasHandle_t);
typedef cublasStatus_t (*gemm_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int,
                                  int, const void*, const void*, cudaDataType, int, const void*,
                                  cudaDataType, int, const void*, void*, cudaDataType, int,
                                  cublasComputeType_t, cublasGemmAlgo_t);
static_assert(sizeof(static_cast<create_fn>(&cublasCreate_v2)) > 0, "cublasCreate_v2 type");
static_assert(sizeof(static_cast<destroy_fn>(&cublasDestroy_v2)) > 0, "cublasDestroy_v2 type");
static_assert(sizeof(static_cast<gemm_fn>(&cublasGemmEx)) > 0, "cublasGemmEx type");

struct Cublas {
  void* library = nullptr;
  create_fn create = nullptr;
  destroy_fn destroy = nullptr;
  gemm_fn gemm = nullptr;
};

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

// The cuBLAS of the toolkit we were built with: by soname through the
// executable's runpath (/usr/local/cuda/lib64), then at that path explicitly.
da_status load_cublas(Cublas* c) {
  static const char* const kNames[] = {
      "libcublas.so." STRINGIFY(CUBLAS_VER_MAJOR),
      "/usr/local/cuda/lib64/libcublas.so." STRINGIFY(CUBLAS_VER_MAJOR)};
  for (const char* name : kNames)
    if ((c->library = dlopen(name, RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
  if (c->library == nullptr)
    return cli_gpu_fail(DA_STATUS_NOT_SUPPORTED, "the GEMM ceiling needs %s: %s", kNames[0],
                        dlerror());
  c->create = reinterpret_cast<create_fn>(dlsym(c->library, "cublasCreate_v2"));
  c->destroy = reinterpret_cast<destroy_fn>(dlsym(c->library, "cublasDestroy_v2"));
  c->gemm = reinterpret_cast<gemm_fn>(dlsym(c->library, "cublasGemmEx"));
  if (c->create == nullptr || c->destroy == nullptr || c->gemm == nullptr)
    return cli_gpu_fail(DA_STATUS_NOT_SUPPORTED, "%s lacks cublasCreate_v2, cublasDestroy_v2 "
                        "or cublasGemmEx", kNames[0]);
  return DA_STATUS_SUCCESS;
}

constexpr int kWarmups = 3;

// Uniform values in [-1, 1) from a hash of the index: random enough that the
// tensor cores do not see zeros (which draw less power and run faster).
__global__ void fill_random(__nv_bfloat16* x, size_t count, uint32_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
       i += (size_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 0x9E3779B1u ^ seed;
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    x[i] = __float2bfloat16((float)(h >> 8) * (2.0f / 16777216.0f) - 1.0f);
  }
}

const char* cublas_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "a cuBLAS error";
  }
}

}  // namespace

extern "C" da_status cli_gpu_measure_ceiling(int repeats, double* gflops, double* seconds) {
  const size_t n = CLI_GPU_CEILING_SIZE;
  const size_t count = n * n;
  cudaEvent_t begin = nullptr, start = nullptr, stop = nullptr;
  Cublas cublas;
  cublasHandle_t handle = nullptr;
  void* a = nullptr;
  void* b = nullptr;
  void* c = nullptr;
  da_status st = DA_STATUS_SUCCESS;
  cudaError_t e = cudaSuccess;
  cublasStatus_t cs = CUBLAS_STATUS_SUCCESS;
  const float alpha = 1.0f, beta = 0.0f;
  float best_ms = 0.0f, total_ms = 0.0f;
  *gflops = 0.0;
  *seconds = 0.0;
  if ((st = load_cublas(&cublas)) != DA_STATUS_SUCCESS) goto done;
  if ((e = cudaEventCreate(&begin)) != cudaSuccess ||
      (e = cudaEventCreate(&start)) != cudaSuccess ||
      (e = cudaEventCreate(&stop)) != cudaSuccess || (e = cudaEventRecord(begin)) != cudaSuccess)
    goto cuda_error;
  if ((e = cudaMalloc(&a, count * 2)) != cudaSuccess ||
      (e = cudaMalloc(&b, count * 2)) != cudaSuccess ||
      (e = cudaMalloc(&c, count * 2)) != cudaSuccess)
    goto cuda_error;
  fill_random<<<1024, 256>>>(static_cast<__nv_bfloat16*>(a), count, 1u);
  fill_random<<<1024, 256>>>(static_cast<__nv_bfloat16*>(b), count, 2u);
  if ((e = cudaGetLastError()) != cudaSuccess) goto cuda_error;
  if ((cs = cublas.create(&handle)) != CUBLAS_STATUS_SUCCESS) goto cublas_error;
  for (int i = 0; i < kWarmups + repeats; ++i) {
    if (i >= kWarmups && (e = cudaEventRecord(start)) != cudaSuccess) goto cuda_error;
    cs = cublas.gemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, (int)n, (int)n, (int)n, &alpha, a,
                     CUDA_R_16BF, (int)n, b, CUDA_R_16BF, (int)n, &beta, c, CUDA_R_16BF, (int)n,
                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (cs != CUBLAS_STATUS_SUCCESS) goto cublas_error;
    if (i < kWarmups) continue;
    float ms = 0.0f;
    if ((e = cudaEventRecord(stop)) != cudaSuccess ||
        (e = cudaEventSynchronize(stop)) != cudaSuccess ||
        (e = cudaEventElapsedTime(&ms, start, stop)) != cudaSuccess)
      goto cuda_error;
    if (best_ms == 0.0f || ms < best_ms) best_ms = ms;
  }
  if ((e = cudaEventElapsedTime(&total_ms, begin, stop)) != cudaSuccess) goto cuda_error;
  *gflops = 2.0 * (double)n * (double)n * (double)n / (best_ms * 1e-3) * 1e-9;
  *seconds = total_ms * 1e-3;
  goto done;
cuda_error:
  cudaGetLastError();
  st = cli_gpu_fail(DA_STATUS_CUDA_ERROR, "the GEMM ceiling: %s (%s)", cudaGetErrorName(e),
                    cudaGetErrorString(e));
  goto done;
cublas_error:
  st = cli_gpu_fail(DA_STATUS_CUDA_ERROR, "the GEMM ceiling: cuBLAS returned %s (%d)",
                    cublas_name(cs), (int)cs);
done:
  if (handle != nullptr) cublas.destroy(handle);
  if (cublas.library != nullptr) dlclose(cublas.library);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
  if (begin != nullptr) cudaEventDestroy(begin);
  if (start != nullptr) cudaEventDestroy(start);
  if (stop != nullptr) cudaEventDestroy(stop);
  return st;
}
