"""The numpy (CPU) path of the Python binding against an independent dense
reference written here from docs/semantics.md, in float64.

Runs with numpy only (no torch): /usr/bin/python3 python/tests/test_numpy.py, with
DA_LIBRARY naming libdilated_attention.so (else the package's search order).
"""
import ctypes
import os
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import dilated_attention as da  # noqa: E402
from dilated_attention import _capi  # noqa: E402

# ---------------------------------------------------------------------------
# Dense reference (docs/semantics.md), float64, one sequence at a time.


def head_groups(h, k):
    """Group of each head: k groups of floor(h/k) heads, the first h mod k one larger."""
    sizes = [h // k + (1 if g < h % k else 0) for g in range(k)]
    return np.repeat(np.arange(k), sizes)


def head_offsets(policy, mode, h, k, r):
    """Offset o in [0, r) of every head for a pattern of dilation r."""
    if policy == "default":
        policy = "head" if mode == "longnet" else "group"
    j = np.arange(h)
    if policy == "head":
        return j % r
    if policy == "group":
        return head_groups(h, k) % r
    if policy == "block":
        return j // -(-h // r)  # floor(j / ceil(h / r))
    raise AssertionError(policy)


def multiplicity(n, h, patterns, mode="longnet", offset="default", causal=False):
    """C[j, p, t]: how often key t occurs in query p's key multiset for head j."""
    k = len(patterns)
    pos = np.arange(n)
    groups = head_groups(h, k)
    C = np.zeros((h, n, n))
    for i, (w, r) in enumerate(patterns):
        seg, rel = pos // w, pos % w
        o = head_offsets(offset, mode, h, k, r)
        for j in range(h):
            if mode == "head_group" and groups[j] != i:
                continue
            sel = rel % r == o[j]
            m = sel[:, None] & sel[None, :] & (seg[:, None] == seg[None, :])
            if causal:
                m &= pos[None, :] <= pos[:, None]
            C[j] += m
    return C


def scores(q, k, C, scale):
    """Per head j: S = s q_j k^T; P = C e^(S - LSE); LSE (-inf for uncovered rows)."""
    n, h, _ = q.shape
    group = h // k.shape[1]
    for j in range(h):
        S = scale * q[:, j] @ k[:, j // group].T
        c = C[j]
        covered = c.sum(1) > 0
        m = np.where(c > 0, S, -np.inf).max(1)
        m[~covered] = 0.0
        E = np.where(c > 0, c * np.exp(S - m[:, None]), 0.0)
        denom = E.sum(1)
        lse = np.where(covered, m + np.log(np.where(covered, denom, 1.0)), -np.inf)
        P = E / np.where(covered, denom, 1.0)[:, None]
        yield j, j // group, P, lse


def ref_forward(q, k, v, C, scale):
    n, h, d = q.shape
    out, lse = np.zeros((n, h, d)), np.empty((n, h))
    for j, g, P, lse_j in scores(q, k, C, scale):
        out[:, j] = P @ v[:, g]
        lse[:, j] = lse_j
    return out, lse


def ref_backward(q, k, v, dout, C, scale):
    """The gradient formulas of docs/semantics.md (D, dS, dQ, dK, dV)."""
    out, _ = ref_forward(q, k, v, C, scale)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    D = (dout * out).sum(-1)
    for j, g, P, _ in scores(q, k, C, scale):
        dS = P * (dout[:, j] @ v[:, g].T - D[:, j][:, None])
        dq[:, j] = scale * dS @ k[:, g]
        dk[:, g] += scale * dS.T @ q[:, j]
        dv[:, g] += P.T @ dout[:, j]
    return dq, dk, dv


def sequences(b, n, cu):
    if cu is None:
        return [(s * n, (s + 1) * n) for s in range(b)]
    return list(zip(cu[:-1], cu[1:]))


def packed_reference(q, k, v, dout, spans, patterns, scale, **pattern_kw):
    """Reference over packed [tokens, heads, d] tensors, each sequence on its own."""
    h = q.shape[1]
    out, lse = np.zeros(q.shape), np.full(q.shape[:2], -np.inf)
    dq, dk, dv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
    for a, e in spans:
        if e == a:
            continue
        C = multiplicity(e - a, h, patterns, **pattern_kw)
        out[a:e], lse[a:e] = ref_forward(q[a:e], k[a:e], v[a:e], C, scale)
        dq[a:e], dk[a:e], dv[a:e] = ref_backward(q[a:e], k[a:e], v[a:e], dout[a:e], C, scale)
    return out, lse, (dq, dk, dv)


def assert_close(test, actual, expected, what, rtol=1e-4):
    """|actual - expected| <= rtol * (|expected| + max|expected|) elementwise."""
    scale = max(1.0, float(np.abs(expected).max()))
    err = np.abs(actual.astype(np.float64) - expected)
    bad = err > rtol * (np.abs(expected) + scale)
    test.assertFalse(bad.any(), "%s: %d of %d elements differ, worst %g at %s" % (
        what, int(bad.sum()), bad.size, float(err.max()),
        np.unravel_index(int(err.argmax()), err.shape)))


# ---------------------------------------------------------------------------


class ReferenceSelfCheck(unittest.TestCase):
    """The reference itself: its gradient is its forward's, and the cases below
    exercise what they claim (multiplicity, distinct offsets, uncovered queries)."""

    def test_reference_gradient_matches_central_differences(self):
        rng = np.random.default_rng(1)
        for kw in (dict(mode="longnet", causal=True),
                   dict(mode="head_group", offset="block")):
            n, h, h_kv, d, scale = 11, 4, 2, 3, 0.7
            patterns = [(4, 1), (8, 2), (11, 4)] if kw["mode"] == "longnet" else [(4, 2), (8, 4)]
            C = multiplicity(n, h, patterns, **kw)
            q, k, v = (rng.standard_normal(s) for s in ((n, h, d), (n, h_kv, d), (n, h_kv, d)))
            dout = rng.standard_normal((n, h, d))
            grads = ref_backward(q, k, v, dout, C, scale)
            eps = 1e-6
            for x, g in zip((q, k, v), grads):
                numeric = np.zeros_like(x)
                for idx in np.ndindex(*x.shape):
                    saved = x[idx]
                    x[idx] = saved + eps
                    plus = (ref_forward(q, k, v, C, scale)[0] * dout).sum()
                    x[idx] = saved - eps
                    minus = (ref_forward(q, k, v, C, scale)[0] * dout).sum()
                    x[idx] = saved
                    numeric[idx] = (plus - minus) / (2 * eps)
                np.testing.assert_allclose(g, numeric, rtol=1e-5, atol=1e-7, err_msg=str(kw))

    def test_cases_exercise_multiplicity_offsets_and_holes(self):
        C = multiplicity(37, 4, [(8, 1), (16, 2), (32, 4)])
        self.assertEqual(C.max(), 3)  # a key in all three patterns counts three times
        masks = [multiplicity(37, 6, [(8, 2), (16, 4)], offset=o) for o in ("head", "group", "block")]
        for a in range(3):
            for b in range(a + 1, 3):
                self.assertFalse(np.array_equal(masks[a], masks[b]))
        C = multiplicity(37, 6, [(8, 2), (16, 4)])
        self.assertTrue((C.sum(2) == 0).any())  # no r = 1: some queries see nothing


class ForwardBackward(unittest.TestCase):

    def run_case(self, b, n, h, h_kv, d, patterns, cu=None, softmax_scale=None, seed=0,
                 **kw):
        """Library forward (out, lse) and backward against the reference."""
        rng = np.random.default_rng(seed)
        tokens = b * n if cu is None else int(cu[-1])
        lead = (b, n) if cu is None else (tokens,)
        q = rng.standard_normal(lead + (h, d)).astype(np.float32)
        k = rng.standard_normal(lead + (h_kv, d)).astype(np.float32)
        v = rng.standard_normal(lead + (h_kv, d)).astype(np.float32)
        dout = rng.standard_normal(lead + (h, d)).astype(np.float32)
        w, r = zip(*patterns)
        opts = dict(kw, softmax_scale=softmax_scale, cu_seqlens=cu)
        inputs = [x.copy() for x in (q, k, v)]
        out, lse = da.dilated_attention(q, k, v, w, r, return_lse=True, **opts)
        self.assertEqual(out.shape, q.shape)
        self.assertEqual(lse.shape, lead + (h,))
        self.assertEqual((out.dtype, lse.dtype), (np.float32, np.float32))
        dq, dk, dv = da.dilated_attention_backward(q, k, v, out, lse, dout, w, r, **opts)
        for before, after in zip(inputs, (q, k, v)):
            np.testing.assert_array_equal(before, after)  # inputs are read only

        scale = softmax_scale or 1.0 / np.sqrt(d)
        flat = lambda x: x.reshape((tokens,) + x.shape[-2:]).astype(np.float64)  # noqa: E731
        ref_out, ref_lse, ref_grads = packed_reference(
            flat(q), flat(k), flat(v), flat(dout), sequences(b, n, cu), patterns, scale, **kw)
        out, lse = out.reshape(tokens, h, d), lse.reshape(tokens, h)
        holes = np.isneginf(ref_lse)
        np.testing.assert_array_equal(np.isneginf(lse), holes, "lse = -inf exactly where "
                                      "no pattern covers the query")
        self.assertTrue(np.isfinite(lse[~holes]).all())
        self.assertTrue((out[holes] == 0).all(), "uncovered queries must get out = 0")
        assert_close(self, out, ref_out, "out")
        assert_close(self, lse[~holes], ref_lse[~holes], "lse")
        for name, got, want in zip(("dq", "dk", "dv"), (dq, dk, dv), ref_grads):
            assert_close(self, flat(got), want, name, rtol=2e-4)
        return holes

    def test_longnet_ragged_multiset(self):
        # n = 37 is a multiple of no w; overlapping patterns count keys twice.
        self.run_case(2, 37, 4, 4, 16, [(8, 1), (16, 2), (32, 4)])

    def test_longnet_causal_gqa(self):
        self.run_case(2, 45, 6, 2, 8, [(8, 1), (16, 2), (64, 8)], causal=True)

    def test_mqa_and_softmax_scale(self):
        self.run_case(1, 30, 4, 1, 8, [(4, 1), (12, 3)], softmax_scale=0.45, seed=3)

    def test_offsets_and_uncovered_queries(self):
        for offset in ("head", "group", "block"):
            for causal in (False, True):
                with self.subTest(offset=offset, causal=causal):
                    holes = self.run_case(2, 29, 6, 3, 8, [(8, 2), (16, 4)], offset=offset,
                                          causal=causal, seed=5)
                    self.assertTrue(holes.any())  # no r = 1: LSE = -inf somewhere

    def test_head_group_mode(self):
        # h = 5 over 3 patterns: groups of 2, 2, 1 heads.
        for offset in ("default", "head", "block"):
            for causal in (False, True):
                with self.subTest(offset=offset, causal=causal):
                    self.run_case(2, 27, 5, 5, 8, [(4, 1), (8, 2), (16, 4)], mode="head_group",
                                  offset=offset, causal=causal, seed=7)

    def test_packed_varlen_with_empty_sequence(self):
        # Each sequence is segmented from its own start; sequence 1 is empty.
        cu = np.array([0, 13, 13, 40, 45], dtype=np.int64)
        self.run_case(4, 0, 4, 2, 8, [(8, 1), (16, 2)], cu=cu, causal=True, seed=9)
        self.run_case(4, 0, 4, 2, 8, [(8, 1), (16, 2)], cu=[0, 5, 5, 22, 45], seed=10)

    def test_varlen_equals_one_call_per_sequence(self):
        rng = np.random.default_rng(11)
        cu = np.array([0, 19, 19, 50], dtype=np.int32)  # int32, as flash-attn keeps them
        q, k, v = (rng.standard_normal((50, 2, 8)).astype(np.float32) for _ in range(3))
        packed = da.dilated_attention(q, k, v, [8, 16], [1, 2], cu_seqlens=cu)
        for a, e in ((0, 19), (19, 50)):
            one = da.dilated_attention(q[None, a:e], k[None, a:e], v[None, a:e], [8, 16], [1, 2])
            np.testing.assert_allclose(packed[a:e], one[0], rtol=1e-6, atol=1e-6)

    def test_conversions_and_return_forms(self):
        rng = np.random.default_rng(13)
        q64 = rng.standard_normal((1, 20, 2, 32, 4)).transpose(0, 1, 2, 4, 3)[..., 0, :]
        self.assertFalse(q64.flags.c_contiguous)  # float64 and strided
        k, v = (rng.standard_normal((1, 20, 2, 32)).astype(np.float32) for _ in range(2))
        out = da.dilated_attention(q64, k, v, [8], [2])
        self.assertIsInstance(out, np.ndarray)
        self.assertEqual(out.dtype, np.float32)
        want = da.dilated_attention(np.ascontiguousarray(q64, np.float32), k, v, [8], [2])
        np.testing.assert_array_equal(out, want)


class Errors(unittest.TestCase):

    def setUp(self):
        rng = np.random.default_rng(17)
        self.q, self.k, self.v = (rng.standard_normal((1, 16, 4, 8)).astype(np.float32)
                                  for _ in range(3))

    def assert_da_error(self, text, *args, **kw):
        with self.assertRaises(da.DAError) as caught:
            da.dilated_attention(*args, **kw)
        self.assertEqual(caught.exception.status_name, "DA_STATUS_INVALID_ARGUMENT")
        self.assertIn(text, str(caught.exception))
        self.assertIsInstance(caught.exception, RuntimeError)

    def test_library_rules_surface_as_da_error(self):
        q, k, v = self.q, self.k, self.v
        self.assert_da_error("dilation_rates[1]=16 exceeds segment_lengths[1]=8", q, k, v,
                             [4, 8], [1, 16])
        self.assert_da_error("dilation_rates[0]=0 must be >= 1", q, k, v, [4], [0])
        self.assert_da_error("does not match", q, k, v, [4, 8], [1])
        self.assert_da_error("softmax_scale", q, k, v, [4], [1], softmax_scale=-1.0)
        self.assert_da_error("head_dim=300", *(np.ones((1, 4, 1, 300), np.float32),) * 3, [4],
                             [1])
        kv = np.ones((1, 16, 3, 8), np.float32)
        self.assert_da_error("num_heads=4 is not divisible by params->num_kv_heads=3", q, kv, kv,
                             [4], [1])
        packed = np.ones((16, 4, 8), np.float32)
        self.assert_da_error("non-decreasing", packed, packed, packed, [4], [1],
                             cu_seqlens=[0, 10, 6, 16])

    def test_python_checks_name_the_argument(self):
        q, k, v = self.q, self.k, self.v
        cases = [
            (ValueError, "k must be", (q, k[:, :15], v[:, :15], [4], [1]), {}),
            (ValueError, "v must have k's shape", (q, k, v[..., :4], [4], [1]), {}),
            (ValueError, "q must be [batch, seqlen", (q[0], k[0], v[0], [4], [1]), {}),
            (ValueError, "cu_seqlens[-1]=15", (q[0], k[0], v[0], [4], [1]),
             dict(cu_seqlens=[0, 15])),
            (TypeError, "cu_seqlens must hold integers", (q[0], k[0], v[0], [4], [1]),
             dict(cu_seqlens=[0.0, 16.0])),
            (TypeError, "q must hold floating-point", (q.astype(np.int32), k, v, [4], [1]), {}),
            (TypeError, "v must be a numpy.ndarray", (q, k, v.tolist(), [4], [1]), {}),
            (ValueError, "mode='dilated'", (q, k, v, [4], [1]), dict(mode="dilated")),
            (ValueError, "offset='heads'", (q, k, v, [4], [1]), dict(offset="heads")),
            (ValueError, "softmax_scale=0", (q, k, v, [4], [1]), dict(softmax_scale=0)),
            (TypeError, "segment_lengths must be a sequence of ints", (q, k, v, [4.5], [1]), {}),
        ]
        for error, text, args, kw in cases:
            with self.subTest(text=text):
                with self.assertRaises(error) as caught:
                    da.dilated_attention(*args, **kw)
                self.assertIn(text, str(caught.exception))

    def test_backward_checks_shapes(self):
        q, k, v = self.q, self.k, self.v
        out, lse = da.dilated_attention(q, k, v, [4], [1], return_lse=True)
        with self.assertRaisesRegex(ValueError, r"lse must have shape \(1, 16, 4\)"):
            da.dilated_attention_backward(q, k, v, out, lse[:, :8], out, [4], [1])
        with self.assertRaisesRegex(ValueError, "dout must have shape"):
            da.dilated_attention_backward(q, k, v, out, lse, out[:, :8], [4], [1])

    def test_load_library_refuses_a_missing_file(self):
        with self.assertRaisesRegex(OSError, "no such file"):
            da.load_library("/nonexistent/libdilated_attention.so")
        self.assertEqual(da.version().count("."), 2)  # the loaded library still serves


class Counting(unittest.TestCase):

    def test_count_flops_matches_reference_pairs(self):
        cases = [
            dict(seqlen=37, h=4, d=16, patterns=[(8, 1), (16, 2), (32, 4)], kw={}),
            dict(seqlen=45, h=6, d=8, patterns=[(8, 1), (64, 8)], kw=dict(causal=True)),
            dict(seqlen=29, h=6, d=8, patterns=[(8, 2), (16, 4)], kw=dict(offset="block")),
            dict(seqlen=27, h=5, d=8, patterns=[(4, 1), (8, 2), (16, 4)],
                 kw=dict(mode="head_group", causal=True)),
        ]
        for c in cases:
            with self.subTest(**{k: str(v) for k, v in c.items()}):
                pairs = multiplicity(c["seqlen"], c["h"], c["patterns"], **c["kw"]).sum()
                w, r = zip(*c["patterns"])
                for backward, factor in ((False, 1.0), (True, 3.5)):
                    got = da.count_flops(c["seqlen"], c["h"], c["d"], w, r, batch=3,
                                         with_backward=backward, **c["kw"])
                    self.assertEqual(got, 3 * 4 * c["d"] * pairs * factor)

    def test_count_flops_varlen(self):
        cu = [0, 13, 13, 40]
        pairs = sum(multiplicity(e - a, 4, [(8, 1), (16, 2)], causal=True).sum()
                    for a, e in zip(cu[:-1], cu[1:]))
        got = da.count_flops(None, 4, 8, [8, 16], [1, 2], causal=True, cu_seqlens=cu)
        self.assertEqual(got, 4 * 8 * pairs)


class LibraryInfo(unittest.TestCase):

    def test_version(self):
        self.assertRegex(da.version(), r"^\d+\.\d+\.\d+$")

    def test_cuda_supported_answers_with_a_reason(self):
        ok, why = da.cuda_supported(64, "bf16", num_heads=8, segment_lengths=[64],
                                    dilation_rates=[2])
        self.assertIsInstance(ok, bool)
        self.assertEqual(ok, why == "", why)
        if not ok:
            self.assertRegex(why, r"^DA_STATUS_\w+: .+")
        with self.assertRaisesRegex(ValueError, "bf16 or f16"):
            da.cuda_supported(64, "float32")

    def test_pool_stats_mirror_the_c_struct(self):
        # The host pool needs no GPU; drive it through the C ABI and watch each counter.
        lib = _capi.lib()
        lib.da_mempool_allocate.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                                            ctypes.POINTER(ctypes.c_void_p)]
        lib.da_mempool_free.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        pool = ctypes.c_void_p()
        self.assertEqual(lib.da_mempool_default(_capi.MEMPOOL_HOST_DEVICE, ctypes.byref(pool)), 0)
        da.reset_pool_peak(-1)
        before = da.pool_stats(-1)
        self.assertEqual(len(before), 24)
        sizes = [1000, 4 << 20]  # 1000 rounds to 1024; 4 MiB fills a segment exactly
        blocks = [ctypes.c_void_p() for _ in sizes]
        for size, block in zip(sizes, blocks):
            self.assertEqual(lib.da_mempool_allocate(pool, size, None, ctypes.byref(block)), 0)
        live = da.pool_stats(-1)
        self.assertEqual(live["requested_bytes"] - before["requested_bytes"], sum(sizes))
        self.assertEqual(live["allocated_bytes"] - before["allocated_bytes"], 1024 + (4 << 20))
        self.assertEqual(live["live_allocations"] - before["live_allocations"], 2)
        self.assertEqual(live["allocations"] - before["allocations"], 2)
        self.assertGreaterEqual(live["reserved_bytes"], live["allocated_bytes"])
        self.assertEqual(live["cached_bytes"], live["reserved_bytes"] - live["allocated_bytes"])
        self.assertEqual(live["peak_allocated_bytes"], live["allocated_bytes"])
        self.assertGreaterEqual(live["segments"], 1)
        for block in blocks:
            self.assertEqual(lib.da_mempool_free(pool, block, None), 0)
        after = da.pool_stats(-1)
        self.assertEqual(after["frees"] - before["frees"], 2)
        self.assertEqual(after["live_allocations"], before["live_allocations"])
        self.assertEqual(after["peak_allocated_bytes"], live["allocated_bytes"])
        self.assertEqual(after["backend_ns"], 0)  # profiling is off in the default pool
        da.reset_pool_peak(-1)
        self.assertEqual(da.pool_stats(-1)["peak_allocated_bytes"], after["allocated_bytes"])

    def test_gpu_pool_without_a_gpu_is_a_da_error(self):
        try:
            stats = da.pool_stats(0)
        except da.DAError as e:
            self.assertEqual(e.status_name, "DA_STATUS_NO_DEVICE")
        else:
            self.assertIn("peak_allocated_bytes", stats)

    def test_numpy_path_never_imports_torch(self):
        self.assertNotIn("torch", sys.modules)


if __name__ == "__main__":
    unittest.main(verbosity=2)
