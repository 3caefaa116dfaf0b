"""update_block_summaries: bit-exact with the torch op and with reference.block_summaries."""
from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICE, by_device, case, gather_tokens, make_pool

from asynctls_sglang.kernels import triton_ops
from asynctls_sglang.kernels.common import summary
from asynctls_sglang.ops import torch_ops
from asynctls_sglang.reference import block_summaries

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32

# (seq lens already written, new tokens per request, Hk, D, block, key dtype, table dtype)
CASES = by_device([
    case([0, 0], [37, 64], 2, 64, 16, FP32, FP32, id="prefill-fresh-fp32"),
    case([5, 16, 31], [1, 1, 1], 3, 96, 16, BF16, BF16, id="decode-offsets-5-0-15-bf16"),
    case([20, 7], [9, 40], 1, 100, 8, FP16, FP16, id="chunked-midpage-D100-fp16"),
    case([64, 3, 17], [1, 30, 1], 2, 128, 32, BF16, FP32, id="mixed-bf16-keys-fp32-table"),
    case([0], [5], 1, 576, 64, BF16, BF16, id="mla-576-partial-page"),
], [
    case([4000, 100, 7000, 0] * 8, [1] * 32, 8, 128, 64, BF16, BF16, id="gpu-decode-bs32"),
    case([0, 0], [16000, 3000], 8, 128, 64, BF16, BF16, id="gpu-prefill-16k"),
])


def _state(pages, hk, d, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    stale = torch.randn(pages, hk, d, generator=gen).to(dtype).to(DEVICE)  # earlier summaries / garbage
    return stale.clone(), (stale + 1).clone()


@pytest.mark.parametrize("old_lens, new_lens, hk, d, b, kdtype, sdtype", CASES)
@pytest.mark.parametrize("shuffle", [False, True], ids=["in-order", "shuffled-loc"])
@pytest.mark.parametrize("method", ["flags", "scan"])
def test_update_matches_torch_op(old_lens, new_lens, hk, d, b, kdtype, sdtype, shuffle, method):
    total = [o + n for o, n in zip(old_lens, new_lens)]
    pool = make_pool(total, b, seed=len(total) + d)
    loc = torch.cat([pool.req_to_token[pool.req_pool_indices[i], o:o + n].long()
                     for i, (o, n) in enumerate(zip(old_lens, new_lens))])
    if shuffle:
        loc = loc[torch.randperm(loc.numel(), generator=torch.Generator().manual_seed(1)).to(DEVICE)]
    k = torch.randn(loc.numel(), hk, d, generator=torch.Generator().manual_seed(2)).to(kdtype).to(DEVICE)
    pages = pool.n_slots // b
    want_min, want_max = _state(pages, hk, d, sdtype, seed=3)
    got_min, got_max = want_min.clone(), want_max.clone()
    torch_ops.update_block_summaries(want_min, want_max, torch.zeros(pages, dtype=torch.int32, device=DEVICE),
                                     loc, k, b)
    flag = torch.full((pages,), -5, dtype=torch.int32, device=DEVICE)
    summary.update_block_summaries(got_min, got_max, flag, loc, k, b, method=method)
    assert torch.equal(got_min, want_min) and torch.equal(got_max, want_max)
    if method == "scan":  # one launch: the flags are not even read
        assert bool((flag == -5).all())
    # the call must have changed something, or the comparison above proves nothing
    assert not torch.equal(got_min, _state(pages, hk, d, sdtype, seed=3)[0])


@pytest.mark.parametrize("lens, chunk, hk, d, b, dtype", [
    case([45, 64, 3], 13, 2, 64, 16, FP32, id="chunks-of-13"),
    case([70, 9], 1, 1, 96, 32, BF16, id="token-by-token-bf16"),
])
def test_written_in_chunks_equals_reference(lens, chunk, hk, d, b, dtype):
    """Prefill in chunks then decode, on reused (stale) pages: the summaries of every request's
    blocks equal reference.block_summaries of its keys (chunks of up to SCAN_MAX_T tokens take
    the scan, longer ones the flags)."""
    pool = make_pool(lens, b, seed=5)
    keys = torch.randn(pool.n_slots, hk, d, generator=torch.Generator().manual_seed(6)).to(dtype).to(DEVICE)
    pages = pool.n_slots // b
    kmin, kmax = _state(pages, hk, d, dtype, seed=7)
    flag = torch.zeros(pages, dtype=torch.int32, device=DEVICE)
    for start in range(0, max(lens), chunk):
        loc = torch.cat([pool.req_to_token[pool.req_pool_indices[i], start:min(start + chunk, n)].long()
                         for i, n in enumerate(lens)])
        triton_ops.update_block_summaries(kmin, kmax, flag, loc, keys[loc], b)
    for i, n in enumerate(lens):
        want_min, want_max = block_summaries(gather_tokens(pool, keys, i).cpu(), b)
        blocks = pool.req_to_token[pool.req_pool_indices[i], :n:b].long() // b
        assert torch.equal(kmin[blocks].cpu(), want_min) and torch.equal(kmax[blocks].cpu(), want_max)


@pytest.mark.parametrize("head_major", [False, True], ids=["slot-major", "head-major"])
@pytest.mark.parametrize("method", ["flags", "scan"])
@pytest.mark.parametrize("t, hk, d, r, b, dtype", [
    case(3, 8, 128, 32, 64, BF16, id="decode-bs3"),
    case(37, 2, 96, 22, 16, FP32, id="chunk-37-r22"),
    case(5, 1, 576, 128, 64, BF16, id="mla-576"),
])
def test_fold_with_index_keys_in_one_launch(t, hk, d, r, b, dtype, method, head_major):
    """update_block_summaries(index=...) writes the same index keys as write_index_keys (bit-exact)
    and the same summaries as without them; slots it does not write keep their poison. Into
    contiguous index keys and into the index store's head-major views alike."""
    pool = make_pool([t + 3], b, seed=11)
    loc = pool.req_to_token[pool.req_pool_indices[0], 3:3 + t].long()
    k = torch.randn(t, hk, d, generator=torch.Generator().manual_seed(12)).to(dtype).to(DEVICE)
    gen = torch.Generator().manual_seed(13)
    channels = torch.stack([torch.randperm(d, generator=gen)[:r].sort().values for _ in range(hk)]).to(DEVICE)
    pages = pool.n_slots // b
    tables = []
    for fused in (False, True):
        kmin, kmax = _state(pages, hk, d, dtype, seed=14)
        if head_major:
            codes = torch.full((hk, pool.n_slots, r // 2), 0xAB, dtype=torch.uint8, device=DEVICE).permute(1, 0, 2)
            sz = torch.full((hk, pool.n_slots, 2), float("nan"), device=DEVICE).permute(1, 0, 2)
        else:
            codes = torch.full((pool.n_slots, hk, r // 2), 0xAB, dtype=torch.uint8, device=DEVICE)
            sz = torch.full((pool.n_slots, hk, 2), float("nan"), device=DEVICE)
        flag = torch.zeros(pages, dtype=torch.int32, device=DEVICE)
        if fused:
            summary.update_block_summaries(kmin, kmax, flag, loc, k, b, index=(codes, sz, channels), method=method)
        else:
            torch_ops.update_block_summaries(kmin, kmax, flag, loc, k, b)
            torch_ops.write_index_keys(codes, sz, loc, k, channels)
        tables.append((kmin, kmax, codes, sz.contiguous().view(torch.int32)))
    for want, got in zip(*tables):
        assert torch.equal(got, want)
    assert not bool((tables[1][2][loc] == 0xAB).all())  # the keys were written
