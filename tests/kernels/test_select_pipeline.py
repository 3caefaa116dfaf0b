"""select_positions(..., ops=triton_ops) against ops=torch_ops: the whole decode selection."""
from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICE, assert_topk_equivalent, by_device, case, make_pool

from asynctls_sglang.config import AsyncTLSConfig
from asynctls_sglang.kernels import triton_ops
from asynctls_sglang.kernels.common import token_select
from asynctls_sglang.kernels.common.launch import launch_overrides
from asynctls_sglang.ops import torch_ops
from asynctls_sglang.ops.select import LayerIndex, select_positions

SMALL = AsyncTLSConfig(block_size=16, block_budget=6, token_budget=48, sink_tokens=4, local_window=8,
                       dense_threshold=0)

# (seq lens, Hq, Hk, D, r, config)
CASES = by_device([
    case([150, 61, 300], 8, 2, 64, 16, SMALL, id="tls-g4-ragged"),
    case([200, 33], 9, 3, 96, 24, SMALL.replace(token_budget=40), id="tls-g3-D96"),
    case([120], 5, 1, 576, 128, SMALL, id="tls-mla-576"),
    case([180, 90], 8, 2, 64, 16, SMALL.replace(selection="quest", token_budget=48), id="quest-g4"),
    case([20, 50], 4, 4, 64, 16, SMALL, id="budget-beyond-context"),
], [
    case([131072, 32768, 70000], 32, 8, 128, 32, AsyncTLSConfig(dense_threshold=0), id="gpu-qwen3-paper"),
    case([131072], 20, 1, 576, 128, AsyncTLSConfig(token_budget=512, dense_threshold=0), id="gpu-mla-512"),
])


def _index(pool, hk, d, r, b, seed):
    """Keys with structure (a per-block offset) written through the torch ops: the state the
    KV pool would hold after prefill."""
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(pool.n_slots, hk, d, generator=gen)
    keys += 2 * torch.randn(pool.n_slots // b, 1, hk, d, generator=gen).expand(-1, b, -1, -1).reshape_as(keys)
    keys = keys.to(DEVICE)
    pages = pool.n_slots // b
    kmin = torch.zeros(pages, hk, d, device=DEVICE)
    kmax = torch.zeros(pages, hk, d, device=DEVICE)
    codes = torch.zeros(pool.n_slots, hk, r // 2, dtype=torch.uint8, device=DEVICE)
    scale_zero = torch.zeros(pool.n_slots, hk, 2, device=DEVICE)
    channels = torch.stack([torch.randperm(d, generator=gen)[:r].sort().values for _ in range(hk)]).to(DEVICE)
    loc = torch.cat([pool.req_to_token[row, :n].long() for row, n in zip(pool.req_pool_indices, pool.seq_lens)])
    torch_ops.update_block_summaries(kmin, kmax, torch.zeros(pages, dtype=torch.int32, device=DEVICE),
                                     loc, keys[loc], b)
    torch_ops.write_index_keys(codes, scale_zero, loc, keys[loc], channels)
    return LayerIndex(kmin, kmax, codes, scale_zero, channels)


@pytest.mark.parametrize("fused", [False, True], ids=["two-launches", "fused-token-select"])
@pytest.mark.parametrize("lens, hq, hk, d, r, cfg", CASES)
def test_selection_matches_torch_ops(lens, hq, hk, d, r, cfg, fused):
    with launch_overrides(token_select.LAUNCH, {"fused": fused}):
        _selection_matches_torch_ops(lens, hq, hk, d, r, cfg)


def _selection_matches_torch_ops(lens, hq, hk, d, r, cfg):
    b = cfg.block_size
    pool = make_pool(lens, b, seed=hq)
    index = _index(pool, hk, d, r, b, seed=d)
    q = torch.randn(len(lens), hq, d, generator=torch.Generator().manual_seed(r)).to(DEVICE)
    mb = -(-max(lens) // b) + 1
    args = (q, index, pool.req_to_token, pool.req_pool_indices, pool.seq_lens, mb, cfg)
    got = select_positions(*args, ops=triton_ops)
    want = select_positions(*args, ops=torch_ops)
    n_forced = cfg.sink_tokens + cfg.local_window
    assert torch.equal(got[..., :n_forced], want[..., :n_forced])
    # the kernels return the chosen tokens as a set (index order), the torch ops in rank order
    if torch.equal(got.sort(-1).values, want.sort(-1).values):
        return
    # scores from different kernels may reorder near-ties: then the chosen sets must be
    # equivalent under the torch op's scores (blocks first: a different block set would make
    # the token comparison meaningless)
    pages = torch_ops.block_table(pool.req_to_token, pool.req_pool_indices, mb, b)
    block_scores = torch_ops.score_blocks(q, index.kmin, index.kmax, pages, pool.seq_lens, b,
                                          cfg.sink_tokens, cfg.local_window)
    k_blocks = cfg.quest_blocks if cfg.selection == "quest" else cfg.block_budget
    assert_topk_equivalent(triton_ops.select_blocks(block_scores, k_blocks),
                           torch_ops.select_blocks(block_scores, k_blocks), block_scores, atol=1e-3)
    assert (got >= 0).sum() == (want >= 0).sum()
