"""The torch GPU path of the binding against its CPU path.

Every case draws random inputs, rounds them to bf16/fp16, runs forward and
backward (through autograd) on the GPU, and the CPU float32 path on the same
rounded values; relative L2 error <= 1e-2 (bf16) / 5e-3 (fp16) for out, lse
(finite entries; -inf must match exactly) and dq, dk, dv, and no NaN anywhere.

Skips, saying why, without torch or a CUDA device. Run it as
    DA_LIBRARY=/path/to/libdilated_attention.so python3 python/tests/test_torch_gpu.py
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import dilated_attention as da  # noqa: E402

try:
    import torch
except ImportError:
    torch = None

if torch is None:
    SKIP_REASON = "torch is not installed for %s" % sys.executable
elif not torch.cuda.is_available():
    SKIP_REASON = "torch %s sees no CUDA device" % torch.__version__
else:
    SKIP_REASON = None

TOLERANCE = {"bfloat16": 1e-2, "float16": 5e-3}
PATTERNS = [(64, 1), (128, 2), (256, 4)]  # n = 300 below is a multiple of none


def rel_l2(actual, expected):
    actual, expected = actual.double().cpu(), expected.double().cpu()
    norm = expected.norm().item()
    diff = (actual - expected).norm().item()
    return diff / norm if norm > 0 else diff


def split(patterns):
    return [w for w, _ in patterns], [r for _, r in patterns]


@unittest.skipIf(SKIP_REASON is not None, SKIP_REASON)
class GpuAgainstCpu(unittest.TestCase):

    def inputs(self, dtype, q_shape, kv_shape, seed, device="cuda"):
        """q, k, v, dout rounded to dtype, on device."""
        g = torch.Generator().manual_seed(seed)
        shapes = (q_shape, kv_shape, kv_shape, q_shape)
        return [torch.randn(s, generator=g).to(dtype).to(device) for s in shapes]

    def run_pair(self, dtype, b, n, h, h_kv, d, patterns, cu_seqlens=None, seed=0, **kw):
        """GPU and CPU results (out, lse, dq, dk, dv) for the same rounded inputs."""
        lead = (b, n) if cu_seqlens is None else (int(cu_seqlens[-1]),)
        q, k, v, dout = self.inputs(dtype, lead + (h, d), lead + (h_kv, d), seed)
        w, r = split(patterns)
        results = []
        for device in ("cuda", "cpu"):
            leaves = [x.to(device, torch.float32 if device == "cpu" else dtype)
                      .detach().requires_grad_() for x in (q, k, v)]
            out, lse = da.dilated_attention(*leaves, w, r, cu_seqlens=cu_seqlens,
                                            return_lse=True, **kw)
            out.backward(dout.to(device, out.dtype))
            results.append([out.detach(), lse] + [x.grad for x in leaves])
        gpu, cpu = results
        self.assertEqual(gpu[0].dtype, dtype)
        self.assertEqual(gpu[1].dtype, torch.float32)
        self.assertEqual(tuple(gpu[1].shape), lead + (h,))
        for x in gpu:
            self.assertTrue(x.is_cuda)
        for x, ref in zip(gpu[2:], (q, k, v)):
            self.assertEqual((x.dtype, x.shape), (dtype, ref.shape))
        return gpu, cpu

    def check(self, dtype, b, n, h, h_kv, d, patterns, **kw):
        gpu, cpu = self.run_pair(dtype, b, n, h, h_kv, d, patterns, **kw)
        tol = TOLERANCE[str(dtype).split(".")[-1]]
        names = ("out", "lse", "dq", "dk", "dv")
        for name, x in zip(names, gpu):
            self.assertFalse(torch.isnan(x).any().item(), "%s has NaN" % name)
        lse_gpu, lse_cpu = gpu[1].cpu(), cpu[1]
        holes = torch.isneginf(lse_cpu)
        self.assertTrue(torch.equal(torch.isneginf(lse_gpu), holes),
                        "lse = -inf must match the CPU exactly")
        self.assertTrue(torch.isfinite(lse_gpu[~holes]).all().item())
        errors = {"lse": rel_l2(lse_gpu[~holes], lse_cpu[~holes])}
        for name, x, ref in zip(names, gpu, cpu):
            if name != "lse":
                errors[name] = rel_l2(x.float(), ref)
        bad = {name: e for name, e in errors.items() if not e <= tol}
        self.assertFalse(bad, "relative L2 errors above %g: %s" % (tol, bad))
        return holes

    def test_dtypes_head_dims_causal_gqa_ragged(self):
        for dtype in (torch.bfloat16, torch.float16):
            for d in (64, 128):
                for causal in (False, True):
                    with self.subTest(dtype=dtype, d=d, causal=causal):
                        self.check(dtype, 2, 300, 4, 2, d, PATTERNS, causal=causal, seed=d)

    def test_other_supported_head_dims(self):
        for d in (32, 96):
            with self.subTest(d=d):
                self.check(torch.bfloat16, 1, 200, 2, 1, d, PATTERNS, causal=True, seed=d)

    def test_head_group_mode_and_uncovered_queries(self):
        for dtype in (torch.bfloat16, torch.float16):
            for causal in (False, True):
                with self.subTest(dtype=dtype, causal=causal):
                    # h = 7 over 3 patterns (3, 2, 2 heads); groups 1 and 2 have holes.
                    holes = self.check(dtype, 2, 300, 7, 7, 64, PATTERNS, mode="head_group",
                                       causal=causal, seed=3)
                    self.assertTrue(holes.any())

    def test_longnet_offsets_without_dense_pattern(self):
        for offset in ("head", "group", "block"):
            with self.subTest(offset=offset):
                holes = self.check(torch.float16, 1, 300, 8, 4, 64, [(64, 2), (256, 8)],
                                   offset=offset, seed=4)
                self.assertTrue(holes.any())

    def test_packed_varlen_and_scale(self):
        cu = [0, 100, 100, 357, 400, 401]  # an empty and a one-token sequence
        for dtype in (torch.bfloat16, torch.float16):
            with self.subTest(dtype=dtype):
                self.check(dtype, 0, 0, 4, 2, 128, PATTERNS, cu_seqlens=cu, causal=True,
                           softmax_scale=0.07, seed=5)

    def test_non_default_stream(self):
        dtype = torch.bfloat16
        q, k, v, dout = self.inputs(dtype, (2, 300, 4, 64), (2, 300, 2, 64), seed=6)
        w, r = split(PATTERNS)

        def run(prepare):
            leaves = [prepare(x).requires_grad_() for x in (q, k, v)]
            out, lse = da.dilated_attention(*leaves, w, r, causal=True, return_lse=True)
            out.backward(dout)
            return [out.detach(), lse] + [x.grad for x in leaves]

        want = run(lambda x: x.clone())
        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())

        def late_copy(x):
            # The inputs exist on `side` only after a long sleep there: a launch on
            # any other stream would read NaN.
            y = torch.full_like(x, float("nan"))
            if hasattr(torch.cuda, "_sleep"):
                torch.cuda._sleep(50_000_000)
            return y.copy_(x)

        with torch.cuda.stream(side):
            got = run(late_copy)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), got, want):
            self.assertTrue(torch.equal(a, b), "%s differs on a side stream" % name)

    def test_non_contiguous_inputs_and_explicit_backward(self):
        dtype = torch.float16
        q, k, v, dout = self.inputs(dtype, (1, 4, 200, 64), (1, 2, 200, 64), seed=7)
        w, r = split(PATTERNS)
        views = [x.transpose(1, 2).detach().requires_grad_() for x in (q, k, v)]  # [b, n, h, d]
        self.assertFalse(views[0].is_contiguous())
        out, lse = da.dilated_attention(*views, w, r, return_lse=True)
        out.backward(dout.transpose(1, 2))
        dense = [x.contiguous() for x in views]
        grads = da.dilated_attention_backward(*dense, out.detach(), lse,
                                              dout.transpose(1, 2).contiguous(), w, r)
        want = da.dilated_attention(*dense, w, r)
        self.assertTrue(torch.equal(out, want))
        for view, grad in zip(views, grads):
            self.assertTrue(torch.equal(view.grad, grad))

    def test_pool_reports_the_backward_workspace(self):
        device = torch.cuda.current_device()
        tokens, h = 2 * 300, 4
        q, k, v, dout = self.inputs(torch.bfloat16, (2, 300, h, 64), (2, 300, 2, 64), seed=8)
        w, r = split(PATTERNS)
        out, lse = da.dilated_attention(q, k, v, w, r, return_lse=True)
        torch.cuda.synchronize()
        da.reset_pool_peak(device)
        before = da.pool_stats(device)
        da.dilated_attention_backward(q, k, v, out, lse, dout, w, r)
        torch.cuda.synchronize()
        after = da.pool_stats(device)
        # dilated_attention.h: the backward takes 4 * tokens * num_heads bytes.
        self.assertGreaterEqual(after["peak_allocated_bytes"] - before["allocated_bytes"],
                                4 * tokens * h)
        self.assertEqual(after["live_allocations"], before["live_allocations"])

    def test_refusals(self):
        q = torch.randn(1, 64, 2, 80, device="cuda", dtype=torch.bfloat16)
        ok, why = da.cuda_supported(80, torch.bfloat16, num_heads=2, segment_lengths=[64],
                                    dilation_rates=[1])
        self.assertFalse(ok)
        self.assertIn("DA_STATUS_NOT_SUPPORTED", why)
        with self.assertRaises(da.DAError) as caught:
            da.dilated_attention(q, q, q, [64], [1])
        self.assertEqual(caught.exception.status_name, "DA_STATUS_NOT_SUPPORTED")
        self.assertEqual(da.cuda_supported(64, torch.float16, num_heads=2), (True, ""))
        with self.assertRaisesRegex(TypeError, "torch.bfloat16 or torch.float16"):
            x = torch.randn(1, 64, 2, 64, device="cuda")
            da.dilated_attention(x, x, x, [64], [1])
        with self.assertRaisesRegex(ValueError, "cu_seqlens must be a host"):
            x = torch.randn(64, 2, 64, device="cuda", dtype=torch.float16)
            da.dilated_attention(x, x, x, [64], [1],
                                 cu_seqlens=torch.tensor([0, 64], device="cuda"))

    @unittest.skipIf(SKIP_REASON is None and torch.cuda.device_count() < 2,
                     "one CUDA device: the second-device case needs two")
    def test_second_device(self):
        w, r = split(PATTERNS)
        q0, k0, v0, _ = self.inputs(torch.bfloat16, (1, 300, 4, 64), (1, 300, 4, 64), seed=9)
        want = da.dilated_attention(q0, k0, v0, w, r).cpu()
        with torch.cuda.device(0):  # the current device is not the tensors'
            got = da.dilated_attention(q0.to("cuda:1"), k0.to("cuda:1"), v0.to("cuda:1"), w, r)
        self.assertEqual(got.device, torch.device("cuda:1"))
        self.assertTrue(torch.equal(got.cpu(), want))


if __name__ == "__main__":
    unittest.main(verbosity=2)
