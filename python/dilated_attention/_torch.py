"""torch tensors: CUDA bf16/fp16 on the GPU (zero-copy, on the current stream),
CPU float32 on the CPU (through numpy views), differentiable through one
autograd.Function. Imported only when a torch tensor reaches the package."""
import torch
from torch.autograd.function import once_differentiable

from . import _capi
from ._capi import call
from ._functional import _Plan, _backward_host, _forward_host

_GPU_DTYPES = {torch.bfloat16: _capi.DTYPE_BF16, torch.float16: _capi.DTYPE_F16}


def _tensor(name, x, like=None, dtype=None):
    """x, contiguous, after checking it is a tensor the backends take: on `like`'s
    device, of `dtype` (default: CUDA bf16/fp16, CPU float32, like's dtype)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError("%s must be a torch.Tensor like q, got %s" % (name, type(x).__name__))
    if like is not None and x.device != like.device:
        raise ValueError("%s is on %s but q is on %s" % (name, x.device, like.device))
    if dtype is None and like is not None:
        dtype = like.dtype
    if dtype is not None:
        if x.dtype != dtype:
            raise TypeError("%s must be %s like q, got %s" % (name, dtype, x.dtype))
    elif x.is_cuda:
        if x.dtype not in _GPU_DTYPES:
            raise TypeError("%s: CUDA tensors must be torch.bfloat16 or torch.float16 (the GPU "
                            "passes are 16-bit), got %s" % (name, x.dtype))
    elif x.device.type == "cpu":
        if x.dtype != torch.float32:
            raise TypeError("%s: CPU tensors must be torch.float32, got %s" % (name, x.dtype))
    else:
        raise TypeError("%s is on %s; the library runs on CUDA and the CPU" % (name, x.device))
    return x.contiguous()


def _stream_of(device):
    return torch.cuda.current_stream(device).cuda_stream


def _host(x):
    return x.detach().numpy()


def _forward(plan, q, k, v):
    if not q.is_cuda:
        out, lse = _forward_host(plan, _host(q), _host(k), _host(v))
        return torch.from_numpy(out), torch.from_numpy(lse)
    out = torch.empty_like(q)
    lse = torch.empty(plan.lse_shape, dtype=torch.float32, device=q.device)
    with torch.cuda.device(q.device):
        call("da_attention_forward_cuda", *plan.c_args(), _GPU_DTYPES[q.dtype], q.data_ptr(),
             k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(), _stream_of(q.device))
    return out, lse


def _backward(plan, q, k, v, out, lse, dout):
    if not q.is_cuda:
        grads = _backward_host(plan, *(_host(x) for x in (q, k, v, out, lse, dout)))
        return tuple(torch.from_numpy(g) for g in grads)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    with torch.cuda.device(q.device):
        call("da_attention_backward_cuda", *plan.c_args(), _GPU_DTYPES[q.dtype], q.data_ptr(),
             k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(), dout.data_ptr(),
             dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), _stream_of(q.device))
    return dq, dk, dv


class DilatedAttentionFunction(torch.autograd.Function):
    """(q, k, v, plan) -> (out, lse); lse is not differentiable."""

    @staticmethod
    def forward(ctx, q, k, v, plan):
        out, lse = _forward(plan, q, k, v)
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan = plan
        return out, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dout = _tensor("dout", dout, like=q)
        dq, dk, dv = _backward(ctx.plan, q, k, v, out, lse, dout)
        return dq, dk, dv, None


def forward(options, q, k, v, cu_seqlens):
    q = _tensor("q", q)
    k, v = _tensor("k", k, like=q), _tensor("v", v, like=q)
    plan = _Plan(options, q.shape, k.shape, v.shape, cu_seqlens)
    return DilatedAttentionFunction.apply(q, k, v, plan)


def backward(options, q, k, v, out, lse, dout, cu_seqlens):
    q = _tensor("q", q)
    k, v = _tensor("k", k, like=q), _tensor("v", v, like=q)
    out, dout = _tensor("out", out, like=q), _tensor("dout", dout, like=q)
    lse = _tensor("lse", lse, like=q, dtype=torch.float32)
    plan = _Plan(options, q.shape, k.shape, v.shape, cu_seqlens)
    plan.check_shape("out", out.shape, plan.q_shape)
    plan.check_shape("dout", dout.shape, plan.q_shape)
    plan.check_shape("lse", lse.shape, plan.lse_shape)
    with torch.no_grad():
        return _backward(plan, q, k, v, out, lse, dout)
