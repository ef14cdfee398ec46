"""The public functions: argument checks, the numpy (CPU) path, and dispatch of
torch tensors to _torch (imported only when a torch tensor arrives)."""
import ctypes
import operator
import sys

import numpy as np

from . import _capi
from ._capi import call, lib

_C_INT_MIN, _C_INT_MAX = -(2 ** 31), 2 ** 31 - 1


def _is_torch(x):
    torch = sys.modules.get("torch")  # no torch imported: x cannot be a tensor
    return torch is not None and isinstance(x, torch.Tensor)


def _c_ints(name, values):
    if isinstance(values, (int, np.integer)):
        values = [values]
    try:
        ints = [operator.index(x) for x in values]
    except TypeError:
        raise TypeError("%s must be a sequence of ints, got %r" % (name, values)) from None
    for i, x in enumerate(ints):
        if not _C_INT_MIN <= x <= _C_INT_MAX:
            raise ValueError("%s[%d]=%d does not fit a C int" % (name, i, x))
    return (ctypes.c_int * len(ints))(*ints)


def _cu_seqlens(cu_seqlens):
    """cu_seqlens as a contiguous host int64 array (or None)."""
    if cu_seqlens is None:
        return None
    if _is_torch(cu_seqlens):
        if cu_seqlens.device.type != "cpu":
            raise ValueError("cu_seqlens must be a host (CPU) array, got a tensor on %s: the "
                             "library reads it on the host (call .cpu() once per batch)"
                             % cu_seqlens.device)
        cu_seqlens = cu_seqlens.numpy()
    cu = np.asarray(cu_seqlens)
    if cu.ndim != 1 or cu.size < 2:
        raise ValueError("cu_seqlens must be 1-D with batch + 1 >= 2 entries, got shape %s"
                         % (cu.shape,))
    if not np.issubdtype(cu.dtype, np.integer):
        raise TypeError("cu_seqlens must hold integers, got %s" % cu.dtype)
    return np.ascontiguousarray(cu, dtype=np.int64)


class _Options:
    """The attention options of one call (no tensor shapes), checked once."""

    def __init__(self, segment_lengths, dilation_rates, mode="longnet", offset="default",
                 causal=False, softmax_scale=None):
        self.w = _c_ints("segment_lengths", segment_lengths)
        self.r = _c_ints("dilation_rates", dilation_rates)
        if mode not in _capi.MODES:
            raise ValueError("mode=%r is not one of %s" % (mode, ", ".join(_capi.MODES)))
        if offset not in _capi.OFFSETS:
            raise ValueError("offset=%r is not one of %s" % (offset, ", ".join(_capi.OFFSETS)))
        if softmax_scale is not None and float(softmax_scale) == 0.0:
            # 0 means "the default" in C; from Python that is None.
            raise ValueError("softmax_scale=0 is not a scale; pass None for 1/sqrt(head_dim)")
        self.mode, self.offset, self.causal = mode, offset, bool(causal)
        self.softmax_scale = 0.0 if softmax_scale is None else float(softmax_scale)

    def c_params(self, num_heads, num_kv_heads, head_dim):
        """da_attention_params pointing into self's lists (keep self alive)."""
        p = lib().da_attention_params_default()
        p.segment_lengths = ctypes.cast(self.w, ctypes.POINTER(ctypes.c_int))
        p.num_segment_lengths = len(self.w)
        p.dilation_rates = ctypes.cast(self.r, ctypes.POINTER(ctypes.c_int))
        p.num_dilation_rates = len(self.r)
        p.mode = _capi.MODES[self.mode]
        p.offset_policy = _capi.OFFSETS[self.offset]
        p.causal = int(self.causal)
        p.softmax_scale = self.softmax_scale
        p.num_heads, p.num_kv_heads, p.head_dim = num_heads, num_kv_heads, head_dim
        return p


def _c_batch(batch, seqlen, cu):
    if cu is None:
        return _capi.AttentionBatch(batch, seqlen, None)
    return _capi.AttentionBatch(cu.size - 1, 0, cu.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)))


