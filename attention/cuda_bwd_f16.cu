// Backward kernels (delta, dK/dV, dQ) for f16 inputs.
#include "attention/cuda_kernels.cuh"
#include "attention/cuda_sm90.cuh"

namespace da_cuda {

cudaError_t launch_backward_f16(const KernelArgs& a, cudaStream_t stream) {
  return dispatch_backward<__half>(a, stream);
}

}  // namespace da_cuda
