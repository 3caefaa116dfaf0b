"""truncate_candidates (block-only selection): exact ordered compaction."""
from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICE, by_device, case, poison

from asynctls_sglang.kernels import triton_ops
from asynctls_sglang.ops import torch_ops

CASES = by_device([
    case((2, 3, 48), 20, 0.7, id="N48-k20"),
    case((1, 2, 30), 64, 0.5, id="k-larger-than-N"),
    case((2, 1, 1500), 700, 0.9, id="multi-chunk"),
    case((1, 1, 16), 5, 0.0, id="nothing-ok"),
], [
    case((8, 8, 8192), 1968, 0.95, id="gpu-quest-8192"),
])


@pytest.mark.parametrize("shape, k, p_ok", CASES)
def test_truncate_exact(shape, k, p_ok):
    gen = torch.Generator().manual_seed(k)
    pos = torch.randint(0, 10000, shape, generator=gen).to(DEVICE)
    ok = (torch.rand(shape, generator=gen) < p_ok).to(DEVICE)
    out = poison(torch.empty(*shape[:-1], k, dtype=torch.int64, device=DEVICE))
    got = triton_ops.truncate_candidates(pos, ok, k, out=out)
    assert torch.equal(got, torch_ops.truncate_candidates(pos, ok, k))
