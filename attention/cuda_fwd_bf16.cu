// Forward kernels for bf16 inputs (one translation unit per pass and dtype, so
// nvcc compiles them in parallel).
#include "attention/cuda_kernels.cuh"
#include "attention/cuda_sm90.cuh"

namespace da_cuda {

cudaError_t launch_forward_bf16(const KernelArgs& a, cudaStream_t stream) {
  return dispatch_forward<__nv_bfloat16>(a, stream);
}

}  // namespace da_cuda
