"""score_blocks and score_tokens against the torch ops (fp32 sums: a tolerance, same -inf)."""
from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICE, DTYPE_IDS, assert_close, by_device, case, launch_id, make_pool, poison

from asynctls_sglang.kernels import triton_ops
from asynctls_sglang.kernels.common import block_score, token_score
from asynctls_sglang.kernels.common.launch import launch_overrides
from asynctls_sglang.ops import torch_ops

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
DTYPES = [pytest.param(t, id=DTYPE_IDS[t]) for t in (FP32, BF16, FP16)]

# (seq lens, Hq, Hk, D, block, sink, local, extra table blocks)
SHAPES = by_device([
    case([37, 100, 5], 4, 4, 64, 8, 4, 8, 2, id="mha-g1-D64-ragged"),
    case([130, 61], 9, 3, 96, 16, 16, 16, 0, id="g3-D96"),
    case([200], 8, 2, 128, 16, 0, 0, 3, id="g4-D128-no-sink-no-local"),
    case([90, 33], 8, 1, 128, 8, 4, 16, 1, id="g8-D128"),
    case([150], 5, 1, 576, 16, 8, 16, 0, id="mla-576-h5"),
    case([20, 3], 4, 2, 64, 8, 16, 64, 0, id="all-sink-or-local"),
], [
    case([131072, 70001], 32, 8, 128, 64, 16, 64, 0, id="gpu-qwen3-128k"),
    case([131072], 20, 1, 576, 64, 16, 64, 0, id="gpu-mla-128k"),
])


