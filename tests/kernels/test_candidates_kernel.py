"""candidate_positions (one Triton launch) against the torch op: exact positions and flags."""
from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICE, by_device, case, poison

from asynctls_sglang.kernels import triton_ops
from asynctls_sglang.ops import torch_ops

# (seq lens, Hk, k_b, block, sink, local)
CASES = by_device([
    case([100, 45, 7], 2, 5, 8, 4, 8, id="ragged-B8"),
    case([300], 3, 7, 16, 16, 16, id="g3-B16"),
    case([20, 3], 1, 4, 16, 16, 64, id="all-sink-or-local"),
    case([1000, 999], 2, 3, 64, 0, 0, id="no-sink-no-local-B64"),
    case([77], 4, 20, 4, 2, 5, id="k_b-beyond-blocks"),
    case([150, 60], 2, 6, 8, 4, 8, id="strided-blocks"),
], [
    case([131072] * 8, 8, 128, 64, 16, 64, id="gpu-qwen3-128k-bs8"),
])


@pytest.mark.parametrize("lens, hk, kb, b, sink, local", CASES)
def test_candidate_positions_exact(lens, hk, kb, b, sink, local, request):
    bs = len(lens)
    gen = torch.Generator().manual_seed(kb * b)
    nb = torch.tensor([-(-n // b) for n in lens])
    # chosen blocks: distinct live ids, then -1 where a row has fewer than k_b blocks
    blocks = torch.stack([torch.stack([torch.randperm(max(int(nb.max()), kb), generator=gen)[:kb]
                                       for _ in range(hk)]) for _ in range(bs)])
    blocks = torch.where(blocks < nb.view(bs, 1, 1), blocks, -1)
    blocks[..., -1] = -1  # every row also ends with an unused slot
    blocks = blocks.to(DEVICE)
    if "strided" in request.node.name:  # a view with no unit stride (every other chosen block)
        blocks = torch.cat([blocks, blocks], dim=-1)[..., ::2]
    seq_lens = torch.tensor(lens).to(DEVICE)
    want_pos, want_ok = torch_ops.candidate_positions(blocks, seq_lens, b, sink, local)
    pos = poison(torch.empty(bs, hk, kb * b, dtype=torch.int64, device=DEVICE))
    ok = poison(torch.empty(bs, hk, kb * b, dtype=torch.bool, device=DEVICE))
    got_pos, got_ok = triton_ops.candidate_positions(blocks, seq_lens, b, sink, local, out=(pos, ok))
    assert got_pos.data_ptr() == pos.data_ptr() and got_ok.data_ptr() == ok.data_ptr()
    assert (~want_ok).any(), "the case must have non-candidates"
    assert torch.equal(got_pos, want_pos)
    assert torch.equal(got_ok, want_ok)
