// Backward kernels (delta, dK/dV, dQ) for bf16 inputs.
#include "attention/cuda_kernels.cuh"
#include "attention/cuda_sm90.cuh"

namespace da_cuda {

cudaError_t launch_backward_bf16(const KernelArgs& a, cudaStream_t stream) {
  return dispatch_backward<__nv_bfloat16>(a, stream);
}

}  // namespace da_cuda