class _Plan:
    """Everything one call passes to C: params and batch built from the options
    and the tensor shapes, plus the shapes every tensor must have."""

    def __init__(self, options, q_shape, k_shape, v_shape, cu_seqlens):
        q_shape, k_shape, v_shape = tuple(q_shape), tuple(k_shape), tuple(v_shape)
        cu = _cu_seqlens(cu_seqlens)
        if cu is None:
            if len(q_shape) != 4:
                raise ValueError("q must be [batch, seqlen, heads, head_dim] (or packed "
                                 "[tokens, heads, head_dim] with cu_seqlens), got shape %s"
                                 % (q_shape,))
            b, n, h, d = q_shape
            if len(k_shape) != 4 or k_shape[:2] != (b, n) or k_shape[3] != d:
                raise ValueError("k must be [%d, %d, kv_heads, %d] to match q %s, got shape %s"
                                 % (b, n, d, q_shape, k_shape))
            self.lse_shape = (b, n, h)
        else:
            if len(q_shape) != 3:
                raise ValueError("with cu_seqlens, q must be packed [tokens, heads, head_dim], "
                                 "got shape %s" % (q_shape,))
            tokens, h, d = q_shape
            if len(k_shape) != 3 or k_shape[0] != tokens or k_shape[2] != d:
                raise ValueError("k must be [%d, kv_heads, %d] to match q %s, got shape %s"
                                 % (tokens, d, q_shape, k_shape))
            if cu[-1] != tokens:
                raise ValueError("cu_seqlens[-1]=%d but q holds %d tokens" % (cu[-1], tokens))
            b, n = cu.size - 1, 0
            self.lse_shape = (tokens, h)
        if v_shape != k_shape:
            raise ValueError("v must have k's shape %s, got %s" % (k_shape, v_shape))
        self.options, self.cu = options, cu  # referenced by params and batch
        self.q_shape, self.kv_shape = q_shape, k_shape
        self.params = options.c_params(h, k_shape[-2], d)
        self.batch = _c_batch(b, n, cu)

    def c_args(self):
        return ctypes.byref(self.params), ctypes.byref(self.batch)

    def check_shape(self, name, shape, want):
        if tuple(shape) != want:
            raise ValueError("%s must have shape %s, got %s" % (name, want, tuple(shape)))


def _host_input(name, x):
    """x as a C-contiguous float32 array (a copy only when it is not one)."""
    if not isinstance(x, np.ndarray):
        raise TypeError("%s must be a numpy.ndarray or a torch.Tensor, got %s"
                        % (name, type(x).__name__))
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError("%s must hold floating-point numbers (float32; other float types are "
                        "converted), got %s" % (name, x.dtype))
    return np.ascontiguousarray(x, dtype=np.float32)


def _forward_host(plan, q, k, v, with_lse=True):
    """CPU forward on C-contiguous float32 arrays of the plan's shapes."""
    out = np.empty(plan.q_shape, np.float32)
    lse = np.empty(plan.lse_shape, np.float32) if with_lse else None
    call("da_attention_forward_cpu", *plan.c_args(), q.ctypes.data, k.ctypes.data,
         v.ctypes.data, out.ctypes.data, None if lse is None else lse.ctypes.data)
    return out, lse


def _backward_host(plan, q, k, v, out, lse, dout):
    """CPU backward on C-contiguous float32 arrays of the plan's shapes."""
    dq = np.empty(plan.q_shape, np.float32)
    dk = np.empty(plan.kv_shape, np.float32)
    dv = np.empty(plan.kv_shape, np.float32)
    call("da_attention_backward_cpu", *plan.c_args(), q.ctypes.data, k.ctypes.data,
         v.ctypes.data, out.ctypes.data, lse.ctypes.data, dout.ctypes.data, dq.ctypes.data,
         dk.ctypes.data, dv.ctypes.data)
    return dq, dk, dv


def dilated_attention(q, k, v, segment_lengths, dilation_rates, *, mode="longnet",
                      offset="default", causal=False, softmax_scale=None, cu_seqlens=None,
                      return_lse=False):
    """Dilated attention as docs/semantics.md defines it.

    q: [b, n, h, d]; k, v: [b, n, h_kv, d] (h % h_kv == 0), or packed
    [tokens, h, d] / [tokens, h_kv, d] with cu_seqlens (host, int, batch + 1
    offsets as flash-attn's). segment_lengths / dilation_rates: the patterns
    (w_i, r_i). mode: "longnet" (every head, every pattern, one softmax) or
    "head_group". offset: "default", "head", "group" or "block". softmax_scale:
    None for 1/sqrt(d).

    numpy arrays run on the CPU in float32 (other float types are converted,
    non-contiguous arrays copied) and give numpy results. torch tensors: CUDA
    bf16/fp16 run on the GPU on the current stream, zero-copy; CPU float32
    tensors run on the CPU; both are differentiable (loss.backward()).

    Returns out (q's shape), or (out, lse) with return_lse: lse is float32
    [b, n, h] (or [tokens, h]), the natural log of the softmax denominator,
    -inf where no key was seen. Raises DAError when the library refuses the call
    (its sentence names the rule), ValueError/TypeError for bad Python arguments.
    """
    options = _Options(segment_lengths, dilation_rates, mode, offset, causal, softmax_scale)
    if _is_torch(q) or _is_torch(k) or _is_torch(v):
        from . import _torch
        out, lse = _torch.forward(options, q, k, v, cu_seqlens)
    else:
        q, k, v = _host_input("q", q), _host_input("k", k), _host_input("v", v)
        plan = _Plan(options, q.shape, k.shape, v.shape, cu_seqlens)
        out, lse = _forward_host(plan, q, k, v, with_lse=return_lse)
    return (out, lse) if return_lse else out


