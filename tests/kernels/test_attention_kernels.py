"""sparse_decode_attention (GQA and MLA kernels) against the torch op and the reference."""
from __future__ import annotations

import math

import pytest
import torch
from kernel_testing import (DEVICE, DTYPE_IDS, assert_close, by_device, case, gather_tokens, launch_id, make_pool,
                            poison)

from asynctls_sglang.kernels import triton_ops
from asynctls_sglang.kernels.common.launch import launch_overrides
from asynctls_sglang.kernels.common.merge import SplitWorkspace
from asynctls_sglang.kernels.gqa import decode as gqa_decode
from asynctls_sglang.kernels.mla import decode as mla_decode
from asynctls_sglang.ops import torch_ops
from asynctls_sglang.reference import dense_attention

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
DTYPES = [pytest.param(t, id=DTYPE_IDS[t]) for t in (FP32, BF16, FP16)]


def _positions(lens, hk, budget, seed, empty_head=False):
    """[bs, Hk, budget]: a random subset of each request's positions (all of them when the budget
    exceeds the length), shuffled, -1 padded; optionally one head with no position at all."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for n in lens:
        heads = []
        for _ in range(hk):
            chosen = torch.randperm(n, generator=gen)[:budget]
            heads.append(torch.cat([chosen, torch.full((budget - chosen.numel(),), -1)]))
        rows.append(torch.stack(heads))
    pos = torch.stack(rows)
    pos = pos[..., torch.randperm(budget, generator=gen)]  # -1 scattered among valid entries
    if empty_head:
        pos[0, -1] = -1
    return pos.to(DEVICE)


def _qkv(pool, bs, hq, hk, d, dv, mla, gen, dtype=torch.float32):
    """Random q [bs, Hq, D] and pool buffers k [slots, Hk, D], v [slots, Hk, Dv] (MLA: v is the
    first Dv channels of k), drawn k, v, q from gen."""
    k_buffer = torch.randn(pool.n_slots, hk, d, generator=gen).to(dtype).to(DEVICE)
    v_buffer = k_buffer[..., :dv] if mla else torch.randn(pool.n_slots, hk, dv, generator=gen).to(dtype).to(DEVICE)
    q = torch.randn(bs, hq, d, generator=gen).to(dtype).to(DEVICE)
    return q, k_buffer, v_buffer


# (seq lens, Hq, Hk, D, Dv, budget, logit cap)
GQA = by_device([
    case([50, 130], 4, 4, 64, 64, 40, 0.0, id="mha-D64"),
    case([200, 7, 61], 9, 3, 96, 96, 80, 0.0, id="g3-D96-budget>len"),
    case([300], 8, 2, 128, 128, 160, 0.0, id="g4-D128"),
    case([97, 150], 8, 1, 128, 128, 100, 30.0, id="g8-D128-logit-cap"),
    case([64], 4, 2, 64, 32, 70, 0.0, id="Dv<D"),
], [
    case([131072] * 4, 32, 8, 128, 128, 2048, 0.0, id="gpu-qwen3-2048"),
    case([32768] * 32, 32, 8, 128, 128, 512, 0.0, id="gpu-qwen3-bs32-512"),
])

MLA = by_device([
    case([90, 40], 20, 1, 576, 512, 64, 0.0, id="mla-h20"),
    case([130], 5, 1, 576, 512, 150, 20.0, id="mla-h5-cap-budget>len"),
], [
    case([131072] * 2, 128, 1, 576, 512, 2048, 0.0, id="gpu-mla-h128-2048"),
    case([65536] * 8, 20, 1, 576, 512, 2048, 0.0, id="gpu-mla-h20-bs8"),
])


def _run(lens, hq, hk, d, dv, budget, cap, dtype, mla, empty_head=False):
    pool = make_pool(lens, 16, seed=hq + d)
    bs = len(lens)
    q, k_buffer, v_buffer = _qkv(pool, bs, hq, hk, d, dv, mla, torch.Generator().manual_seed(budget), dtype)
    pos = _positions(lens, hk, budget, seed=bs, empty_head=empty_head)
    args = (q, k_buffer, v_buffer, pool.req_to_token, pool.req_pool_indices, pos, 1 / math.sqrt(d), cap)
    out = poison(torch.empty(bs, hq, dv, device=DEVICE))
    got = triton_ops.sparse_decode_attention(*args, out=out)
    return got, torch_ops.sparse_decode_attention(*args), (pool, q, k_buffer, v_buffer)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lens, hq, hk, d, dv, budget, cap", GQA)
def test_gqa_matches_torch_op(lens, hq, hk, d, dv, budget, cap, dtype):
    got, want, _ = _run(lens, hq, hk, d, dv, budget, cap, dtype, mla=False, empty_head=True)
    assert_close(got, want, dtype, "gqa attention")
    assert (got[0, -(hq // hk):] == 0).all(), "a head with no position must give zeros"


@pytest.mark.parametrize("dtype", [pytest.param(BF16, id="bf16"), pytest.param(FP32, id="fp32")])
@pytest.mark.parametrize("lens, hq, hk, d, dv, budget, cap", MLA)
def test_mla_matches_torch_op(lens, hq, hk, d, dv, budget, cap, dtype):
    got, want, _ = _run(lens, hq, hk, d, dv, budget, cap, dtype, mla=True)
    assert_close(got, want, dtype, "mla attention")


@pytest.mark.parametrize("mla", [False, True], ids=["gqa-g4", "mla"])
def test_budget_beyond_context_is_dense(mla):
    """Sparse attention over dense_positions equals reference.dense_attention of each request."""
    lens = [45, 100]
    hq, hk, d, dv = (8, 1, 576, 512) if mla else (8, 2, 128, 128)
    pool = make_pool(lens, 16, seed=9)
    q, k_buffer, v_buffer = _qkv(pool, len(lens), hq, hk, d, dv, mla, torch.Generator().manual_seed(9))
    pos = triton_ops.dense_positions(pool.seq_lens, hk, 128)
    got = triton_ops.sparse_decode_attention(q, k_buffer, v_buffer, pool.req_to_token,
                                             pool.req_pool_indices, pos, 1 / math.sqrt(d))
    for i in range(len(lens)):
        want = dense_attention(q[i].cpu(), gather_tokens(pool, k_buffer, i).cpu(),
                               gather_tokens(pool, v_buffer, i).cpu(), 1 / math.sqrt(d))
        assert_close(got[i], want, FP32, f"request {i}")


def test_workspace_is_reused_and_results_repeat():
    lens, hq, hk, d = [80, 33], 8, 2, 64
    pool = make_pool(lens, 16, seed=4)
    gen = torch.Generator().manual_seed(4)
    kv = torch.randn(2, pool.n_slots, hk, d, generator=gen).to(DEVICE)
    q = torch.randn(2, hq, d, generator=gen).to(DEVICE)
    pos = _positions(lens, hk, 64, seed=4)
    ws = SplitWorkspace(poison(torch.empty(2, hq, 64, d, device=DEVICE)), poison(torch.empty(2, hq, 64, device=DEVICE)))
    out = poison(torch.empty(2, hq, d, device=DEVICE))
    args = (q, kv[0], kv[1], pool.req_to_token, pool.req_pool_indices, pos, 0.125)
    first = triton_ops.sparse_decode_attention(*args, out=out, workspace=ws).clone()
    again = triton_ops.sparse_decode_attention(*args, out=out, workspace=ws)
    assert again.data_ptr() == out.data_ptr() and torch.equal(first, again)
    assert_close(first, torch_ops.sparse_decode_attention(*args), FP32, "with workspace")


@pytest.mark.parametrize("active", [None, 24], ids=["splits-for-width", "splits-for-24"])
@pytest.mark.parametrize("mla", [False, True], ids=["gqa-g4", "mla"])
def test_counts_limit_each_row_to_its_leading_columns(mla, active):
    """counts[b] columns of row b are read and nothing after them, though the later columns hold
    valid positions (a kernel that read them would differ): equal to the torch op on positions cut
    at counts; a count of 0 gives zeros, a count beyond the width reads the whole row."""
    lens = [150, 90, 120, 61]
    hq, hk, d, dv = (8, 1, 576, 512) if mla else (8, 2, 64, 64)
    pool = make_pool(lens, 16, seed=11)
    q, k_buffer, v_buffer = _qkv(pool, len(lens), hq, hk, d, dv, mla, torch.Generator().manual_seed(11))
    pos = triton_ops.dense_positions(pool.seq_lens, hk, 60).contiguous()  # every column valid
    counts = torch.tensor([37, 0, 60, 500], device=DEVICE)
    cut = torch.where(torch.arange(60, device=DEVICE).view(1, 1, -1) < counts.view(-1, 1, 1), pos, -1)
    args = (q, k_buffer, v_buffer, pool.req_to_token, pool.req_pool_indices)
    out = poison(torch.empty(len(lens), hq, dv, device=DEVICE))
    got = triton_ops.sparse_decode_attention(*args, pos, 0.1, out=out, counts=counts, active=active)
    want = torch_ops.sparse_decode_attention(*args, cut, 0.1)
    assert_close(got, want, FP32, "attention with counts")
    assert_close(torch_ops.sparse_decode_attention(*args, pos, 0.1, counts=counts), want, FP32, "torch op with counts")
    assert (got[1] == 0).all(), "a row with count 0 reads nothing"


def test_plan_splits_sized_for_the_active_columns():
    from asynctls_sglang.kernels.common.merge import MAX_SPLITS, plan_splits

    cpu = torch.device("cpu")  # 8 "SMs" off the GPU
    assert plan_splits(8192, 1, cpu, 32, 64) == (16, 512)  # two waves of 8 over the whole width
    splits, per = plan_splits(8192, 1, cpu, 32, 64, active=2048)
    assert per == 128 and splits == 64  # 2048 active columns in 16 splits, the width covered by 64
    splits, per = plan_splits(65536, 1, cpu, 32, 64, active=512)
    assert splits <= MAX_SPLITS and splits * per >= 65536
    assert plan_splits(8192, 1, cpu, 32, 64, waves=4) == (32, 256)  # four programs per "SM"


@pytest.mark.parametrize("bs, wide_units, waves", [(2, 5, 2), (3, 6, 4), (3, 7, 2)])
def test_mla_split_plan_takes_more_waves_for_wide_batches(monkeypatch, bs, wide_units, waves):
    """The MLA split plan's batch rule: from LAUNCH's wide_units (request, head-block) programs on
    (here 20 heads, two head blocks per request), it plans for wide_waves programs per SM; the
    attention is the same either way."""
    from asynctls_sglang.kernels.common import merge

    planned = []
    monkeypatch.setattr(mla_decode, "plan_splits", lambda *a: planned.append(a) or merge.plan_splits(*a))
    with launch_overrides(mla_decode.LAUNCH, {"wide_units": wide_units, "wide_waves": 4}):
        got, want, _ = _run([90, 40, 130][:bs], 20, 1, 576, 512, 64, 0.0, FP32, mla=True)
    assert [(a[1], a[-1]) for a in planned] == [(2 * bs, waves)]
    assert_close(got, want, FP32, f"attention at {waves} waves")


def _sweep_cases(module, mla: bool):
    return [pytest.param(module, o, mla, id=("mla-" if mla else "gqa-") + launch_id(o))
            for o in module.SWEEP]



@pytest.mark.parametrize("module, overrides, mla", _sweep_cases(gqa_decode, False) + _sweep_cases(mla_decode, True))
def test_every_sweep_alternative_is_exact(module, overrides, mla):
    """The launch parameters benchmarks/kernel_bench.py --sweep times give the same attention
    (ragged lengths, a budget past one length, more splits than the defaults plan)."""
    shape = ([90, 40], 20, 1, 576, 512, 64) if mla else ([200, 7, 61], 9, 3, 96, 96, 80)
    with launch_overrides(module.LAUNCH, overrides):
        got, want, _ = _run(*shape, 0.0, FP32, mla=mla)
    assert_close(got, want, FP32, f"attention with {overrides}")


def test_launch_overrides_restore_and_refuse_unknown_names():
    before = dict(gqa_decode.LAUNCH)
    with pytest.raises(RuntimeError, match="boom"), launch_overrides(gqa_decode.LAUNCH, {"waves": 8}):
        assert gqa_decode.LAUNCH["waves"] == 8
        raise RuntimeError("boom")
    assert gqa_decode.LAUNCH == before
    with pytest.raises(ValueError, match="unknown launch parameters.*block_m"):
        with launch_overrides(gqa_decode.LAUNCH, {"block_m": 8}):
            pass


@pytest.mark.parametrize("out_dtype", [BF16, FP16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("mla", [False, True], ids=["gqa-g4", "mla"])
def test_output_in_the_callers_dtype_is_the_fp32_output_rounded(mla, out_dtype):
    """out_dtype: the merge launch stores its fp32 result rounded to the caller's dtype (what the
    backend's layer returns), bit for bit what converting the fp32 output gives; the torch op too."""
    lens = [150, 90, 61]
    hq, hk, d, dv = (8, 1, 576, 512) if mla else (8, 2, 64, 64)
    pool = make_pool(lens, 16, seed=12)
    q, k_buffer, v_buffer = _qkv(pool, len(lens), hq, hk, d, dv, mla, torch.Generator().manual_seed(12), out_dtype)
    pos = _positions(lens, hk, 48, seed=12)
    args = (q, k_buffer, v_buffer, pool.req_to_token, pool.req_pool_indices, pos, 0.1)
    wide = triton_ops.sparse_decode_attention(*args)
    out = poison(torch.empty(len(lens), hq, dv, dtype=out_dtype, device=DEVICE))
    got = triton_ops.sparse_decode_attention(*args, out=out, out_dtype=out_dtype)
    assert got.data_ptr() == out.data_ptr() and got.dtype == out_dtype
    assert torch.equal(got, wide.to(out_dtype))
    assert triton_ops.sparse_decode_attention(*args, out_dtype=out_dtype).dtype == out_dtype
    narrow = torch_ops.sparse_decode_attention(*args, out_dtype=out_dtype)
    assert narrow.dtype == out_dtype and torch.equal(narrow, torch_ops.sparse_decode_attention(*args).to(out_dtype))
    with pytest.raises(ValueError, match="out must be"):
        triton_ops.sparse_decode_attention(*args, out=poison(torch.empty(len(lens), hq, dv, device=DEVICE)),
                                           out_dtype=out_dtype)


