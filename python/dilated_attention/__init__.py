"""dilated_attention: Python binding (ctypes) of libdilated_attention.so.

LongNet-style dilated attention exactly as docs/semantics.md defines it, on
numpy arrays (CPU, float32) and torch tensors (CUDA bf16/fp16 zero-copy on the
current stream, or CPU float32; differentiable). torch is imported only when a
torch tensor is passed: numpy alone is enough to import and use the package.

The library is found by load_library(): an explicit path, else $DA_LIBRARY,
else next to the package, else <repo>/bazel-bin/libdilated_attention.so.
"""
from ._capi import DAError, load_library
from ._functional import (count_flops, cuda_supported, dilated_attention,
                          dilated_attention_backward, pool_stats, reset_pool_peak, version)

__all__ = [
    "DAError",
    "count_flops",
    "cuda_supported",
    "dilated_attention",
    "dilated_attention_backward",
    "load_library",
    "pool_stats",
    "reset_pool_peak",
    "version",
]
