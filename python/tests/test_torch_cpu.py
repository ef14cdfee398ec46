"""torch CPU float32 tensors: the same results as the numpy path (which
test_numpy.py checks against the dense reference), through autograd.

Skips, saying why, without torch. Needs no GPU:
    DA_LIBRARY=/path/to/libdilated_attention.so python3 python/tests/test_torch_cpu.py
"""
import os
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import dilated_attention as da  # noqa: E402

try:
    import torch
except ImportError:
    torch = None

W, R = [8, 16, 32], [1, 2, 4]


@unittest.skipIf(torch is None, "torch is not installed for %s" % sys.executable)
class TorchCpu(unittest.TestCase):

    def tensors(self, q_shape, kv_shape, seed=0):
        g = torch.Generator().manual_seed(seed)
        return [torch.randn(s, generator=g) for s in (q_shape, kv_shape, kv_shape, q_shape)]

    def test_autograd_equals_numpy_forward_and_backward(self):
        for kw in (dict(causal=True), dict(mode="head_group", offset="block")):
            with self.subTest(**kw):
                q, k, v, dout = self.tensors((2, 37, 6, 16), (2, 37, 3, 16))
                leaves = [x.clone().requires_grad_() for x in (q, k, v)]
                out, lse = da.dilated_attention(*leaves, W, R, return_lse=True, **kw)
                self.assertIsInstance(out, torch.Tensor)
                self.assertFalse(lse.requires_grad)
                (out * dout).sum().backward()

                arrays = [x.numpy() for x in (q, k, v)]
                want_out, want_lse = da.dilated_attention(*arrays, W, R, return_lse=True, **kw)
                want_grads = da.dilated_attention_backward(*arrays, want_out, want_lse,
                                                           dout.numpy(), W, R, **kw)
                np.testing.assert_array_equal(out.detach().numpy(), want_out)
                np.testing.assert_array_equal(lse.numpy(), want_lse)
                for leaf, want in zip(leaves, want_grads):
                    np.testing.assert_array_equal(leaf.grad.numpy(), want)

    def test_partial_grads_views_and_varlen(self):
        q, k, v, dout = self.tensors((50, 4, 8), (50, 2, 8), seed=1)
        cu = torch.tensor([0, 19, 19, 50], dtype=torch.int32)
        q_leaf = q.clone().requires_grad_()
        k_view = k.transpose(0, 1).contiguous().transpose(0, 1)  # same values, strided
        self.assertFalse(k_view.is_contiguous())
        out, lse = da.dilated_attention(q_leaf, k_view, v, W, R, cu_seqlens=cu,
                                        return_lse=True)
        self.assertEqual(tuple(lse.shape), (50, 4))
        out.backward(dout)
        dq, _, _ = da.dilated_attention_backward(q, k, v, out.detach(), lse, dout, W, R,
                                                 cu_seqlens=cu)
        self.assertTrue(torch.equal(q_leaf.grad, dq))

    def test_type_errors_name_the_argument(self):
        q, k, v, _ = self.tensors((1, 16, 2, 8), (1, 16, 2, 8))
        with self.assertRaisesRegex(TypeError, "q: CPU tensors must be torch.float32"):
            da.dilated_attention(q.double(), k.double(), v.double(), [8], [1])
        with self.assertRaisesRegex(TypeError, "k must be torch.float32 like q"):
            da.dilated_attention(q, k.half(), v, [8], [1])
        with self.assertRaisesRegex(TypeError, "v must be a torch.Tensor like q"):
            da.dilated_attention(q, k, v.numpy(), [8], [1])
        with self.assertRaises(da.DAError):
            da.dilated_attention(q, k, v, [8], [9])


if __name__ == "__main__":
    unittest.main(verbosity=2)