@pytest.mark.parametrize("prefetch", [False, True], ids=["plain", "prefetch"])
@pytest.mark.parametrize("mla", [False, True], ids=["gqa-g4", "mla"])
def test_negative_slots_read_the_pool_in_place(mla, prefetch):
    """pool=: a negative slot s reads row -s - 1 of the pool (the offload's window tokens read in
    place from the device pool). About a third of the slots are moved to other rows of a second
    buffer and their rows in the first one poisoned (NaN): the kernel and the torch op, both with
    pool=, equal the torch op on the original buffers."""
    lens = [150, 90, 61]
    hq, hk, d, dv = (20, 1, 576, 512) if mla else (8, 2, 64, 48)
    pool = make_pool(lens, 16, seed=5)
    gen = torch.Generator().manual_seed(5)
    q, k_buffer, v_buffer = _qkv(pool, len(lens), hq, hk, d, dv, mla, gen)
    pos = _positions(lens, hk, 70, seed=5)
    args = (pool.req_pool_indices, pos, 1 / math.sqrt(d))
    want = torch_ops.sparse_decode_attention(q, k_buffer, v_buffer, pool.req_to_token, *args)
    slots = torch.unique(pool.req_to_token[pool.req_pool_indices.long()].flatten())
    moved = slots[torch.randperm(slots.numel(), generator=gen)[:slots.numel() // 3].to(DEVICE)].long()
    n_pool = pool.n_slots + 7
    where = torch.randperm(n_pool, generator=gen)[:moved.numel()].to(DEVICE)  # their rows in the pool
    k_pool = torch.full((n_pool, hk, d), float("nan"), device=DEVICE)
    k_pool[where] = k_buffer[moved]
    k_res = k_buffer.clone()
    k_res[moved] = float("nan")
    if mla:
        v_pool, v_res = k_pool[..., :dv], k_res[..., :dv]
    else:
        v_pool = torch.full((n_pool, hk, dv), float("nan"), device=DEVICE)
        v_pool[where] = v_buffer[moved]
        v_res = v_buffer.clone()
        v_res[moved] = float("nan")
    table = pool.req_to_token.clone()
    lookup = torch.full((pool.n_slots,), 0, dtype=torch.int64, device=DEVICE)
    lookup[moved] = -where - 1
    in_pool = lookup[table.long().clamp(min=0)] < 0
    table = torch.where(in_pool, lookup[table.long().clamp(min=0)], table.long()).to(table.dtype)
    assert in_pool.any() and (~in_pool).any()
    out = poison(torch.empty(len(lens), hq, dv, device=DEVICE))
    with launch_overrides((mla_decode if mla else gqa_decode).LAUNCH, {"prefetch": prefetch}):
        got = triton_ops.sparse_decode_attention(q, k_res, v_res, table, *args, out=out, pool=(k_pool, v_pool))
    assert_close(got, want, FP32, "kernel with pool")
    got_torch = torch_ops.sparse_decode_attention(q, k_res, v_res, table, *args, pool=(k_pool, v_pool))
    assert_close(got_torch, want, FP32, "torch op with pool")
