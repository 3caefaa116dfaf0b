"""score_select_block_tokens: the fused kernel (token scoring and the token top-k in one program
per request and KV head) takes the same positions as the two launches it replaces."""
from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICE, launch_id, poison
from test_scoring_kernels import TOKEN_SHAPES, _token_inputs

from asynctls_sglang.kernels import triton_ops
from asynctls_sglang.kernels.common import token_select, topk
from asynctls_sglang.kernels.common.launch import launch_overrides
from asynctls_sglang.ops import torch_ops

BF16, FP32 = torch.bfloat16, torch.float32


def _assert_same_choice(got: torch.Tensor, want: torch.Tensor, scores: torch.Tensor, pos: torch.Tensor) -> None:
    """Per (request, head): the same positions, or (near-ties) positions whose sorted scores match."""
    got, want, scores, pos = got.cpu(), want.cpu(), scores.cpu(), pos.cpu()
    for b in range(got.shape[0]):
        for h in range(got.shape[1]):
            g, w = got[b, h], want[b, h]
            assert torch.equal((g >= 0).sum(), (w >= 0).sum()), f"({b}, {h}): different counts"
            gs, ws = set(g[g >= 0].tolist()), set(w[w >= 0].tolist())
            assert len(gs) == int((g >= 0).sum()), f"({b}, {h}): a position taken twice"
            if gs == ws:
                continue
            score_of = {int(p): float(s) for p, s in zip(pos[b, h], scores[b, h]) if s > float("-inf")}
            gv = sorted((score_of[p] for p in gs), reverse=True)
            wv = sorted((score_of[p] for p in ws), reverse=True)
            assert torch.allclose(torch.tensor(gv), torch.tensor(wv), atol=1e-5, rtol=0), \
                f"({b}, {h}): sets differ beyond ties: {sorted(gs - ws)[:8]} vs {sorted(ws - gs)[:8]}"


def _check(lens, hq, hk, d, r, b, kb, sink, local, dtype, heads, k):
    args, blocks, seq_lens = _token_inputs(lens, hq, hk, d, r, b, kb, sink, local, dtype)
    q, codes, scale_zero, channels, req_to_token, rows, _, _ = args
    common = (q, codes, scale_zero, channels, req_to_token, rows, blocks, seq_lens, b, sink, local)
    scores, pos = triton_ops.score_block_tokens(*common, heads=heads)
    want = triton_ops.select_tokens(scores, pos, k)
    # the top-k kernel under the test's launch parameters: the torch op's set
    assert torch.equal(want.sort(-1).values, torch_ops.select_tokens(scores, pos, k).sort(-1).values)
    # the wrapper's default (two launches) is exactly those two ops
    assert torch.equal(triton_ops.score_select_block_tokens(*common, k, heads=heads), want)
    with launch_overrides(token_select.LAUNCH, {"fused": True}):
        out = poison(torch.empty(len(lens), hk, k, dtype=torch.int64, device=DEVICE))
        got = triton_ops.score_select_block_tokens(*common, k, heads=heads, out=out)
    assert got is out
    _assert_same_choice(got, want, scores, pos)
    # what was not taken is -1, after everything taken (candidate order)
    taken = got >= 0
    assert torch.equal(taken, torch.arange(k, device=DEVICE) < taken.sum(-1, keepdim=True))


@pytest.mark.parametrize("heads", ["max", "mean"])
@pytest.mark.parametrize("dtype", [pytest.param(FP32, id="fp32"), pytest.param(BF16, id="bf16")])
@pytest.mark.parametrize("lens, hq, hk, d, r, b, kb, sink, local", TOKEN_SHAPES)
def test_fused_takes_what_the_two_launches_take(lens, hq, hk, d, r, b, kb, sink, local, dtype, heads):
    n = kb * b
    # one; some; more than the candidates (-1 padding), within the top-k's largest k (the real-shape
    # case has exactly MAX_K candidates: session 24's H200 run asked it for 8197 and was refused)
    for k in sorted({1, max(1, n // 3), min(n + 5, topk.MAX_K)}):
        _check(lens, hq, hk, d, r, b, kb, sink, local, dtype, heads, k)


@pytest.mark.parametrize("overrides", token_select.SWEEP[1:], ids=launch_id)
def test_every_sweep_alternative(overrides):
    """The chunk sizes kernel_bench --sweep times (several chunks per row, a partial last one)."""
    with launch_overrides(token_select.LAUNCH, overrides):
        _check([300, 170], 8, 2, 128, 32, 16, 40, 4, 16, BF16, "max", 200)


@pytest.mark.parametrize("overrides", [{"radix": "histogram"}, {"radix": "bitwise"}, {"radix": "bitpair"},
                                       {"compact": 16}], ids=launch_id)
def test_fused_with_each_radix(overrides):
    with launch_overrides(topk.LAUNCH, overrides):
        _check([120, 64, 9], 8, 2, 128, 32, 16, 6, 4, 16, BF16, "max", 40)


def test_rows_longer_than_the_resident_select_take_the_two_launches():
    """k_b * B over RESIDENT_MAX_N: the fused setting falls back (the same positions)."""
    kb, b = topk.RESIDENT_MAX_N // 16 + 1, 16
    with launch_overrides(token_select.LAUNCH, {"fused": True}):
        _check([kb * b + 300], 4, 1, 64, 16, b, kb, 4, 16, FP32, "max", 64)



def test_fused_rows_without_candidates_take_nothing():
    """A request-head whose chosen blocks are all unused (-1) or all inside sink/local: -1 only."""
    args, blocks, seq_lens = _token_inputs([200, 90], 8, 2, 64, 16, 16, 5, 4, 16, FP32)
    q, codes, scale_zero, channels, req_to_token, rows, _, _ = args
    blocks = blocks.clone()
    blocks[0, 1] = -1
    blocks[1, 0] = torch.tensor([0, -1, 5, -1, -1], device=DEVICE)  # sink block 0 (sink 4 < 16) stays a candidate
    common = (q, codes, scale_zero, channels, req_to_token, rows, blocks, seq_lens, 16, 4, 16)
    with launch_overrides(token_select.LAUNCH, {"fused": True}):
        got = triton_ops.score_select_block_tokens(*common, 30)
    scores, pos = triton_ops.score_block_tokens(*common)
    want = triton_ops.select_tokens(scores, pos, 30)
    assert (got[0, 1] == -1).all()
    _assert_same_choice(got, want, scores, pos)
