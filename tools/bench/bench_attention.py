#!/usr/bin/env python3
"""Side-by-side GPU benchmark of dilated attention: our CUDA kernels (through the
Python binding in python/dilated_attention) against PyTorch implementations of the
same mathematics and against dense SDPA, on the same inputs in the same process.

  ours-longnet   our kernels, LongNet mode (docs/semantics.md)
  ours-hg        our kernels, head-group mode
  torch-hg       (a) the head-group algorithm of fkodom/dilated-attention-pytorch,
                 written here over torch SDPA (peer of ours-hg)
  torch-longnet  (b) exact LongNet in PyTorch: per-pattern flash attention with LSE,
                 log-sum-exp merge, exact backward (peer of ours-longnet)
  sdpa-flash     (c) dense attention, torch SDPA flash backend
  sdpa-cudnn     (c) dense attention, torch SDPA cuDNN backend

Usage (see tools/bench/README.md):
  python3 tools/bench/bench_attention.py              # full run, ~8 min budget
  python3 tools/bench/bench_attention.py --quick      # < 2 min subset
  python3 tools/bench/bench_attention.py --self-test  # references vs a dense oracle
  python3 tools/bench/bench_attention.py --max-n-search

Only the standard library is imported at module level: argument parsing, FLOP
counting and table printing work without torch.
"""

import argparse
import ctypes
import csv
import gc
import json
import math
import os
import statistics
import sys
import time
import warnings

PROCESS_START = time.monotonic()  # the time budget counts from here
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LONGNET_SEGMENTS = (2048, 4096, 8192, 16384, 32768)
LONGNET_DILATIONS = (1, 2, 4, 8, 16)

IMPLS = ("ours-longnet", "ours-hg", "torch-longnet", "torch-hg", "sdpa-flash", "sdpa-cudnn")
IMPL_ALIASES = {
    "all": IMPLS,
    "ours": ("ours-longnet", "ours-hg"),
    "a": ("torch-hg",),
    "b": ("torch-longnet",),
    "c": ("sdpa-flash", "sdpa-cudnn"),
    "dense": ("sdpa-flash", "sdpa-cudnn"),
    "none": (),
}
# Which PyTorch implementation each of ours is compared with (the speedup column).
PEER_OF = {"ours-longnet": "torch-longnet", "ours-hg": "torch-hg"}
DILATED_MODE = {"ours-longnet": "longnet", "torch-longnet": "longnet",
                "ours-hg": "head_group", "torch-hg": "head_group"}

GIB = float(1 << 30)
# The backward is counted as 2.5x the forward (docs/semantics.md, "Counting work").
FWD_BWD_FLOP_FACTOR = 3.5


class Unsupported(Exception):
    """A case an implementation cannot run by construction (not a failure)."""


# ---------------------------------------------------------------------------
# Work counting (pure Python): docs/semantics.md, "Segments and selection" and
# "Counting work". Used when the binding is missing and to cross-check it.

def head_group_sizes(num_heads, num_groups):
    """floor(h/k) heads per group, the first h mod k groups one head larger."""
    base, extra = divmod(num_heads, num_groups)
    return [base + (1 if i < extra else 0) for i in range(num_groups)]


def _selected_rows(seg_len, r, offset):
    """Positions m in [0, seg_len) with m mod r == offset."""
    return 0 if seg_len <= offset else (seg_len - offset + r - 1) // r


def _pattern_pairs(n, w, r, offset, causal):
    """(query, key) products of one head under one pattern over a sequence of n."""
    def per_segment(seg_len):
        c = _selected_rows(seg_len, r, offset)
        return c * (c + 1) // 2 if causal else c * c
    full, rest = divmod(n, w)
    return full * per_segment(w) + (per_segment(rest) if rest else 0)


def count_pairs(n, num_heads, segments, dilations, mode="longnet", causal=False, batch=1):
    """Score products with multiplicity, default offsets (head in LongNet mode,
    group in head-group mode)."""
    total = 0
    if mode == "longnet":
        for w, r in zip(segments, dilations):
            total += sum(_pattern_pairs(n, w, r, j % r, causal) for j in range(num_heads))
    elif mode == "head_group":
        sizes = head_group_sizes(num_heads, len(segments))
        for i, (w, r) in enumerate(zip(segments, dilations)):
            total += sizes[i] * _pattern_pairs(n, w, r, i % r, causal)
    else:
        raise ValueError("mode must be longnet or head_group, not %r" % (mode,))
    return total * batch


def dilated_flops_python(n, num_heads, head_dim, segments, dilations, mode, causal,
                         with_backward, batch=1):
    pairs = count_pairs(n, num_heads, segments, dilations, mode, causal, batch)
    return 4.0 * head_dim * pairs * (FWD_BWD_FLOP_FACTOR if with_backward else 1.0)


def dense_flops(n, num_heads, head_dim, causal, with_backward, batch=1):
    pairs = n * (n + 1) // 2 if causal else n * n
    return 4.0 * head_dim * pairs * num_heads * batch * (
        FWD_BWD_FLOP_FACTOR if with_backward else 1.0)


def brute_force_pairs(n, num_heads, segments, dilations, mode, causal):
    """Counts pairs by enumerating them: the definition, for the self-test."""
    sizes = head_group_sizes(num_heads, len(segments))
    total = 0
    for i, (w, r) in enumerate(zip(segments, dilations)):
        for j in range(num_heads):
            if mode == "head_group":
                group = next(g for g in range(len(sizes)) if j < sum(sizes[:g + 1]))
                if group != i:
                    continue
                offset = i % r
            else:
                offset = j % r
            for p in range(n):
                seg_start = (p // w) * w
                if (p - seg_start) % r != offset:
                    continue
                for t in range(seg_start, min(seg_start + w, n)):
                    if (t - seg_start) % r == offset and (not causal or t <= p):
                        total += 1
    return total


# ---------------------------------------------------------------------------
# Formatting (pure Python).

def fmt_n(n):
    if n % (1 << 20) == 0:
        return "%dM" % (n >> 20)
    if n % 1024 == 0:
        return "%dK" % (n >> 10)
    return str(n)


def _clip(text, width):
    return text if len(text) <= width else text[:width - 3] + "..."


def _cell(value, spec):
    return "" if value is None else spec % value


def format_table(rows, ceiling_tflops):
    """One line per case; status text replaces the numbers of cases that did not run."""
    header = ("impl", "d", "n", "pass", "ms", "TFLOP/s", "%ceil", "peak GiB",
              "extra GiB", "speedup", "note")
    lines = []
    for row in rows:
        ok = row.get("status") == "ok"
        pct = None
        if ok and ceiling_tflops:
            pct = 100.0 * row["tflops"] / ceiling_tflops
        lines.append((
            row["impl"], str(row["d"]), fmt_n(row["n"]), row["pass"],
            _cell(row.get("ms"), "%.2f") if ok else "",
            _cell(row.get("tflops"), "%.1f") if ok else "",
            _cell(pct, "%.0f%%"),
            _cell(row.get("peak_gib"), "%.2f") if ok else "",
            _cell(row.get("extra_gib"), "%.2f") if ok else "",
            _cell(row.get("speedup"), "x%.2f"),
            "" if ok else _clip(row.get("status", ""), 60),
        ))
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
           "  ".join("-" * w for w in widths)]
    for l in lines:
        out.append("  ".join(c.rjust(w) if i in (1, 2) or 4 <= i <= 9 else c.ljust(w)
                             for i, (c, w) in enumerate(zip(l, widths))).rstrip())
    return "\n".join(out)


def add_speedups(rows):
    """speedup = peer ms / ours ms on the same (d, n, pass)."""
    index = {(r["impl"], r["d"], r["n"], r["pass"]): r for r in rows}
    for row in rows:
        peer = PEER_OF.get(row["impl"])
        if not peer or row.get("status") != "ok":
            continue
        other = index.get((peer, row["d"], row["n"], row["pass"]))
        if other and other.get("status") == "ok":
            row["speedup"] = other["ms"] / row["ms"]
            row["speedup_vs"] = peer