def _summaries(pages, hk, d, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    mid, half = torch.randn(pages, hk, d, generator=gen), torch.rand(pages, hk, d, generator=gen)
    return (mid - half).to(dtype).to(DEVICE), (mid + half).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lens, hq, hk, d, b, sink, local, extra", SHAPES)
def test_score_blocks(lens, hq, hk, d, b, sink, local, extra, dtype):
    pool = make_pool(lens, b, seed=d + hq, ctx=max(lens) + extra * b + 3)
    mb = -(-max(lens) // b) + extra
    kmin, kmax = _summaries(pool.n_slots // b, hk, d, dtype, seed=hk)
    q = torch.randn(len(lens), hq, d, generator=torch.Generator().manual_seed(1)).to(dtype).to(DEVICE)
    pages = triton_ops.block_table(pool.req_to_token, pool.req_pool_indices, mb, b)
    want = torch_ops.score_blocks(q, kmin, kmax, pages, pool.seq_lens, b, sink, local)
    out = poison(torch.empty(len(lens), hk, mb, device=DEVICE))
    got = triton_ops.score_blocks(q, kmin, kmax, pages, pool.seq_lens, b, sink, local, out=out)
    # fp32 sums of ~2D products of unit-size terms: error grows like sqrt(D * G)
    assert_close(got, want, FP32, "block scores", scale=(d * hq // hk) ** 0.5)


@pytest.mark.parametrize("split_d", [True, False], ids=["split-d", "one-program"])
@pytest.mark.parametrize("lens, hq, hk, d, b, sink, local, extra", [
    case([130, 61], 9, 3, 96, 16, 16, 16, 0, id="g3-D96"),
    case([150, 40], 5, 1, 576, 16, 8, 16, 1, id="mla-576-h5")])
def test_score_blocks_partials_add_up_to_the_scores(lens, hq, hk, d, b, sink, local, extra, split_d):
    """partials=True: the channel slices' rows, unsummed ([5, ...] for MLA's 576 channels split in
    128-wide slices, else [1, ...]), added in order equal to the summed scores (the same -inf);
    the torch op gives its scores as one slice."""
    pool = make_pool(lens, b, seed=d + hq, ctx=max(lens) + extra * b + 3)
    mb = -(-max(lens) // b) + extra
    kmin, kmax = _summaries(pool.n_slots // b, hk, d, FP32, seed=hk)
    q = torch.randn(len(lens), hq, d, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    pages = triton_ops.block_table(pool.req_to_token, pool.req_pool_indices, mb, b)
    args = (q, kmin, kmax, pages, pool.seq_lens, b, sink, local)
    with launch_overrides(block_score.LAUNCH, {"split_d_wide": split_d}):
        whole = triton_ops.score_blocks(*args)
        parts = triton_ops.score_blocks(*args, partials=True)
        with pytest.raises(ValueError, match="partials=True writes no out"):
            triton_ops.score_blocks(*args, partials=True, out=torch.empty_like(whole))
    assert parts.shape == ((5 if d > 128 and split_d else 1), *whole.shape)
    added = parts[0]
    for part in parts[1:]:
        added = added + part
    assert torch.equal(torch.isinf(added), torch.isinf(whole)) and bool(torch.isinf(whole).any())
    assert_close(added, whole, FP32, "partials added", scale=(d * hq // hk) ** 0.5)
    if parts.shape[0] == 1:
        assert torch.equal(parts[0], whole)
    spec = torch_ops.score_blocks(*args, partials=True)
    assert spec.shape == (1, *whole.shape) and torch.equal(spec[0], torch_ops.score_blocks(*args))


@pytest.mark.parametrize("overrides", block_score.SWEEP, ids=launch_id)
@pytest.mark.parametrize("lens, hq, hk, d, b, sink, local, extra", [
    case([130, 61], 9, 3, 96, 16, 16, 16, 0, id="g3-D96"),
    case([150], 5, 1, 576, 16, 8, 16, 0, id="mla-576-h5")])
def test_score_blocks_every_sweep_alternative(lens, hq, hk, d, b, sink, local, extra, overrides):
    """The launch parameters benchmarks/kernel_bench.py --sweep times give the same scores."""
    with launch_overrides(block_score.LAUNCH, overrides):
        test_score_blocks(lens, hq, hk, d, b, sink, local, extra, FP32)


# (seq lens, Hq, Hk, D, r, block, k_b, sink, local)
TOKEN_SHAPES = by_device([
    case([100, 45], 4, 4, 64, 16, 8, 5, 4, 8, id="mha-D64-r16"),
    case([77], 9, 3, 96, 22, 16, 3, 16, 8, id="g3-D96-r22"),
    case([120, 64, 9], 8, 2, 128, 32, 16, 6, 4, 16, id="g4-D128-r32-ragged"),
    case([90], 20, 1, 576, 128, 16, 4, 8, 16, id="mla-576-r128-h20"),
], [
    case([131072] * 4, 32, 8, 128, 32, 64, 128, 16, 64, id="gpu-qwen3-kb128"),
    case([131072] * 2, 20, 1, 576, 128, 64, 128, 16, 64, id="gpu-mla-kb128"),
])


def _token_args(lens, hq, hk, d, r, b, kb, sink, local, dtype):
    """score_tokens' arguments (q, codes, scale_zero, channels, req_to_token, req_pool_indices,
    pos, ok): random INT4 keys and channels, k_b random blocks per (request, KV head) whose last
    slot is unused, so that every case mixes candidates and non-candidates."""
    return _token_inputs(lens, hq, hk, d, r, b, kb, sink, local, dtype)[0]


def _token_inputs(lens, hq, hk, d, r, b, kb, sink, local, dtype):
    """(_token_args, the chosen blocks [bs, Hk, k_b], seq_lens [bs]) of one case."""
    bs = len(lens)
    pool = make_pool(lens, b, seed=r)
    gen = torch.Generator().manual_seed(d)
    codes = torch.randint(0, 256, (pool.n_slots, hk, r // 2), generator=gen, dtype=torch.uint8).to(DEVICE)
    scale_zero = torch.stack([torch.rand(pool.n_slots, hk, generator=gen) * 0.3,
                              torch.randn(pool.n_slots, hk, generator=gen)], dim=-1).to(DEVICE)
    channels = torch.stack([torch.randperm(d, generator=gen)[:r].sort().values for _ in range(hk)]).to(DEVICE)
    q = torch.randn(bs, hq, d, generator=gen).to(dtype).to(DEVICE)
    nb = [-(-n // b) for n in lens]
    blocks = torch.stack([torch.stack([torch.randperm(max(nb), generator=gen)[:kb] for _ in range(hk)])
                          for _ in range(bs)]).to(DEVICE)
    blocks = torch.where(blocks < torch.tensor(nb, device=DEVICE).view(bs, 1, 1), blocks, -1)
    # every (request, head) ends with an unused slot (-1, as a selection shorter than k_b): the
    # random blocks alone may all be candidates (k_b = 128 of 2048 blocks rarely hits sink/local)
    blocks[..., -1] = -1
    pos, ok = triton_ops.candidate_positions(blocks, pool.seq_lens, b, sink, local)
    return (q, codes, scale_zero, channels, pool.req_to_token, pool.req_pool_indices, pos, ok), blocks, pool.seq_lens


@pytest.mark.parametrize("heads", ["max", "mean"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lens, hq, hk, d, r, b, kb, sink, local", TOKEN_SHAPES)
def test_score_tokens(lens, hq, hk, d, r, b, kb, sink, local, dtype, heads):
    args = _token_args(lens, hq, hk, d, r, b, kb, sink, local, dtype)
    want = torch_ops.score_tokens(*args, heads=heads)
    out = poison(torch.empty(args[6].shape, device=DEVICE))
    got = triton_ops.score_tokens(*args, heads=heads, out=out)
    assert want.isinf().any() and want.isfinite().any(), "the case must mix candidates and non-candidates"
    if hq > hk:  # the two combinations really differ (a kernel ignoring `heads` fails one of them)
        other = torch_ops.score_tokens(*args, heads="mean" if heads == "max" else "max")
        assert not torch.allclose(want[want.isfinite()], other[want.isfinite()])
    assert_close(got, want, FP32, "token scores", scale=r ** 0.5 * 10)


# heads="max" by both kernel formulations. (seq lens, Hq, Hk, D, r, block, k_b): G = 1, 3, 4, 8, 20
# (the last is GLM-4.7-Flash's MLA: 1 KV head of 576, r = channels_for(576, mla) = 128); r / 2
# below 16 (the dot pads it to 16) and from 16 up (20: padded to 32); N = k_b * block is no
# multiple of BLOCK_N (128), over it in the last two
HEAD_MAX_SHAPES = by_device([
    case([100, 45], 4, 4, 64, 16, 8, 5, id="g1-r16"),
    case([77, 50], 9, 3, 96, 22, 16, 5, id="g3-r22"),
    case([120, 64], 8, 2, 128, 32, 16, 6, id="g4-D128-r32"),
    case([150], 8, 1, 128, 40, 16, 9, id="g8-r40"),
    case([300, 90], 20, 1, 576, 128, 16, 10, id="mla-g20-r128"),
], [
    case([131072] * 4, 32, 8, 128, 32, 64, 128, id="gpu-qwen3-kb128"),
    case([131072] * 8, 20, 1, 576, 128, 64, 128, id="gpu-mla-kb128"),
])


@pytest.mark.parametrize("dtype", [pytest.param(t, id=DTYPE_IDS[t]) for t in (FP32, BF16)])
@pytest.mark.parametrize("lens, hq, hk, d, r, b, kb", HEAD_MAX_SHAPES)
def test_score_tokens_head_max_methods(lens, hq, hk, d, r, b, kb, dtype):
    """The tl.dot formulation (all heads at once) and the per-head loop against the torch op and
    each other: same -inf, fp32 sums in other orders."""
    q, *rest = _token_args(lens, hq, hk, d, r, b, kb, 4, 8, dtype)
    # q leaning negative: some tokens score < 0 on every head, where a padded head of the dot
    # (q = 0, score 0) would win the max if it were not masked (with 20 centred heads none does)
    args = (q - 0.25, *rest)
    want = torch_ops.score_tokens(*args, heads="max")
    fin = want.isfinite()
    assert (~fin).any() and fin.any(), "the case must mix candidates and non-candidates"
    assert (want[fin] < 0).any() and (want[fin] > 0).any(), "the case must mix signs of the max"
    got = {}
    for method in ("dot", "loop"):
        out = poison(torch.empty(args[6].shape, device=DEVICE))
        got[method] = triton_ops.score_tokens(*args, heads="max", out=out, method=method)
        assert_close(got[method], want, FP32, f"token scores ({method})", scale=r ** 0.5 * 10)
    assert_close(got["dot"], got["loop"], FP32, "token scores (dot vs loop)", scale=r ** 0.5 * 10)


def test_score_tokens_rejects_unknown_method():
    args = _token_args([40], 4, 2, 64, 16, 8, 3, 4, 8, FP32)
    with pytest.raises(ValueError, match="method"):
        triton_ops.score_tokens(*args, method="tensor-cores")


@pytest.mark.parametrize("heads", ["max", "mean"])
@pytest.mark.parametrize("dtype", [pytest.param(t, id=DTYPE_IDS[t]) for t in (FP32, BF16)])
@pytest.mark.parametrize("lens, hq, hk, d, r, b, kb, sink, local", TOKEN_SHAPES)
def test_score_block_tokens_is_candidates_then_scores(lens, hq, hk, d, r, b, kb, sink, local, dtype, heads):
    """One launch from the chosen blocks: pos bit-exact with candidate_positions, scores bit-exact
    with score_tokens of those candidates (the same kernel arithmetic), close to the torch op."""
    args, blocks, pool_lens = _token_inputs(lens, hq, hk, d, r, b, kb, sink, local, dtype)
    q, codes, scale_zero, channels, req_to_token, rows, pos, ok = args
    want = triton_ops.score_tokens(*args, heads=heads)
    assert want.isinf().any() and want.isfinite().any(), "the case must mix candidates and non-candidates"
    out = (poison(torch.empty(pos.shape, device=DEVICE)), torch.full(pos.shape, -7, dtype=torch.int64, device=DEVICE))
    got, got_pos = triton_ops.score_block_tokens(q, codes, scale_zero, channels, req_to_token, rows, blocks, pool_lens,
                                                 b, sink, local, heads=heads, out=out)
    assert got is out[0] and got_pos is out[1]
    assert torch.equal(got_pos, pos)
    assert torch.equal(got.isinf(), want.isinf()) and torch.equal(got[want.isfinite()], want[want.isfinite()])
    ref, ref_pos = torch_ops.score_block_tokens(q, codes, scale_zero, channels, req_to_token, rows, blocks, pool_lens,
                                                b, sink, local, heads=heads)
    assert torch.equal(ref_pos, pos)
    assert_close(got, ref, FP32, "token scores from blocks", scale=r ** 0.5 * 10)


@pytest.mark.parametrize("lens, hq, hk, d, r, b, kb, sink, local", [
    case([120, 64, 9], 8, 2, 128, 32, 16, 6, 4, 16, id="g4-D128-r32-ragged"),
    case([90], 20, 1, 576, 128, 16, 4, 8, 16, id="mla-576-r128-h20")])
def test_score_block_tokens_head_major_index_keys(lens, hq, hk, d, r, b, kb, sink, local):
    """The index store keeps codes and scale/zero head-major (views of [Hk, slots, ...]): the
    same positions and bit-identical scores as from contiguous copies (bf16 q, the dot path)."""
    args, blocks, pool_lens = _token_inputs(lens, hq, hk, d, r, b, kb, sink, local, BF16)
    q, codes, scale_zero, channels, req_to_token, rows, _, _ = args
    hm_codes = codes.permute(1, 0, 2).contiguous().permute(1, 0, 2)
    hm_sz = scale_zero.permute(1, 0, 2).contiguous().permute(1, 0, 2)
    assert hm_codes.stride(0) == r // 2 and hm_sz.stride(0) == 2 and torch.equal(hm_codes, codes)
    common = (channels, req_to_token, rows, blocks, pool_lens, b, sink, local)
    want, want_pos = triton_ops.score_block_tokens(q, codes, scale_zero, *common)
    got, got_pos = triton_ops.score_block_tokens(q, hm_codes, hm_sz, *common)
    assert torch.equal(got_pos, want_pos)
    assert torch.equal(got.isinf(), want.isinf()) and torch.equal(got[want.isfinite()], want[want.isfinite()])


@pytest.mark.parametrize("overrides", token_score.SWEEP, ids=launch_id)
@pytest.mark.parametrize("lens, hq, hk, d, r, b, kb, sink, local", [
    case([120, 64, 9], 8, 2, 128, 32, 16, 6, 4, 16, id="g4-D128-r32-ragged"),
    case([90], 20, 1, 576, 128, 16, 4, 8, 16, id="mla-576-r128-h20")])
def test_score_block_tokens_every_sweep_alternative(lens, hq, hk, d, r, b, kb, sink, local, overrides):
    """The launch parameters benchmarks/kernel_bench.py --sweep times give the same positions and
    scores (bf16 q: the tl.dot path the backend runs)."""
    with launch_overrides(token_score.LAUNCH, overrides):
        test_score_block_tokens_is_candidates_then_scores(lens, hq, hk, d, r, b, kb, sink, local, BF16, "max")
