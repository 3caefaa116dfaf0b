"""The reference algorithm (the specification) on its own."""
from __future__ import annotations

import pytest
import torch

from asynctls_sglang import reference as R
from asynctls_sglang.config import AsyncTLSConfig

SHAPES = [  # (Hq, Hk, D, T)
    pytest.param(4, 4, 64, 63, id="mha-D64-T63"),
    pytest.param(9, 3, 64, 200, id="gqa3-D64"),
    pytest.param(32, 8, 128, 300, id="gqa4-D128"),
    pytest.param(8, 1, 96, 129, id="mqa8-D96"),
    pytest.param(16, 1, 576, 150, id="mla-512+64"),
]


@pytest.mark.parametrize("hq, hk, d, t", SHAPES)
def test_gemm_form_equals_quest_bound(hq, hk, d, t):
    torch.manual_seed(t)
    keys = torch.randn(t, hk, d)
    kmin, kmax = R.block_summaries(keys, 16)
    q = torch.randn(hq, d)
    torch.testing.assert_close(R.block_scores(q, kmin, kmax), R.quest_bound(q, kmin, kmax), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("hq, hk, d, t", SHAPES)
def test_quest_bound_bounds_every_key(hq, hk, d, t):
    torch.manual_seed(1)
    keys = torch.randn(t, hk, d)
    q = torch.randn(hq, d)
    kmin, kmax = R.block_summaries(keys, 16)
    bound = R.block_scores(q, kmin, kmax)  # [Hk, NB]
    exact = torch.einsum("hgd,thd->ht", q.view(hk, hq // hk, d), keys)  # summed over the group
    for b in range(bound.shape[1]):
        assert (exact[:, b * 16:(b + 1) * 16] <= bound[:, b:b + 1] + 1e-3).all()


def test_summaries_of_partial_last_block():
    keys = torch.arange(10.0).view(10, 1, 1)
    kmin, kmax = R.block_summaries(keys, 4)
    assert kmin.flatten().tolist() == [0, 4, 8] and kmax.flatten().tolist() == [3, 7, 9]


def test_topk_tie_break_prefers_lower_index_and_skips_masked():
    s = torch.tensor([[1.0, 3.0, 3.0, float("-inf"), 3.0, 0.5]])
    assert R.topk_indices(s, 4).tolist() == [[1, 2, 4, 0]]
    assert R.topk_indices(s, 7).tolist() == [[1, 2, 4, 0, 5, -1, -1]]


def test_int4_index_keys_roundtrip_error_is_within_half_a_step():
    torch.manual_seed(0)
    k = torch.randn(50, 3, 64)
    ch = torch.arange(0, 64, 4).unsqueeze(0).expand(3, -1)
    codes, sz = R.quantize_index_keys(k, ch)
    assert codes.dtype == torch.uint8 and codes.shape == (50, 3, 8)
    back = R.dequantize_index_keys(codes, sz)
    err = (back - torch.gather(k, 2, ch.unsqueeze(0).expand(50, -1, -1))).abs()
    assert (err <= sz[..., :1] / 2 + 1e-6).all()


def test_calibration_finds_the_heavy_channels():
    torch.manual_seed(0)
    q = torch.randn(100, 4, 32) * 0.1
    k = torch.randn(100, 2, 32) * 0.1
    q[..., [3, 17]] *= 50
    k[..., [3, 17, 20]] *= 50  # 20 is heavy in k only: q.k gains little from it
    ch = R.calibrate_channels(q, k, 2)
    assert ch.tolist() == [[3, 17], [3, 17]]


@pytest.mark.parametrize("hq, hk, d, t", SHAPES)
@pytest.mark.parametrize("selection", ["tls", "quest"])
def test_budgets_covering_the_context_give_dense_attention(hq, hk, d, t, selection):
    torch.manual_seed(2)
    keys, values = torch.randn(t, hk, d), torch.randn(t, hk, 64)
    q = torch.randn(hq, d)
    blocks = -(-t // 16)
    cfg = AsyncTLSConfig(block_size=16, block_budget=blocks + 1, token_budget=(blocks + 1) * 16,
                         sink_tokens=4, local_window=8, dense_threshold=0, selection=selection)
    ch = R.calibrate_channels(torch.randn(10, hq, d), keys, min(16, d))
    sel = R.select_tokens(q, keys, ch, cfg)
    chosen = [sorted(p for p in row.tolist() if p >= 0) for row in sel.positions]
    assert all(c == list(range(t)) for c in chosen)
    dense = R.dense_attention(q, keys, values, 0.125)
    torch.testing.assert_close(R.sparse_attention(q, keys, values, sel.positions, 0.125), dense)


def test_small_budget_attends_exactly_the_budget_with_sink_and_local():
    torch.manual_seed(3)
    t, cfg = 500, AsyncTLSConfig(block_size=16, block_budget=8, token_budget=100, sink_tokens=4, local_window=16)
    keys = torch.randn(t, 2, 32)
    sel = R.select_tokens(torch.randn(4, 32), keys, torch.arange(8).expand(2, -1), cfg)
    for row in sel.positions.tolist():
        chosen = [p for p in row if p >= 0]
        assert len(chosen) == len(set(chosen)) == 100
        assert set(range(4)) | set(range(t - 16, t)) <= set(chosen)
        # every scored token comes from one of the chosen blocks
    for h in range(2):
        blocks = set(sel.blocks[h].tolist())
        assert all(p // 16 in blocks for p in sel.positions[h, 20:].tolist())


def _retrieval_group():
    """One KV head, three query heads: head 0 looks for one needle token (channel 0), its two
    siblings score the needle down and every other token mildly up (channel 1)."""
    t, d = 40, 8
    k = torch.zeros(t, 1, d)
    k[:, 0, 1] = 2.0
    needle = 17
    k[needle, 0] = 0.0
    k[needle, 0, 0] = 10.0
    q = torch.zeros(3, d)
    q[0, 0] = 1.0
    q[1:, 0], q[1:, 1] = -0.6, 1.0
    return q, k, needle


@pytest.mark.parametrize("heads, kept", [("max", True), ("mean", False)])
def test_token_heads_max_keeps_a_single_heads_needle(heads, kept):
    from asynctls_sglang.reference.index_keys import quantize_index_keys, token_scores

    q, k, needle = _retrieval_group()
    channels = torch.arange(8).view(1, 8)
    codes, sz = quantize_index_keys(k, channels)
    scores = token_scores(q, codes, sz, channels, heads)[0]
    assert (needle in scores.topk(5).indices.tolist()) is kept
    with pytest.raises(Exception):
        AsyncTLSConfig(token_heads="median")
