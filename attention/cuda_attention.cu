// placeholder: replaced by the real host side
#include "attention/dilated_attention.h"
#include "common/error.h"
extern "C" {
da_status da_attention_cuda_supported(const da_attention_params*, da_dtype) {
  return da_error_set(DA_STATUS_NOT_SUPPORTED, "not yet");
}
da_status da_attention_forward_cuda(const da_attention_params*, const da_attention_batch*, da_dtype,
                                    const void*, const void*, const void*, void*, float*, void*) {
  return da_error_set(DA_STATUS_NOT_SUPPORTED, "not yet");
}
da_status da_attention_backward_cuda(const da_attention_params*, const da_attention_batch*, da_dtype,
                                     const void*, const void*, const void*, const void*,
                                     const float*, const void*, void*, void*, void*, void*) {
  return da_error_set(DA_STATUS_NOT_SUPPORTED, "not yet");
}
}