def dilated_attention_backward(q, k, v, out, lse, dout, segment_lengths, dilation_rates, *,
                               mode="longnet", offset="default", causal=False,
                               softmax_scale=None, cu_seqlens=None):
    """The exact gradient of dilated_attention: returns (dq, dk, dv).

    out and lse are the forward's results for the same inputs and options; dout
    is dL/dout. Same layouts and backends as dilated_attention (numpy on the CPU;
    torch CUDA 16-bit on the GPU, torch CPU float32 on the CPU), no autograd.
    """
    options = _Options(segment_lengths, dilation_rates, mode, offset, causal, softmax_scale)
    if any(_is_torch(x) for x in (q, k, v, out, lse, dout)):
        from . import _torch
        return _torch.backward(options, q, k, v, out, lse, dout, cu_seqlens)
    q, k, v = _host_input("q", q), _host_input("k", k), _host_input("v", v)
    out, lse, dout = _host_input("out", out), _host_input("lse", lse), _host_input("dout", dout)
    plan = _Plan(options, q.shape, k.shape, v.shape, cu_seqlens)
    plan.check_shape("out", out.shape, plan.q_shape)
    plan.check_shape("dout", dout.shape, plan.q_shape)
    plan.check_shape("lse", lse.shape, plan.lse_shape)
    return _backward_host(plan, q, k, v, out, lse, dout)


def count_flops(seqlen, num_heads, head_dim, segment_lengths, dilation_rates, *, batch=1,
                mode="longnet", offset="default", causal=False, with_backward=False,
                cu_seqlens=None):
    """Effective FLOPs of one pass as docs/semantics.md counts them: 4 * head_dim
    per (query, key) product, with multiplicity and causality, over heads and
    sequences; 3.5x that with_backward. With cu_seqlens, batch and seqlen come
    from it (seqlen is ignored)."""
    options = _Options(segment_lengths, dilation_rates, mode, offset, causal)
    params = options.c_params(operator.index(num_heads), 0, operator.index(head_dim))
    cu = _cu_seqlens(cu_seqlens)
    c_batch = _c_batch(operator.index(batch), 0 if cu is not None else operator.index(seqlen),
                       cu)
    flops = ctypes.c_double()
    call("da_attention_count_flops", ctypes.byref(params), ctypes.byref(c_batch),
         int(bool(with_backward)), ctypes.byref(flops))
    return flops.value


def _dtype_code(dtype):
    names = {"bf16": _capi.DTYPE_BF16, "bfloat16": _capi.DTYPE_BF16,
             "torch.bfloat16": _capi.DTYPE_BF16, "f16": _capi.DTYPE_F16,
             "fp16": _capi.DTYPE_F16, "float16": _capi.DTYPE_F16, "half": _capi.DTYPE_F16,
             "torch.float16": _capi.DTYPE_F16}
    code = names.get(str(dtype))  # str(): torch dtypes without importing torch
    if code is None:
        raise ValueError("dtype=%r: the GPU passes take bf16 or f16 (torch.bfloat16, "
                         "torch.float16, 'bf16', 'f16')" % (dtype,))
    return code


def cuda_supported(head_dim, dtype, *, num_heads=1, num_kv_heads=None, segment_lengths=(1,),
                   dilation_rates=(1,), mode="longnet", offset="default", causal=False,
                   softmax_scale=None, device=None):
    """(True, "") when the GPU passes can serve this configuration with dtype
    (bf16/f16) on the current CUDA device (or `device`, via torch); otherwise
    (False, "DA_STATUS_...: why")."""
    options = _Options(segment_lengths, dilation_rates, mode, offset, causal, softmax_scale)
    params = options.c_params(operator.index(num_heads), operator.index(num_kv_heads or 0),
                              operator.index(head_dim))
    code = _dtype_code(dtype)
    if device is None:
        result = _capi.status_of("da_attention_cuda_supported", ctypes.byref(params), code)
    else:
        import torch
        with torch.cuda.device(device):
            result = _capi.status_of("da_attention_cuda_supported", ctypes.byref(params), code)
    status, status_name, sentence = result
    if status == _capi.STATUS_SUCCESS:
        return True, ""
    return False, "%s: %s" % (status_name, sentence)


def version():
    """"MAJOR.MINOR.PATCH" of the library actually loaded."""
    return lib().da_version_string().decode("ascii")


def _default_pool(device):
    pool = ctypes.c_void_p()
    call("da_mempool_default", operator.index(device), ctypes.byref(pool))
    return pool


def pool_stats(device=0):
    """Counters of the library's default memory pool of CUDA `device` (-1: the
    host pool) as a dict (da_mempool_stats' fields: allocated_bytes,
    peak_allocated_bytes, reserved_bytes, ...). The GPU passes take their
    workspace from this pool. Creates the pool if it does not exist yet (no
    memory is taken); DAError (DA_STATUS_NO_DEVICE) without a GPU."""
    stats = _capi.MempoolStats()
    call("da_mempool_get_stats", _default_pool(device), ctypes.byref(stats))
    return {name: getattr(stats, name) for name, _ in stats._fields_}


def reset_pool_peak(device=0):
    """Sets the peak counters of `device`'s default pool to their current values
    (e.g. to measure the workspace peak of one step)."""
    call("da_mempool_reset_peak_stats", _default_pool(device))
