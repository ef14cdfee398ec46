// Forward kernels for f16 inputs (one translation unit per pass and dtype, so
// nvcc compiles them in parallel).
#include "attention/cuda_kernels.cuh"
#include "attention/cuda_sm90.cuh"

namespace da_cuda {

cudaError_t launch_forward_f16(const KernelArgs& a, cudaStream_t stream) {
  return dispatch_forward<__half>(a, stream);
}

}  // namespace da_cuda