# ---------------------------------------------------------------------------
# Arguments.

def _parse_size(token):
    """32768, 32k, 1m, 4M -> tokens."""
    t = token.strip().lower()
    mult = 1
    if t.endswith("k"):
        mult, t = 1024, t[:-1]
    elif t.endswith("m"):
        mult, t = 1 << 20, t[:-1]
    return int(t) * mult


def _size_list(text):
    return [_parse_size(x) for x in text.split(",") if x.strip()]


def _impl_list(text):
    out = []
    for name in (x.strip() for x in text.split(",") if x.strip()):
        names = IMPL_ALIASES.get(name, (name,))
        for n in names:
            if n not in IMPLS:
                raise argparse.ArgumentTypeError(
                    "unknown impl %r (choose from %s or %s)"
                    % (n, ", ".join(IMPLS), ", ".join(IMPL_ALIASES)))
            if n not in out:
                out.append(n)
    return out


def _pass_list(text):
    out = [x.strip() for x in text.split(",") if x.strip()]
    for p in out:
        if p not in ("fwd", "fwdbwd"):
            raise argparse.ArgumentTypeError("pass must be fwd or fwdbwd, not %r" % p)
    return out


QUICK = dict(d=[64], n=[32768, 131072], iters=3, warmup=1, budget_s=110.0, case_max_s=5.0)
FULL = dict(d=[64, 128], n=[32768, 131072, 524288, 1048576], iters=10, warmup=2,
            budget_s=480.0, case_max_s=10.0)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Dilated attention: ours vs PyTorch peers vs dense SDPA (GPU).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--d", type=_size_list, default=None, help="head dims (default 64,128)")
    p.add_argument("--n", type=_size_list, default=None,
                   help="sequence lengths, e.g. 32k,128k,512k,1m (default all four)")
    p.add_argument("--pass", dest="passes", type=_pass_list, default=["fwd", "fwdbwd"])
    p.add_argument("--impls", type=_impl_list, default=list(IMPLS),
                   help="comma list of %s or aliases %s" % (",".join(IMPLS),
                                                           ",".join(IMPL_ALIASES)))
    p.add_argument("--h", type=int, default=16, help="heads")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                   help="fp32 only for --cpu (ours runs 16-bit on the GPU)")
    p.add_argument("--causal", action="store_true")
    p.add_argument("--segments", type=_size_list, default=list(LONGNET_SEGMENTS))
    p.add_argument("--dilations", type=_size_list, default=list(LONGNET_DILATIONS))
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default 10)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default 2)")
    p.add_argument("--case-max-s", type=float, default=None,
                   help="fewer timed iterations when one case would take longer (default 10)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="total wall time; later cases print 'skipped: time budget' (default 480)")
    p.add_argument("--dense-max-s", type=float, default=1.5,
                   help="skip dense SDPA when one iteration is estimated to take longer")
    p.add_argument("--dense-assumed-tflops", type=float, default=300.0,
                   help="dense throughput assumed for the estimate until one was measured")
    p.add_argument("--check-n", type=_parse_size, default=32768,
                   help="sequence length of the correctness line")
    p.add_argument("--no-check", action="store_true", help="skip the correctness line")
    p.add_argument("--no-ceiling", action="store_true", help="skip the matmul ceiling")
    p.add_argument("--quick", action="store_true",
                   help="d=64, n=32k,128k, 3 iterations: under 2 minutes on an H100")
    p.add_argument("--self-test", action="store_true",
                   help="check the PyTorch references (and ours, if loadable) against a "
                        "dense masked-softmax oracle on tiny shapes, then exit")
    p.add_argument("--max-n-search", action="store_true",
                   help="find the largest n (1M, 2M, 4M, ...) where ours LongNet fwd+bwd "
                        "fits, report memory beyond tensors+grads, then exit")
    p.add_argument("--search-d", type=int, default=64)
    p.add_argument("--search-start", type=_parse_size, default=1 << 20)
    p.add_argument("--search-max", type=_parse_size, default=64 << 20)
    p.add_argument("--cpu", action="store_true",
                   help="run the harness on the CPU (tests this script without a GPU: "
                        "no memory figures, cuDNN fails, the numbers mean nothing)")
    p.add_argument("--library", default=None,
                   help="path of libdilated_attention.so (sets DA_LIBRARY; default: "
                        "DA_LIBRARY, else gpu_carry/ or bazel-bin/ of this checkout)")
    p.add_argument("--json", default=None, help="write all results as JSON (rewritten "
                                                "after every case)")
    p.add_argument("--csv", default=None, help="write the table rows as CSV")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if len(args.segments) != len(args.dilations) or not args.segments:
        p.error("--segments and --dilations need the same, nonzero number of entries")
    for w, r in zip(args.segments, args.dilations):
        if not 1 <= r <= w:
            p.error("every pattern needs 1 <= r <= w (w=%d, r=%d)" % (w, r))
    args.warmup = max(1, args.warmup)
    args.iters = max(1, args.iters)
    return args


# ---------------------------------------------------------------------------
# PyTorch side: imported lazily.

_T = {}


def _torch():
    if "torch" not in _T:
        import torch
        import torch.nn.functional as F
        _T["torch"], _T["F"] = torch, F
    return _T["torch"]


def _F():
    _torch()
    return _T["F"]


def _dtype(name):
    torch = _torch()
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _acc_dtype(dtype):
    torch = _torch()
    return torch.float64 if dtype == torch.float64 else torch.float32


class _Dilation:
    """Pattern (w, r) over [b, n, h, ...] tensors with the paper's head offsets
    (o = j mod r). views(x) returns strided views [b, S, L, <heads>, ...] of the
    rows each head selects; one view covers all heads when r divides h (the rows of
    head a*r + c are position c of every r-block: a diagonal of the (position mod r,
    head mod r) plane), otherwise one view per offset (heads o, o+r, ...)."""

    def __init__(self, n, h, w, r):
        w = min(w, n)  # one segment covers a shorter sequence (semantics doc)
        if n % w or w % r:
            raise Unsupported("the PyTorch reference needs n %% w == 0 and w %% r == 0 "
                              "(n=%d, w=%d, r=%d)" % (n, w, r))
        self.n, self.h, self.w, self.r = n, h, w, r
        self.segments, self.rows = n // w, w // r
        self.diagonal = h % r == 0

    def views(self, x):
        b, rest = x.shape[0], tuple(x.shape[3:])
        S, L, r, h = self.segments, self.rows, self.r, self.h
        if self.diagonal:
            v = x.view(b, S, L, r, h // r, r, *rest).diagonal(0, 3, 5)
            return [v.movedim(-1, 4)]  # [b, S, L, h/r, r, *rest], head = a*r + c
        v = x.view(b, S, L, r, h, *rest)
        return [v[:, :, :, o, o::r] for o in range(min(r, h))]

    def gather(self, view, trailing):
        """Copy (or view) of one selection as [b*S, L, heads, *trailing dims]."""
        shape = tuple(view.shape)
        rest = shape[len(shape) - trailing:] if trailing else ()
        return view.reshape(shape[0] * shape[1], shape[2], -1, *rest)


def _math_attention_chunks(batch, heads, rows):
    # Keep one [chunk, H, L, L] fp32 score block near 512 MiB.
    per_item = max(1, heads * rows * rows * 4)
    return max(1, (512 << 20) // per_item)


def _partial_forward(q, k, v, causal, scale, backend):
    """softmax attention of one selection: q, k, v [B, H, L, d] -> (o [B, H, L, d] in
    q's dtype, lse [B, H, L] in the accumulation dtype, aux for the backward)."""
    torch = _torch()
    L = q.shape[2]
    if backend == "flash":
        res = torch.ops.aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, causal, False, scale=scale)
        out, lse = res[0], res[1]
        if lse.dim() == 4:
            lse = lse.squeeze(-1)
        return out, lse[..., :L], tuple(res[2:8])
    acc = _acc_dtype(q.dtype)
    outs, lses = [], []
    step = _math_attention_chunks(q.shape[0], q.shape[1], L)
    mask = torch.ones(L, L, dtype=torch.bool, device=q.device).triu(1) if causal else None
    for s in range(0, q.shape[0], step):
        qc, kc, vc = (x[s:s + step].to(acc) for x in (q, k, v))
        scores = (qc @ kc.transpose(-1, -2)) * scale
        if mask is not None:
            scores.masked_fill_(mask, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)
        outs.append((torch.exp(scores - lse.unsqueeze(-1)) @ vc).to(q.dtype))
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses), None


def _partial_backward(dout, q, k, v, out, lse, causal, scale, backend, aux):
    """Gradient of one selection given the MERGED out and lse: P = exp(s q.k - lse)
    are then the merged softmax's probabilities and D = dO.O its row term, so the
    per-selection gradients sum to the exact gradient (as ring attention does)."""
    torch = _torch()
    if backend == "flash":
        cum_q, cum_k, max_q, max_k, seed, offset = aux
        return torch.ops.aten._scaled_dot_product_flash_attention_backward(
            dout, q, k, v, out, lse, cum_q, cum_k, max_q, max_k, 0.0, causal, seed,
            offset, scale=scale)
    acc = _acc_dtype(q.dtype)
    L = q.shape[2]
    mask = torch.ones(L, L, dtype=torch.bool, device=q.device).triu(1) if causal else None
    step = _math_attention_chunks(q.shape[0], q.shape[1], L)
    grads = ([], [], [])
    for s in range(0, q.shape[0], step):
        qc, kc, vc, oc, doc = (x[s:s + step].to(acc) for x in (q, k, v, out, dout))
        scores = (qc @ kc.transpose(-1, -2)) * scale
        if mask is not None:
            scores.masked_fill_(mask, float("-inf"))
        prob = torch.exp(scores - lse[s:s + step].to(acc).unsqueeze(-1))
        dv = prob.transpose(-1, -2) @ doc
        dp = doc @ vc.transpose(-1, -2)
        ds = prob * (dp - (doc * oc).sum(-1, keepdim=True))
        grads[0].append((ds @ kc * scale).to(q.dtype))
        grads[1].append((ds.transpose(-1, -2) @ qc * scale).to(q.dtype))
        grads[2].append(dv.to(q.dtype))
    return tuple(torch.cat(g) for g in grads)


def _pick_backend(x, backend):
    torch = _torch()
    if backend != "auto":
        return backend
    if (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
            and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention")):
        return "flash"
    return "math"


_LONGNET_FN = {}


def _longnet_function():
    """torch.autograd.Function for (b), built on first use (torch is lazy)."""
    if "fn" in _LONGNET_FN:
        return _LONGNET_FN["fn"]
    torch = _torch()

    class TorchLongNet(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, segments, dilations, causal, scale, backend):
            b, n, h, d = q.shape
            acc = _acc_dtype(q.dtype)
            patterns = [_Dilation(n, h, w, r) for w, r in zip(segments, dilations)]
            lse_each = torch.full((len(patterns), b, n, h), float("-inf"), dtype=acc,
                                  device=q.device)
            parts, auxes = [], []
            for i, pat in enumerate(patterns):
                for g, (vq, vk, vv, vl) in enumerate(zip(pat.views(q), pat.views(k),
                                                         pat.views(v),
                                                         pat.views(lse_each[i]))):
                    qc, kc, vc = (pat.gather(x, 1).transpose(1, 2) for x in (vq, vk, vv))
                    o, lse, aux = _partial_forward(qc, kc, vc, causal, scale, backend)
                    vl.copy_(lse.transpose(1, 2).reshape(vl.shape))
                    parts.append((i, g, o))
                    auxes.append(aux)
            # One softmax over the multiset union: O = sum_i exp(LSE_i - LSE) O_i.
            lse = torch.logsumexp(lse_each, dim=0)
            out_acc = torch.zeros(b, n, h, d, dtype=acc, device=q.device)
            while parts:
                i, g, o = parts.pop(0)
                pat = patterns[i]
                weight = torch.exp(pat.views(lse_each[i])[g] - pat.views(lse)[g])
                va = pat.views(out_acc)[g]
                va.addcmul_(o.transpose(1, 2).reshape(va.shape), weight.unsqueeze(-1))
                del o, weight
            del lse_each
            out = out_acc.to(q.dtype)
            del out_acc
            ctx.save_for_backward(q, k, v, out, lse)
            ctx.config = (patterns, causal, scale, backend, auxes)
            ctx.mark_non_differentiable(lse)
            return out, lse

        @staticmethod
        def backward(ctx, dout, _dlse):
            q, k, v, out, lse = ctx.saved_tensors
            patterns, causal, scale, backend, auxes = ctx.config
            dout = dout.contiguous()
            # Gradients summed over patterns in the input dtype (memory-lean).
            dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
            part = 0
            for pat in patterns:
                views = [pat.views(x) for x in (q, k, v, out, dout, lse, dq, dk, dv)]
                for g in range(len(views[0])):
                    qc, kc, vc, oc, doc = (pat.gather(views[t][g], 1).transpose(1, 2)
                                           for t in range(5))
                    lc = pat.gather(views[5][g], 0).transpose(1, 2).contiguous()
                    grads = _partial_backward(doc, qc, kc, vc, oc, lc, causal, scale,
                                              backend, auxes[part])
                    part += 1
                    for t, grad in zip((6, 7, 8), grads):
                        views[t][g].add_(grad.transpose(1, 2).reshape(views[t][g].shape))
                    del qc, kc, vc, oc, doc, lc, grads
            return dq, dk, dv, None, None, None, None, None

    _LONGNET_FN["fn"] = TorchLongNet
    return TorchLongNet


def torch_longnet(q, k, v, segments, dilations, causal=False, scale=None, backend="auto",
                  return_lse=False):
    """(b) Exact LongNet (docs/semantics.md) in PyTorch, q, k, v [b, n, h, d]. Needs
    n % w_i == 0 (w_i > n means one segment) and w_i % r_i == 0. Returns out (and
    lse [b, n, h]); differentiable in q, k, v."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    backend = _pick_backend(q, backend)
    out, lse = _longnet_function().apply(q.contiguous(), k.contiguous(), v.contiguous(),
                                         tuple(segments), tuple(dilations), bool(causal),
                                         float(scale), backend)
    return (out, lse) if return_lse else out


def torch_head_group(q, k, v, segments, dilations, causal=False, scale=None):
    """(a) The head-group algorithm of fkodom/dilated-attention-pytorch over torch SDPA:
    group i (floor(h/k) heads, the first h mod k groups one larger) attends with
    pattern i only, offset i mod r_i, inside each segment; unselected rows stay 0.
    fkodom's output normalisation (x / x.sum over the sequence, / k) is not
    attention and is left out, as in ours."""
    F = _F()
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    b, n, h, d = q.shape
    out = q.new_zeros(b, n, h, d)
    first = 0
    for i, (size, w, r) in enumerate(zip(head_group_sizes(h, len(segments)), segments,
                                         dilations)):
        if size == 0:
            continue
        w = min(w, n)
        if n % w or w % r:
            raise Unsupported("torch-hg needs n %% w == 0 and w %% r == 0 "
                              "(n=%d, w=%d, r=%d)" % (n, w, r))
        S, L = n // w, w // r
        rows = (slice(None), slice(None), slice(i % r, None, r), slice(first, first + size))

        def pick(x):
            return x.view(b, S, w, h, d)[rows].reshape(b * S, L, size, d).transpose(1, 2)

        y = F.scaled_dot_product_attention(pick(q), pick(k), pick(v), is_causal=causal,
                                           scale=scale)
        out.view(b, S, w, h, d)[rows] = y.transpose(1, 2).reshape(b, S, L, size, d)
        first += size
    return out


def dense_sdpa(q, k, v, backend, causal=False, scale=None):
    """Dense attention through one SDPA backend; [b, n, h, d] in and out."""
    F = _F()
    from torch.nn.attention import sdpa_kernel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                 v.transpose(1, 2), is_causal=causal,
                                                 scale=scale)
    return out.transpose(1, 2)


# ---------------------------------------------------------------------------
# The dense masked-softmax oracle (self-test only: O(n^2) memory).

def oracle_counts(n, h, segments, dilations, mode, causal, device):
    """C[j, p, t] = how many patterns let query p of head j see key t."""
    torch = _torch()
    pos = torch.arange(n, device=device)
    counts = torch.zeros(h, n, n, dtype=torch.float64, device=device)
    sizes = head_group_sizes(h, len(segments))
    group_of = [g for g, s in enumerate(sizes) for _ in range(s)]
    for i, (w, r) in enumerate(zip(segments, dilations)):
        seg = pos // w
        inner = pos - seg * w
        same = seg[:, None] == seg[None, :]
        if causal:
            same = same & (pos[None, :] <= pos[:, None])
        for j in range(h):
            if mode == "head_group":
                if group_of[j] != i:
                    continue
                o = i % r
            else:
                o = j % r
            sel = inner % r == o
            counts[j] += (same & sel[:, None] & sel[None, :]).double()
    return counts


def oracle_attention(q, k, v, counts, scale=None):
    """Softmax over the multiset given by counts, float64; rows seeing nothing give
    O = 0 and LSE = -inf. q, k, v [b, n, h, d] -> out [b, n, h, d], lse [b, n, h]."""
    torch = _torch()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    qd, kd, vd = (x.double().transpose(1, 2) for x in (q, k, v))
    logits = (qd @ kd.transpose(-1, -2)) * scale + torch.log(counts)
    top = logits.amax(dim=-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top)).detach()
    e = torch.exp(logits - top)
    den = e.sum(dim=-1, keepdim=True)
    seen = den > 0
    out = torch.where(seen, (e @ vd) / torch.where(seen, den, torch.ones_like(den)),
                      torch.zeros_like(vd[..., :1]))
    lse = torch.where(seen, torch.log(torch.where(seen, den, torch.ones_like(den))) + top,
                      torch.full_like(den, float("-inf")))
    return out.transpose(1, 2), lse.squeeze(-1).transpose(1, 2)


def rel_l2_max_over_heads(x, ref):
    """max over heads of ||x - ref|| / ||ref|| (norms over batch, tokens, dims)."""
    torch = _torch()
    xf, rf = x.detach().double(), ref.detach().double()
    dims = tuple(i for i in range(xf.dim()) if i != 2)
    num = (xf - rf).pow(2).sum(dim=dims).sqrt()
    den = rf.pow(2).sum(dim=dims).sqrt()
    rel = torch.where(den > 0, num / den.clamp_min(1e-300), num)
    return rel.max().item()


# ---------------------------------------------------------------------------
# The binding.

def _library_candidates():
    return [os.path.join(REPO_ROOT, "gpu_carry", "libdilated_attention.so"),
            os.path.join(REPO_ROOT, "bazel-bin", "libdilated_attention.so")]


def load_binding(library=None):
    """(module, library path, None) or (None, path, reason). Without --library or
    DA_LIBRARY, the newer of gpu_carry/ and bazel-bin/ is used. The bundle's private
    runtime libraries (gpu_carry/lib: libcjson, libgomp) are loaded first, globally,
    since LD_LIBRARY_PATH cannot be changed from inside a running process."""
    if library:
        os.environ["DA_LIBRARY"] = os.path.abspath(library)
    elif not os.environ.get("DA_LIBRARY"):
        found = [c for c in _library_candidates() if os.path.isfile(c)]
        if found:  # the newest build: a stale bundle must not shadow a fresh one
            os.environ["DA_LIBRARY"] = max(found, key=os.path.getmtime)
    path = os.environ.get("DA_LIBRARY")
    if path:
        lib_dir = os.path.join(os.path.dirname(path), "lib")
        if os.path.isdir(lib_dir):
            for name in sorted(os.listdir(lib_dir)):
                if ".so" in name:
                    try:
                        ctypes.CDLL(os.path.join(lib_dir, name), mode=ctypes.RTLD_GLOBAL)
                    except OSError:
                        pass
    py_dir = os.path.join(REPO_ROOT, "python")
    if py_dir not in sys.path:
        sys.path.insert(0, py_dir)
    try:
        import dilated_attention as binding
        try:
            binding.load_library()
        except TypeError:  # in case it wants the path
            binding.load_library(path)
    except Exception as exc:  # any import/load failure only disables "ours"
        return None, path, "%s: %s" % (type(exc).__name__, exc)
    return binding, path, None


def ours_fn(binding, mode):
    def run(q, k, v, segments, dilations, causal=False):
        res = binding.dilated_attention(q, k, v, list(segments), list(dilations),
                                        mode=mode, causal=causal)
        return res[0] if isinstance(res, (tuple, list)) else res
    return run


def effective_flops(binding, impl, n, h, d, segments, dilations, causal, with_backward,
                    batch):
    if impl.startswith("sdpa"):
        return dense_flops(n, h, d, causal, with_backward, batch)
    mode = DILATED_MODE[impl]
    if binding is not None:
        try:
            return float(binding.count_flops(n, h, d, list(segments), list(dilations),
                                             batch=batch, mode=mode, causal=causal,
                                             with_backward=with_backward))
        except Exception:
            pass
    return dilated_flops_python(n, h, d, segments, dilations, mode, causal, with_backward,
                                batch)


# ---------------------------------------------------------------------------
# Measurement.

def _is_oom(exc):
    torch = _torch()
    if isinstance(exc, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    text = (str(exc) + " " + str(getattr(exc, "status", ""))).lower()
    return "out of memory" in text or "out_of_memory" in text


def _short(exc):
    text = str(exc).strip().splitlines()
    return "%s: %s" % (type(exc).__name__, (text[0] if text else "")[:120])


def _free():
    gc.collect()
    torch = _torch()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _sync(device):
    if device.type == "cuda":
        _torch().cuda.synchronize(device)


class _Interval:
    """Time of the work queued between start() and stop(): CUDA events on the
    current stream, the wall clock on the CPU."""

    def __init__(self, device):
        torch = _torch()
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.s = torch.cuda.Event(enable_timing=True)
            self.e = torch.cuda.Event(enable_timing=True)

    def start(self):
        if self.cuda:
            self.s.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self):
        if self.cuda:
            self.e.record()
        else:
            self.t1 = time.perf_counter()

    def ms(self):
        return self.s.elapsed_time(self.e) if self.cuda else (self.t1 - self.t0) * 1e3


def measure_ceiling(size=8192, iters=10):
    """Dense bf16 matmul TFLOP/s (median of CUDA-event timed iterations)."""
    torch = _torch()
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        torch.matmul(a, b)
    times = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        torch.matmul(a, b)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    del a, b
    _free()
    return 2.0 * size ** 3 / (statistics.median(times) * 1e-3) / 1e12


def time_step(step, warmup, iters, case_max_s, binding, device):
    """Runs step (which drops its results) warmup times, then up to iters timed times
    (fewer when that would exceed case_max_s). Returns (median ms, all ms, peak
    torch bytes, torch bytes live at the reset, pool stats or None). Memory is
    counted on CUDA devices only (0 on the CPU)."""
    torch = _torch()
    cuda = device.type == "cuda"
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    per_iter_s = time.perf_counter() - t0  # includes first-call setup: an upper bound
    extra = warmup - 1 if per_iter_s * warmup < case_max_s else 0
    if extra:
        t0 = time.perf_counter()
        for _ in range(extra):
            step()
        _sync(device)
        per_iter_s = (time.perf_counter() - t0) / extra
    n_iter = max(1, min(iters, int(case_max_s / max(per_iter_s, 1e-6))))
    gc.collect()
    _sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device) if cuda else 0
    if binding is not None:
        binding.reset_pool_peak(device.index)
    intervals = []
    for _ in range(n_iter):
        interval = _Interval(device)
        interval.start()
        step()
        interval.stop()
        intervals.append(interval)
    _sync(device)
    times = [i.ms() for i in intervals]
    peak = torch.cuda.max_memory_allocated(device) if cuda else 0
    pool = dict(binding.pool_stats(device.index)) if binding is not None else None
    return statistics.median(times), times, peak, baseline, pool


def make_step(fn, q, k, v, dout, backward):
    torch = _torch()
    if not backward:
        def step():
            with torch.no_grad():
                fn(q, k, v)
        return step

    def step():
        out = fn(q, k, v)
        torch.autograd.grad(out, (q, k, v), dout)
    return step


def impl_callable(impl, binding, args):
    torch = _torch()
    segs, dils, causal = list(args.segments), list(args.dilations), args.causal
    if impl in ("ours-longnet", "ours-hg"):
        run = ours_fn(binding, DILATED_MODE[impl])
        return lambda q, k, v: run(q, k, v, segs, dils, causal)
    if impl == "torch-longnet":
        return lambda q, k, v: torch_longnet(q, k, v, segs, dils, causal)
    if impl == "torch-hg":
        return lambda q, k, v: torch_head_group(q, k, v, segs, dils, causal)
    from torch.nn.attention import SDPBackend
    backend = {"sdpa-flash": SDPBackend.FLASH_ATTENTION,
               "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}[impl]
    return lambda q, k, v: dense_sdpa(q, k, v, backend, causal)


def run_case(impl, d, n, pass_name, q, k, v, dout, binding, args, flops, device):
    """One row of the table; never raises for OOM or a backend that cannot run."""
    row = {"impl": impl, "d": d, "n": n, "pass": pass_name, "h": args.h,
           "batch": args.batch, "causal": args.causal, "dtype": args.dtype,
           "flops": flops, "status": "ok"}
    backward = pass_name == "fwdbwd"
    uses_pool = impl.startswith("ours") and device.type == "cuda"
    failure = None
    try:
        step = make_step(impl_callable(impl, binding, args), q, k, v, dout, backward)
        ms, times, peak, baseline, pool = time_step(
            step, args.warmup, args.iters, args.case_max_s,
            binding if uses_pool else None, device)
    except Unsupported as exc:
        failure = "unsupported: %s" % exc
    except Exception as exc:  # OOM (torch or DAError) or a backend refusing the shape
        failure = "OOM" if _is_oom(exc) else "error: %s" % _short(exc)
    if failure is not None:
        step = None
        _free()
        row["status"] = failure
        return row
    if device.type != "cuda":  # no memory counters: timing only
        row.update({"ms": ms, "times_ms": times, "iters": len(times),
                    "tflops": flops / (ms * 1e-3) / 1e12})
        return row
    out_bytes = q.numel() * q.element_size()
    result_bytes = out_bytes * (4 if backward else 1)  # out (+ dq, dk, dv)
    pool_reserved = pool.get("peak_reserved_bytes", 0) if pool else 0
    total_peak = peak + pool_reserved
    row.update({
        "ms": ms, "times_ms": times, "iters": len(times),
        "tflops": flops / (ms * 1e-3) / 1e12,
        "torch_peak_bytes": peak, "pool_peak_reserved_bytes": pool_reserved,
        "pool_peak_allocated_bytes": pool.get("peak_allocated_bytes") if pool else None,
        "peak_bytes": total_peak, "peak_gib": total_peak / GIB,
        "extra_bytes": total_peak - baseline - result_bytes,
        "extra_gib": (total_peak - baseline - result_bytes) / GIB,
    })
    return row


def make_inputs(args, n, d, device, requires_grad, with_dout):
    torch = _torch()
    dtype = _dtype(args.dtype)
    shape = (args.batch, n, args.h, d)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
    if requires_grad:
        for x in (q, k, v):
            x.requires_grad_(True)
    dout = torch.randn(shape, device=device, dtype=dtype) if with_dout else None
    return q, k, v, dout


def correctness_line(binding, args, d, device):
    """Max over heads of the relative L2 error: ours-longnet vs torch-longnet and
    ours-hg vs torch-hg, on out and (when fwdbwd is asked for) dq, dk, dv."""
    torch = _torch()
    n = args.check_n
    backward = "fwdbwd" in args.passes
    result = {"d": d, "n": n}
    try:
        q, k, v, dout = make_inputs(args, n, d, device, backward, backward)
        pairs = (("longnet", "ours-longnet", "torch-longnet"), ("head_group", "ours-hg",
                                                                "torch-hg"))
        for mode, ours_name, peer_name in pairs:
            outs = {}
            for name in (ours_name, peer_name):
                fn = impl_callable(name, binding, args)
                with torch.set_grad_enabled(backward):
                    out = fn(q, k, v)
                grads = torch.autograd.grad(out, (q, k, v), dout) if backward else ()
                outs[name] = (out.detach(),) + tuple(grads)
            errs = {key: rel_l2_max_over_heads(a, b)
                    for key, a, b in zip(("out", "dq", "dk", "dv"), outs[ours_name],
                                         outs[peer_name])}
            result[mode] = errs
            del outs
    except Exception as exc:
        result["error"] = "OOM" if _is_oom(exc) else _short(exc)
    q = k = v = dout = None
    _free()
    return result


def format_check(res):
    if "error" in res and not any(m in res for m in ("longnet", "head_group")):
        return "correctness d=%d n=%s: %s" % (res["d"], fmt_n(res["n"]), res["error"])
    parts = []
    for mode, label in (("longnet", "ours-longnet vs torch-longnet"),
                        ("head_group", "ours-hg vs torch-hg")):
        if mode in res:
            errs = res[mode]
            worst = max(errs.values())
            parts.append("%s %s [%s]" % (label, " ".join(
                "%s %.1e" % (k, v) for k, v in errs.items()),
                "ok" if worst <= 2e-2 else "LARGE"))
    if "error" in res:
        parts.append(res["error"])
    return "correctness d=%d n=%s (max rel L2 over heads; bf16 rounding ~4e-3): %s" % (
        res["d"], fmt_n(res["n"]), "; ".join(parts))


class Results:
    def __init__(self, args):
        self.args = args
        self.data = {"env": {}, "config": {}, "checks": [], "rows": [], "max_n_search": []}

    def save(self):
        if self.args.json:
            with open(self.args.json, "w") as f:
                json.dump(self.data, f, indent=1, default=str)
        if self.args.csv:
            keys = ["impl", "d", "n", "pass", "h", "batch", "causal", "dtype", "status",
                    "ms", "iters", "tflops", "pct_ceiling", "flops", "peak_gib", "extra_gib",
                    "torch_peak_bytes", "pool_peak_reserved_bytes",
                    "pool_peak_allocated_bytes", "speedup", "speedup_vs"]
            with open(self.args.csv, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
                w.writeheader()
                for row in self.data["rows"]:
                    w.writerow(row)


def _probe(fn):
    try:
        return fn()
    except Exception as exc:  # a broken cuDNN install must not stop the benchmark
        return "unavailable (%s)" % _short(exc)


def environment(binding, lib_path, reason, device):
    torch = _torch()
    cuda = device.type == "cuda"
    return {
        "gpu": torch.cuda.get_device_name(device) if cuda else "CPU (--cpu: harness test)",
        "gpu_memory_gib": (torch.cuda.get_device_properties(device).total_memory / GIB
                           if cuda else 0.0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": _probe(torch.backends.cudnn.version),
        "python": sys.version.split()[0],
        "library": lib_path,
        "binding": "loaded" if binding is not None else "unavailable (%s)" % reason,
    }


def method_line(args):
    return ("method: CUDA-event median of up to %d timed iterations after %d warm-up "
            "(fewer if a case exceeds %.0f s); effective FLOPs per docs/semantics.md "
            "(4*d per (query, key) product with multiplicity, x3.5 for fwd+bwd; dense "
            "4*d*n^2*h, causal n(n+1)/2); peak = torch.cuda.max_memory_allocated during "
            "the timed iterations (+ the library pool's peak_reserved_bytes for ours); "
            "extra = peak - tensors live at the start (q, k, v, dout) - out (- dq, dk, dv); "
            "fwd runs under torch.no_grad, fwdbwd = forward + torch.autograd.grad."
            % (args.iters, args.warmup, args.case_max_s))


def _print(*a):
    print(*a)
    sys.stdout.flush()


def run_benchmark(args):
    torch = _torch()
    if args.cpu:
        device = torch.device("cpu")
        args.no_ceiling = True
    elif torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        _print("no CUDA device: the benchmark needs a GPU (try --self-test)")
        return 2
    t_start = PROCESS_START
    deadline = t_start + args.budget_s
    binding, lib_path, reason = load_binding(args.library)
    res = Results(args)
    env = environment(binding, lib_path, reason, device)
    res.data["env"] = env
    res.data["config"] = {k: v for k, v in vars(args).items()}
    _print("GPU: %s (%.1f GiB), torch %s, CUDA %s, cuDNN %s, python %s"
           % (env["gpu"], env["gpu_memory_gib"], env["torch"], env["cuda"], env["cudnn"],
              env["python"]))
    _print("library: %s, binding %s" % (lib_path, env["binding"]))
    _print("config: h=%d batch=%d %s causal=%s w=%s r=%s"
           % (args.h, args.batch, args.dtype, args.causal, args.segments, args.dilations))
    _print(method_line(args))
    impls = [i for i in args.impls if binding is not None or not i.startswith("ours")]
    if len(impls) != len(args.impls):
        _print("ours-* skipped: the binding did not load")

    ceiling = None
    if not args.no_ceiling:
        ceiling = measure_ceiling()
        _print("ceiling: dense bf16 matmul 8192^3 = %.1f TFLOP/s" % ceiling)
    res.data["ceiling_tflops"] = ceiling

    if args.max_n_search:
        if binding is None:
            _print("--max-n-search needs the binding: %s" % reason)
            return 2
        max_n_search(binding, args, device, deadline, res)
        res.save()
        return 0

    if not args.no_check and binding is not None:
        for d in args.d:
            if time.monotonic() > deadline:
                _print("correctness d=%d: skipped: time budget" % d)
                continue
            check = correctness_line(binding, args, d, device)
            res.data["checks"].append(check)
            _print(format_check(check))

    dense_rate = {}  # (impl, d, pass) -> last measured TFLOP/s, for the skip estimate
    rows = res.data["rows"]
    for n in args.n:
        for d in args.d:
            cases = [(p, i) for p in args.passes for i in impls]
            if time.monotonic() > deadline:
                for p, i in cases:
                    rows.append({"impl": i, "d": d, "n": n, "pass": p,
                                 "status": "skipped: time budget"})
                    _print("%-13s d=%-3d n=%-5s %-6s skipped: time budget"
                           % (i, d, fmt_n(n), p))
                continue
            try:
                q, k, v, dout = make_inputs(args, n, d, device, "fwdbwd" in args.passes,
                                            "fwdbwd" in args.passes)
            except Exception as exc:
                status = "OOM" if _is_oom(exc) else "error: %s" % _short(exc)
                _free()
                for p, i in cases:
                    rows.append({"impl": i, "d": d, "n": n, "pass": p,
                                 "status": status + " (inputs)"})
                _print("d=%d n=%s: inputs: %s" % (d, fmt_n(n), status))
                continue
            for pass_name, impl in cases:
                backward = pass_name == "fwdbwd"
                flops = effective_flops(binding, impl, n, args.h, d, args.segments,
                                        args.dilations, args.causal, backward, args.batch)
                row = None
                if time.monotonic() > deadline:
                    row = {"impl": impl, "d": d, "n": n, "pass": pass_name,
                           "status": "skipped: time budget"}
                elif impl.startswith("sdpa"):
                    rate = dense_rate.get((impl, d, pass_name), args.dense_assumed_tflops)
                    est_s = flops / (rate * 1e12)
                    if est_s > args.dense_max_s:
                        row = {"impl": impl, "d": d, "n": n, "pass": pass_name,
                               "flops": flops, "status": "skipped: estimated %.1f s" % est_s}
                if row is None:
                    _free()
                    row = run_case(impl, d, n, pass_name, q, k, v, dout, binding, args,
                                   flops, device)
                    if row["status"] == "ok" and impl.startswith("sdpa"):
                        dense_rate[(impl, d, pass_name)] = row["tflops"]
                if row.get("status") == "ok" and ceiling:
                    row["pct_ceiling"] = 100.0 * row["tflops"] / ceiling
                rows.append(row)
                if row["status"] == "ok":
                    _print("%-13s d=%-3d n=%-5s %-6s %9.2f ms %7.1f TFLOP/s  peak %s GiB"
                           "  extra %s GiB" % (impl, d, fmt_n(n), pass_name, row["ms"],
                                               row["tflops"],
                                               _cell(row.get("peak_gib"), "%.2f") or "-",
                                               _cell(row.get("extra_gib"), "%.2f") or "-"))
                else:
                    _print("%-13s d=%-3d n=%-5s %-6s %s" % (impl, d, fmt_n(n), pass_name,
                                                            row["status"]))
                res.save()
            del q, k, v, dout
            _free()

    add_speedups(rows)
    _print("")
    _print("GPU: %s, torch %s, CUDA %s; %s, h=%d, batch=%d, causal=%s, w=%s, r=%s"
           % (env["gpu"], env["torch"], env["cuda"], args.dtype, args.h, args.batch,
              args.causal, ",".join(map(str, args.segments)),
              ",".join(map(str, args.dilations))))
    if ceiling:
        _print("ceiling (dense bf16 matmul): %.1f TFLOP/s; %%ceil = TFLOP/s / ceiling"
               % ceiling)
    _print(method_line(args))
    _print("speedup: torch-hg ms / ours-hg ms and torch-longnet ms / ours-longnet ms")
    _print("")
    _print(format_table(rows, ceiling))
    for check in res.data["checks"]:
        _print(format_check(check))
    _print("total %.0f s" % (time.monotonic() - t_start))
    res.save()
    return 0


def max_n_search(binding, args, device, deadline, res):
    """Largest n (doubling from --search-start) where ours LongNet fwd+bwd fits."""
    torch = _torch()
    d, h = args.search_d, args.h
    total_gib = (torch.cuda.get_device_properties(device).total_memory / GIB
                 if device.type == "cuda" else 0.0)
    _print("max-n search: ours-longnet fwd+bwd, d=%d, h=%d, batch=%d, %s, GPU %.1f GiB"
           % (d, h, args.batch, args.dtype, total_gib))
    fn = impl_callable("ours-longnet", binding, args)
    n, best = args.search_start, None
    found = res.data["max_n_search"]
    while n <= args.search_max:
        if time.monotonic() > deadline:
            _print("n=%s: skipped: time budget" % fmt_n(n))
            break
        entry = {"n": n, "d": d, "h": h}
        try:
            q, k, v, dout = make_inputs(args, n, d, device, True, True)
            step = make_step(fn, q, k, v, dout, True)
            ms, times, peak, baseline, pool = time_step(step, 1, 2, args.case_max_s,
                                                        binding, device)
            tensor_bytes = 8 * q.numel() * q.element_size()  # q k v out dout dq dk dv
            reserved = pool.get("peak_reserved_bytes", 0)
            allocated = pool.get("peak_allocated_bytes", 0) or 0
            total = peak + reserved
            flops = effective_flops(binding, "ours-longnet", n, h, d, args.segments,
                                    args.dilations, args.causal, True, args.batch)
            entry.update({
                "status": "ok", "ms": ms, "tflops": flops / (ms * 1e-3) / 1e12,
                "torch_peak_bytes": peak, "pool_peak_reserved_bytes": reserved,
                "pool_peak_allocated_bytes": allocated, "total_peak_bytes": total,
                "tensor_bytes": tensor_bytes, "beyond_bytes": total - tensor_bytes,
                "beyond_pct": 100.0 * (total - tensor_bytes) / max(total, 1),
                "beyond_pct_pool_allocated":
                    100.0 * (peak + allocated - tensor_bytes) / max(peak + allocated, 1),
            })
            best = entry
            _print("n=%-5s fits: %.1f ms, %.1f TFLOP/s, peak %.2f GiB (torch %.2f + pool "
                   "%.2f reserved / %.2f allocated), tensors+grads %.2f GiB, beyond %.2f "
                   "GiB = %.2f%% of the total (%.2f%% counting pool allocated)"
                   % (fmt_n(n), ms, entry["tflops"], total / GIB, peak / GIB,
                      reserved / GIB, allocated / GIB, tensor_bytes / GIB,
                      entry["beyond_bytes"] / GIB, entry["beyond_pct"],
                      entry["beyond_pct_pool_allocated"]))
        except Exception as exc:
            entry["status"] = "OOM" if _is_oom(exc) else "error: %s" % _short(exc)
            _print("n=%-5s %s" % (fmt_n(n), entry["status"]))
        q = k = v = dout = step = None
        _free()
        found.append(entry)
        res.save()
        if entry["status"] != "ok":
            break
        n *= 2
    if best:
        _print("largest n that fits: %s (%d tokens): beyond tensors+grads %.2f%%"
               % (fmt_n(best["n"]), best["n"], best["beyond_pct"]))
    target = next((e for e in found if e["n"] == 4 << 20), None)
    if target is not None:
        ok = target.get("status") == "ok"
        _print("issue target (fwd+bwd at n=4M on one 80 GB GPU, beyond tensors+grads "
               "<= 5%%): %s" % ("fits, %.2f%% -> %s" % (
                   target["beyond_pct"], "met" if target["beyond_pct"] <= 5.0 else "missed")
                   if ok else "does not fit (%s) -> missed" % target["status"]))


# ---------------------------------------------------------------------------
# Self-test.

class _Checker:
    def __init__(self):
        self.failures = 0
        self.count = 0

    def check(self, name, ok, detail=""):
        self.count += 1
        if not ok:
            self.failures += 1
        _print("%s %s%s" % ("PASS" if ok else "FAIL", name, (": " + detail) if detail else ""))

    def close(self, name, err, tol):
        self.check(name, err <= tol, "rel L2 %.2e (tol %.0e)" % (err, tol))


def _self_test_pure(ck):
    configs = [
        (37, 3, (8, 16), (1, 2), "longnet", False),
        (37, 3, (8, 16), (1, 2), "longnet", True),
        (50, 6, (4, 8, 16), (1, 2, 4), "longnet", True),
        (50, 6, (4, 8, 16), (1, 2, 4), "head_group", False),
        (50, 2, (4, 8, 64), (2, 3, 4), "head_group", True),   # k > h: an empty group
        (48, 5, (12, 48), (3, 4), "longnet", False),          # no r = 1
    ]
    for n, h, ws, rs, mode, causal in configs:
        a = count_pairs(n, h, ws, rs, mode, causal)
        b = brute_force_pairs(n, h, ws, rs, mode, causal)
        ck.check("pairs n=%d h=%d w=%s r=%s %s causal=%s" % (n, h, ws, rs, mode, causal),
                 a == b, "%d vs brute force %d" % (a, b))
    ck.check("head_group_sizes(16, 5)", head_group_sizes(16, 5) == [4, 3, 3, 3, 3])
    ck.check("dense flops", dense_flops(4, 2, 8, False, False) == 4 * 8 * 16 * 2
             and dense_flops(4, 2, 8, True, True) == 4 * 8 * 10 * 2 * 3.5)
    # The default LongNet configuration: per head sum_i n w_i / r_i^2 = 3968 n.
    n = 1 << 20
    ck.check("LongNet pairs at n=1M", count_pairs(n, 16, LONGNET_SEGMENTS, LONGNET_DILATIONS)
             == 16 * 3968 * n)
    args = parse_args(["--quick", "--impls", "ours,b", "--n", "32k,1m", "--pass", "fwd"])
    ck.check("argument parsing", args.impls == ["ours-longnet", "ours-hg", "torch-longnet"]
             and args.n == [32768, 1 << 20] and args.d == [64] and args.iters == 3
             and args.passes == ["fwd"])
    rows = [{"impl": "ours-hg", "d": 64, "n": 32768, "pass": "fwd", "status": "ok",
             "ms": 1.0, "tflops": 100.0, "peak_gib": 1.0, "extra_gib": 0.01},
            {"impl": "torch-hg", "d": 64, "n": 32768, "pass": "fwd", "status": "ok",
             "ms": 2.5, "tflops": 40.0, "peak_gib": 1.5, "extra_gib": 0.5},
            {"impl": "sdpa-cudnn", "d": 64, "n": 1 << 20, "pass": "fwd",
             "status": "skipped: estimated 40.2 s"}]
    add_speedups(rows)
    table = format_table(rows, 800.0)
    ck.check("speedup column", abs(rows[0].get("speedup", 0) - 2.5) < 1e-12)
    ck.check("table", "x2.50" in table and "skipped: estimated 40.2 s" in table
             and "1M" in table, "\n" + table)


def _self_test_torch(ck, args):
    torch = _torch()
    from torch.nn.attention import SDPBackend
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    gen = torch.Generator(device="cpu").manual_seed(1234)

    def rand(shape, dtype, device):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(device, dtype)

    def oracle(q, k, v, ws, rs, mode, causal, dout):
        leaves = [x.detach().double().requires_grad_(True) for x in (q, k, v)]
        counts = oracle_counts(q.shape[1], q.shape[2], ws, rs, mode, causal, q.device)
        out, lse = oracle_attention(*leaves, counts)
        grads = torch.autograd.grad(out, leaves, dout.double())
        return (out.detach(), lse.detach()) + tuple(grads)

    def run(fn, q, k, v, dout):
        leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
        res = fn(*leaves)
        out, lse = res if isinstance(res, tuple) else (res, None)
        grads = torch.autograd.grad(out, leaves, dout)
        return (out.detach(), lse) + tuple(grads)

    def compare(name, got, ref, tol):
        for label, a, b in zip(("out", "lse", "dq", "dk", "dv"), got, ref):
            if a is None:
                continue
            if label == "lse":
                finite = torch.isfinite(b)
                same_inf = bool((torch.isfinite(a) == finite).all())
                ck.check("%s lse -inf where nothing is seen" % name, same_inf)
                a = torch.where(finite, a.double(), torch.zeros_like(b)).unsqueeze(-1)
                b = torch.where(finite, b, torch.zeros_like(b)).unsqueeze(-1)
            ck.close("%s %s" % (name, label), rel_l2_max_over_heads(a, b), tol)

    # (b) and (a) in exact arithmetic (math partials, float64) against the oracle:
    # h=8 takes the one-view (diagonal) path, h=6 the per-offset path for r=4.
    cases = [(2, 256, 8, 16, (32, 64, 128), (1, 2, 4)),
             (1, 256, 6, 16, (32, 64, 128), (1, 2, 4)),
             (1, 192, 5, 8, (48, 96), (3, 4)),        # no r = 1: uncovered rows
             (1, 64, 4, 8, (16, 128), (1, 2))]         # w > n: one segment
    for b, n, h, d, ws, rs in cases:
        for causal in (False, True):
            q, k, v, dout = (rand((b, n, h, d), torch.float64, "cpu") for _ in range(4))
            tag = "b=%d n=%d h=%d w=%s r=%s causal=%d" % (b, n, h, ws, rs, causal)
            for mode in ("longnet", "head_group"):
                total = oracle_counts(n, h, ws, rs, mode, causal, "cpu").sum().item()
                ck.check("oracle counts = count_pairs %s %s" % (mode, tag),
                         total == count_pairs(n, h, ws, rs, mode, causal))
            ref = oracle(q, k, v, ws, rs, "longnet", causal, dout)
            got = run(lambda x, y, z: torch_longnet(x, y, z, ws, rs, causal, backend="math",
                                                    return_lse=True), q, k, v, dout)
            compare("torch-longnet/math fp64 " + tag, got, ref, 1e-9)
            ref = oracle(q, k, v, ws, rs, "head_group", causal, dout)
            got = run(lambda x, y, z: torch_head_group(x, y, z, ws, rs, causal), q, k, v,
                      dout)
            compare("torch-hg fp64 " + tag, (got[0], None) + got[2:],
                    (ref[0], None) + ref[2:], 1e-9)

    if not cuda:
        _print("no CUDA device: flash, dense SDPA and ours not checked")
        return

    # bf16 on the GPU: torch flash partials (b), SDPA (a), ours, dense SDPA backends.
    binding, lib_path, reason = load_binding(args.library)
    _print("library: %s, binding %s" % (lib_path, "loaded" if binding else reason))
    bf16 = torch.bfloat16
    gpu_cases = [(1, 1024, 8, 64, (128, 256, 512), (1, 2, 4)),
                 (2, 512, 6, 64, (64, 128, 256), (1, 2, 4)),
                 (1, 1024, 16, 128, (128, 256, 512, 1024), (1, 2, 4, 8))]
    for b, n, h, d, ws, rs in gpu_cases:
        for causal in (False, True):
            q, k, v, dout = (rand((b, n, h, d), bf16, dev) for _ in range(4))
            tag = "b=%d n=%d h=%d d=%d w=%s r=%s causal=%d" % (b, n, h, d, ws, rs, causal)
            ref = oracle(q, k, v, ws, rs, "longnet", causal, dout)
            got = run(lambda x, y, z: torch_longnet(x, y, z, ws, rs, causal, backend="flash",
                                                    return_lse=True), q, k, v, dout)
            compare("torch-longnet/flash bf16 " + tag, got, ref, 2e-2)
            ref_hg = oracle(q, k, v, ws, rs, "head_group", causal, dout)
            got = run(lambda x, y, z: torch_head_group(x, y, z, ws, rs, causal), q, k, v,
                      dout)
            compare("torch-hg bf16 " + tag, (got[0], None) + got[2:],
                    (ref_hg[0], None) + ref_hg[2:], 2e-2)
            if binding is None:
                continue
            for mode, r in (("longnet", ref), ("head_group", ref_hg)):
                try:
                    got = run(lambda x, y, z, m=mode: ours_fn(binding, m)(
                        x, y, z, ws, rs, causal), q, k, v, dout)
                    compare("ours-%s bf16 %s" % (mode, tag), (got[0], None) + got[2:],
                            (r[0], None) + r[2:], 2e-2)
                except Exception as exc:
                    ck.check("ours-%s bf16 %s" % (mode, tag), False, _short(exc))
    if binding is not None:
        # Any n: ours need not divide n by w (the PyTorch peers do).
        b, n, h, d, ws, rs = 1, 700, 6, 64, (128, 256, 512), (1, 2, 4)
        q, k, v, dout = (rand((b, n, h, d), bf16, dev) for _ in range(4))
        for mode in ("longnet", "head_group"):
            ref = oracle(q, k, v, ws, rs, mode, True, dout)
            try:
                got = run(lambda x, y, z, m=mode: ours_fn(binding, m)(x, y, z, ws, rs, True),
                          q, k, v, dout)
                compare("ours-%s bf16 n=700 causal" % mode, (got[0], None) + got[2:],
                        (ref[0], None) + ref[2:], 2e-2)
            except Exception as exc:
                ck.check("ours-%s bf16 n=700" % mode, False, _short(exc))
        for n, h, d, mode, causal in ((32768, 16, 64, "longnet", False),
                                      (70000, 6, 128, "head_group", True),
                                      (1 << 20, 16, 128, "longnet", True)):
            ws, rs = LONGNET_SEGMENTS, LONGNET_DILATIONS
            for bwd in (False, True):
                try:
                    a = float(binding.count_flops(n, h, d, list(ws), list(rs), batch=2,
                                                  mode=mode, causal=causal,
                                                  with_backward=bwd))
                except Exception as exc:
                    ck.check("count_flops", False, _short(exc))
                    continue
                e = dilated_flops_python(n, h, d, ws, rs, mode, causal, bwd, batch=2)
                ck.check("count_flops n=%d h=%d d=%d %s causal=%d bwd=%d" % (
                    n, h, d, mode, causal, bwd), abs(a - e) <= 1e-9 * e,
                    "%.6e vs %.6e" % (a, e))
        try:
            stats = binding.pool_stats(torch.cuda.current_device())
            binding.reset_pool_peak(torch.cuda.current_device())
            ck.check("pool_stats returns a dict", isinstance(stats, dict), repr(type(stats)))
            ck.check("pool_stats has peak_reserved_bytes", "peak_reserved_bytes" in stats,
                     ", ".join(sorted(stats)))
        except Exception as exc:
            ck.check("pool_stats / reset_pool_peak", False, _short(exc))
    else:
        ck.check("binding loads (ours not checked)", False, str(reason))

    # Dense SDPA backends on a small shape (do they run here, and agree with math?).
    q, k, v, dout = (rand((1, 2048, 4, 64), bf16, dev) for _ in range(4))
    counts = torch.ones(4, 2048, 2048, dtype=torch.float64, device=dev)
    ref = oracle_attention(q, k, v, counts)[0]
    for name, backend in (("sdpa-flash", SDPBackend.FLASH_ATTENTION),
                          ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            out = dense_sdpa(q, k, v, backend)
            ck.close(name + " bf16 n=2048", rel_l2_max_over_heads(out, ref), 2e-2)
        except Exception as exc:
            ck.check(name + " runs", False, _short(exc))

    # The measuring machinery end to end on a tiny configuration.
    mini = parse_args(["--quick", "--n", "8192", "--d", "64", "--segments",
                       "512,1024,2048", "--dilations", "1,2,4", "--iters", "2",
                       "--no-ceiling"])
    q, k, v, dout = make_inputs(mini, 8192, 64, dev, True, True)
    impls = [i for i in IMPLS if binding is not None or not i.startswith("ours")]
    rows = []
    for impl in impls:
        for p in ("fwd", "fwdbwd"):
            flops = effective_flops(binding, impl, 8192, mini.h, 64, mini.segments,
                                    mini.dilations, False, p == "fwdbwd", 1)
            row = run_case(impl, 64, 8192, p, q, k, v, dout, binding, mini, flops,
                           torch.device("cuda", torch.cuda.current_device()))
            rows.append(row)
            ck.check("harness %s %s" % (impl, p), row["status"] == "ok"
                     and row["ms"] > 0 and row["extra_gib"] > -1e-3,
                     row["status"] if row["status"] != "ok" else
                     "%.3f ms, extra %.4f GiB" % (row["ms"], row["extra_gib"]))
    add_speedups(rows)
    _print(format_table(rows, None))


def self_test(args):
    ck = _Checker()
    _print("self-test: pure Python")
    _self_test_pure(ck)
    try:
        torch = _torch()
    except ImportError:
        _print("torch is not installed: the PyTorch checks did not run")
        torch = None
    if torch is not None:
        _print("self-test: torch %s, %s" % (torch.__version__,
                                            torch.cuda.get_device_name(0)
                                            if torch.cuda.is_available() else "CPU only"))
        _self_test_torch(ck, args)
    _print("self-test: %d checks, %d failed" % (ck.count, ck.failures))
    return 1 if ck.failures else 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.self_test:
        return self_test(args)
    return run_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
