"""tl.xor_sum (the reduction inside tl.sort's bitonic steps) along each axis and over all axes:
the same bits as NumPy's xor reduce. Under the interpreter this runs the NumPy path that
kernels.interpret.patch_interpreter puts in place of the interpreter's element-by-element
reduction (the ranked top-k of k ~ 300 took minutes without it); on a GPU, the compiled one."""
from __future__ import annotations

import functools
import operator

import pytest
import torch
import triton
import triton.language as tl
from kernel_testing import DEVICE


@triton.jit
def _xor_kernel(x, out_rows, out_cols, out_all, R: tl.constexpr, C: tl.constexpr):
    o_r = tl.arange(0, R)
    o_c = tl.arange(0, C)
    # [R, C]
    b_x = tl.load(x + o_r[:, None] * C + o_c[None, :])
    tl.store(out_rows + o_r, tl.xor_sum(b_x, axis=1))
    tl.store(out_cols + o_c, tl.xor_sum(b_x, axis=0))
    tl.store(out_all, tl.xor_sum(tl.reshape(b_x, [R * C]), axis=0))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
def test_xor_sum_along_each_axis(dtype):
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(-2 ** 31, 2 ** 31 - 1, (8, 64), generator=gen, dtype=torch.int64)
    if dtype == torch.int64:
        x = x * 2 ** 32 + torch.randint(0, 2 ** 31, (8, 64), generator=gen, dtype=torch.int64)
    x = x.to(dtype)
    rows, cols, whole = torch.empty(8, dtype=dtype), torch.empty(64, dtype=dtype), torch.empty(1, dtype=dtype)
    outs = [t.to(DEVICE) for t in (rows, cols, whole)]
    _xor_kernel[(1,)](x.to(DEVICE), *outs, R=8, C=64)
    rows, cols, whole = (t.cpu() for t in outs)
    xor = functools.partial(functools.reduce, operator.xor)
    assert rows.tolist() == [xor(r) for r in x.tolist()]
    assert cols.tolist() == [xor(c) for c in x.t().tolist()]
    assert whole.item() == xor(x.flatten().tolist())
