"""The offloading engine's table reads as kernels (readable_blocks, buffer_table) against their
torch form in OffloadRuntime (the specification): bit-exact outputs and the same late/dropped
counts, on random residency tables, windows with duplicates and absent blocks, unused positions,
dense rows, the padding row."""
from __future__ import annotations

import pytest
import torch

from asynctls_sglang.config import AsyncTLSConfig
from asynctls_sglang.memory.offload_runtime import DecodeStep, OffloadRuntime

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CFG = AsyncTLSConfig(offload=True, block_size=16, block_budget=8, token_budget=64, sink_tokens=16,
                     local_window=32)


def _runtime(hk: int, max_blocks: int, rows: int, seed: int) -> OffloadRuntime:
    rt = OffloadRuntime(CFG, num_layers=2, kv_heads=hk, head_dim=8, v_head_dim=8, dtype=torch.float32,
                        device=DEVICE, num_rows=rows, max_blocks=max_blocks, host_blocks=4)
    g = torch.Generator().manual_seed(seed)
    cache = rt.cache
    # random residency: each (row, head) holds a random set of blocks in random slots
    for layer in range(cache.num_layers):
        for r in range(1, rows):
            for h in range(hk):
                n = int(torch.randint(0, cache.capacity + 1, (1,), generator=g))
                blocks = torch.randperm(max_blocks, generator=g)[:n]
                slots = torch.randperm(cache.capacity, generator=g)[:n]
                cache.blk2slot[layer, r, h, blocks.to(DEVICE)] = slots.int().to(DEVICE)
                cache.slot2blk[layer, r, h, slots.to(DEVICE)] = blocks.to(DEVICE)
    return rt


def _step(rt: OffloadRuntime, rows: torch.Tensor, lens: torch.Tensor, dense: torch.Tensor, g) -> DecodeStep:
    bs = rows.shape[0]
    window = torch.randint(-1, rt.cache.max_blocks, (bs, 5), generator=g)
    window[:, 1] = window[:, 0]  # a duplicate window block (sink and local overlap)
    none = torch.full((bs,), -1, dtype=torch.int64, device=DEVICE)
    return DecodeStep(rows.to(DEVICE), lens.to(DEVICE), none, none, window.to(DEVICE), none, none, none, none,
                      dense.to(DEVICE), torch.arange(bs, device=DEVICE))


@pytest.mark.parametrize("hk,max_blocks,bs", [(1, 40, 3), (4, 70, 5), (8, 300, 2)])
def test_readable_blocks_and_buffer_table_match_the_torch_form(hk, max_blocks, bs):
    g = torch.Generator().manual_seed(hk * 1000 + max_blocks)
    ref, ker = _runtime(hk, max_blocks, bs + 2, 7), _runtime(hk, max_blocks, bs + 2, 7)
    ref.kernels, ker.kernels = False, True
    rows = torch.randperm(bs + 2, generator=g)[:bs]
    rows[0] = 0  # SGLang's padding row
    lens = torch.randint(1, max_blocks * 16, (bs,), generator=g)
    dense = torch.rand(bs, generator=g) < 0.3
    step = _step(ref, rows, lens, dense, g)
    for layer in range(2):
        nb = max_blocks - 3
        # ranked blocks: distinct ids per row and head, unused (-1) at the end of some
        ranked = torch.stack([torch.stack([torch.randperm(nb, generator=g)[:18] for _ in range(hk)])
                              for _ in range(bs)])
        ranked[:, :, 14:] = torch.where(torch.rand(bs, hk, 4, generator=g) < 0.5, -1, ranked[:, :, 14:])
        ranked = ranked.to(DEVICE)
        a = ref.readable_blocks(layer, step, ranked, 9)
        b = ker.readable_blocks(layer, step, ranked, 9)
        assert torch.equal(a, b) and b.shape == (bs, hk, 9) and (b >= 0).any() and (b < 0).any()
        assert int(ref.late) == int(ker.late) and int(ref.late) > 0
        positions = torch.randint(-1, max_blocks * 16, (bs, hk, 37), generator=g)
        positions[:, :, -5:] = -1
        positions = positions.to(DEVICE)
        t_ref, req_ref, c_ref = ref.buffer_table(layer, step, positions)
        t_ker, req_ker, c_ker = ker.buffer_table(layer, step, positions)
        assert torch.equal(t_ref, t_ker) and t_ker.dtype == torch.int32
        assert torch.equal(c_ref, c_ker) and torch.equal(req_ref, req_ker)
        assert int(ref.dropped) == int(ker.dropped) and int(ref.dropped) > 0
        assert (c_ker >= 0).any()  # some positions are readable, so the table is exercised


def test_readable_blocks_is_the_top_k_over_the_readable_blocks():
    """The rule (docs/offload.md): of the best 2 k_b blocks in rank order, the first k_b readable
    ones. That is the top-k_b over the scores masked to the readable blocks whenever k_b of the
    best 2 k_b are readable (else fewer blocks: the rest are left out)."""
    from asynctls_sglang.ops import torch_ops

    g = torch.Generator().manual_seed(3)
    hk, nb, kb, bs = 4, 60, 8, 3
    rt = _runtime(hk, nb + 3, bs + 1, 5)
    rows = torch.arange(1, bs + 1)
    # residency from most blocks (row 1) to few (row 3): only the blk2slot >= 0 test matters here
    dense_res = torch.rand(bs, hk, nb + 4, generator=g) < torch.tensor([0.9, 0.6, 0.2]).view(bs, 1, 1)
    rt.cache.blk2slot[0, rows.to(DEVICE)] = torch.where(dense_res, 0, -1).int().to(DEVICE)
    step = _step(rt, rows, torch.full((bs,), 900), torch.zeros(bs, dtype=torch.bool), g)
    scores = torch.randn(bs, hk, nb, generator=g).to(DEVICE)
    ranked = torch_ops.select_blocks(scores, 2 * kb)
    got = rt.readable_blocks(0, step, ranked, kb)
    blk = torch.arange(nb, device=DEVICE)
    resident = rt.cache.blk2slot[0, rows.to(DEVICE), :, :nb] >= 0
    in_window = ((blk.view(1, -1, 1) == step.window.view(bs, 1, -1)) & (step.window.view(bs, 1, -1) >= 0)).any(-1)
    readable = resident | in_window.unsqueeze(1)
    want = torch_ops.select_blocks(scores.masked_fill(~readable, float("-inf")), kb)
    enough = (torch.gather(readable, 2, ranked.clamp(min=0)) & (ranked >= 0)).sum(-1) >= kb
    assert enough.any() and (~enough).any()  # both cases occur in this draw
    assert torch.equal(got[enough], want[enough])
    # too few readable among the best 2 k_b: those few, then -1, never a block outside them
    for b, h in (~enough).nonzero().tolist():
        kept = got[b, h][got[b, h] >= 0]
        assert set(kept.tolist()) <= set(ranked[b, h].tolist()) and bool(readable[b, h, kept].all())
        assert kept.tolist() == want[b, h, :kept.numel()].tolist()


def test_the_ranked_width_stays_within_the_top_k_kernel():
    from asynctls_sglang.adapter.offload import RANKED_MAX
    from asynctls_sglang.kernels.common.topk import MAX_K

    assert RANKED_MAX == MAX_K
