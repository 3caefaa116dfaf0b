"""The offloading engine's table reads as kernels (readable_pair, count_late, buffer_table) against their
torch form in OffloadRuntime (the specification): bit-exact outputs and the same late/dropped
counts, on random residency tables, windows with duplicates and absent blocks, unused positions,
dense rows, the padding row."""
from __future__ import annotations

import pytest
import torch

from asynctls_sglang.config import AsyncTLSConfig
from asynctls_sglang.kernels import triton_ops
from asynctls_sglang.kernels.common import topk
from asynctls_sglang.kernels.common.launch import launch_overrides
from asynctls_sglang.memory.offload_runtime import DecodeStep, OffloadRuntime
from asynctls_sglang.ops import torch_ops

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
    # the window blocks' device pool pages (-1 where absent), distinct
    win_src = torch.where(window >= 0, torch.randperm(bs * 5 + 40, generator=g)[:bs * 5].view(bs, 5), -1).reshape(-1)
    return DecodeStep(rows.to(DEVICE), lens.to(DEVICE), none, none, window.to(DEVICE), win_src.to(DEVICE), none,
                      dense.to(DEVICE), torch.arange(bs, device=DEVICE))


def _wanted(bs: int, hk: int, nb: int, k: int, g) -> torch.Tensor:
    """Distinct block ids per row and head, some unused (-1) at the end."""
    wanted = torch.stack([torch.stack([torch.randperm(nb, generator=g)[:k] for _ in range(hk)]) for _ in range(bs)])
    wanted[:, :, k - 3:] = torch.where(torch.rand(bs, hk, 3, generator=g) < 0.5, -1, wanted[:, :, k - 3:])
    return wanted.to(DEVICE)


def test_the_pair_topk_with_the_compacted_passes():
    """readable_pair_topk under the top-k's `compact` launch parameter (a --sweep alternative):
    the same blocks as the torch form."""
    with launch_overrides(topk.LAUNCH, {"compact": 16}):
        test_readable_scores_and_buffer_table_match_the_torch_form(1, 40, 3)


@pytest.mark.parametrize("hk,max_blocks,bs", [(1, 40, 3), (4, 70, 5), (8, 300, 2)])
def test_readable_scores_and_buffer_table_match_the_torch_form(hk, max_blocks, bs):
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
        scores = torch.randn(bs, hk, nb, generator=g)
        scores[torch.rand(bs, hk, nb, generator=g) < 0.1] = float("-inf")  # blocks past a row's length
        scores = scores.to(DEVICE)
        wanted = _wanted(bs, hk, nb, 9, g)
        a = ref.readable_pair(layer, step, scores)
        b = ker.readable_pair(layer, step, scores)
        assert torch.equal(a, b) and b.shape == (2, *scores.shape) and torch.equal(b[0], scores)
        assert (b[1] > float("-inf")).any() and ((b[1] == float("-inf")) & (scores > float("-inf"))).any()
        # partial rows (MLA's channel slices, score_blocks(partials=True)) added in order by both forms
        parts = torch.randn(5, bs, hk, nb, generator=g).to(DEVICE)
        parts[:, scores == float("-inf")] = float("-inf")
        added = parts[0] + parts[1] + parts[2] + parts[3] + parts[4]
        a, b = ref.readable_pair(layer, step, parts), ker.readable_pair(layer, step, parts)
        assert torch.equal(a, b) and torch.equal(b[0], added)
        assert torch.equal(b, ker.readable_pair(layer, step, added))
        # the pair built and ranked in one launch (readable_pair_topk) = the top-k of the pair, bit
        # for bit: partial rows, ties (scores on a coarse grid), k past the readable blocks
        tied = (parts * 2).round() / 2
        for sc, k in ((parts, 9), (tied, 9), (scores, nb + 5), (tied[0], 1)):
            want = torch_ops.select_blocks(ref.readable_pair(layer, step, sc), k)
            got = ker.select_readable_pair(layer, step, sc, k, triton_ops)
            assert got.shape == (2, bs, hk, k) and torch.equal(got, want), (k, sc.dim())
            assert torch.equal(ref.select_readable_pair(layer, step, sc, k, torch_ops), want)
        late = int(ref.late)
        ref.count_late(layer, step, wanted)
        ker.count_late(layer, step, wanted)
        assert int(ref.late) == int(ker.late) and int(ref.late) > late
        positions = torch.randint(-1, max_blocks * 16, (bs, hk, 37), generator=g)
        positions[:, :, -5:] = -1
        positions = positions.to(DEVICE)
        t_ref, req_ref, c_ref = ref.buffer_table(layer, step, positions)
        t_ker, req_ker, c_ker = ker.buffer_table(layer, step, positions)
        assert torch.equal(t_ref, t_ker) and t_ker.dtype == torch.int32
        assert torch.equal(c_ref, c_ker) and torch.equal(req_ref, req_ker)
        assert int(ref.dropped) == int(ker.dropped) and int(ref.dropped) > 0
        assert (c_ker >= 0).any()  # some positions are readable, so the table is exercised
        # window positions are read in place from the device pool: -(page * B + p % B) - 1
        assert ((t_ker < 0) & (c_ker.reshape(bs, -1) >= 0)).any() and ((t_ker > 0) & (c_ker.reshape(bs, -1) >= 0)).any()
        # the layer's chosen positions read in place of columns [start, start + Kc) of sparse rows
        chosen = torch.randint(-1, max_blocks * 16, (bs, hk, 20), generator=g).to(DEVICE)
        put = positions.clone()
        put[:, :, 11:31] = torch.where(step.dense.view(-1, 1, 1), positions[:, :, 11:31], chosen)
        spec = _runtime(hk, max_blocks, bs + 2, 7)  # same tables; its counters are its own
        spec.kernels = False
        t_put, _, c_put = spec.buffer_table(layer, step, put)
        left_out = int(spec.dropped)
        for rt in (ref, ker):
            before = int(rt.dropped)
            t_cho, _, c_cho = rt.buffer_table(layer, step, positions, chosen, 11)
            assert torch.equal(t_cho, t_put) and torch.equal(c_cho, c_put), rt.kernels
            assert int(rt.dropped) - before == left_out
        assert bool(step.dense.any()) and not bool(step.dense.all())  # both kinds of rows are exercised


@pytest.mark.parametrize("kernels", [False, True], ids=["torch", "kernel"])
def test_attention_reads_the_top_k_of_the_readable_blocks(kernels):
    """The rule (docs/offload.md): attention reads the k_b best blocks among those readable now
    (resident in the layer, or a window block of the row); a wanted block that is not readable is
    late (counted for sparse rows only) and the next best readable block takes its place."""
    g = torch.Generator().manual_seed(3)
    hk, nb, kb, bs = 4, 60, 8, 3
    rt = _runtime(hk, nb + 3, bs + 1, 5)
    rt.kernels = kernels
    rows = torch.arange(1, bs + 1)
    # residency from most blocks (row 1) to few (row 3): only the blk2slot >= 0 test matters here
    res = torch.rand(bs, hk, nb + 4, generator=g) < torch.tensor([0.9, 0.6, 0.05]).view(bs, 1, 1)
    rt.cache.blk2slot[0, rows.to(DEVICE)] = torch.where(res, 0, -1).int().to(DEVICE)
    dense = torch.tensor([False, True, False])
    step = _step(rt, rows, torch.full((bs,), 900), dense, g)
    scores = torch.randn(bs, hk, nb, generator=g).to(DEVICE)
    wanted, got = rt.select_readable_pair(0, step, scores, kb, triton_ops if kernels else torch_ops).unbind(0)
    assert torch.equal(wanted, torch_ops.select_blocks(scores, kb))
    rt.count_late(0, step, wanted)
    readable = res[:, :, :nb].to(DEVICE) | (
        (torch.arange(nb, device=DEVICE).view(1, -1, 1) == step.window.view(bs, 1, -1))
        & (step.window.view(bs, 1, -1) >= 0)).any(-1).unsqueeze(1)
    late = 0
    for b in range(bs):
        for h in range(hk):
            ok = readable[b, h].nonzero().flatten().tolist()
            best = sorted(ok, key=lambda i: (-float(scores[b, h, i]), i))[:kb]
            assert got[b, h].tolist() == best + [-1] * (kb - len(best))  # rank order, -1 after
            late += 0 if dense[b] else sum(not bool(readable[b, h, w]) for w in wanted[b, h].tolist())
    assert any(len(readable[2, h].nonzero()) < kb for h in range(hk))  # too few readable: -1 padding occurs
    assert int(rt.late) == late > 0


@pytest.mark.parametrize("sink,local,mapped", [(16, 32, True), (16, 32, False), (0, 40, True), (20, 1, True)],
                         ids=["sink16-local32-map", "no-map", "no-sink", "local1"])
def test_decode_step_tables_in_one_launch_match_the_torch_form(sink, local, mapped):
    """OffloadRuntime.decode_step on a GPU builds the step's tables in one launch: the same tensors
    as its torch form for rows with lengths from 1 up (inside the sink, inside the window, dense,
    sparse), the padding row 0, int32 inputs, logical pages with and without a device page; with a
    width, the attention's positions and counts too (select.step_positions)."""
    cfg = AsyncTLSConfig(offload=True, block_size=16, block_budget=8, token_budget=64, sink_tokens=sink,
                         local_window=local)
    g = torch.Generator().manual_seed(sink * 100 + local)
    rows_n, ctx, hk = 9, 700, 3
    rts = [OffloadRuntime(cfg, num_layers=2, kv_heads=hk, head_dim=8, v_head_dim=8, dtype=torch.float32,
                          device=DEVICE, num_rows=rows_n, max_blocks=-(-ctx // 16), host_blocks=4)
           for _ in range(2)]
    rts[0].kernels, rts[1].kernels = False, True
    n_pages = 200
    req_to_token = torch.randint(0, n_pages * 16, (rows_n, ctx), generator=g, dtype=torch.int32).to(DEVICE)
    if mapped:
        device_page = torch.randint(-1, 50, (n_pages,), generator=g, dtype=torch.int32).to(DEVICE)
        for rt in rts:
            rt.device_page = device_page
    rows = torch.tensor([0, 3, 5, 1, 8, 2, 7], dtype=torch.int32, device=DEVICE)
    lens = torch.tensor([1, 5, 17, 40, 64, 65, 699], dtype=torch.int32, device=DEVICE)
    for max_blocks, dense_blocks, width in ((44, 4, 0), (13, 7, 64), (44, 0, 130)):
        ref, ker = (rt.decode_step(req_to_token, rows, lens, max_blocks, dense_blocks, torch_ops, width=width)
                    for rt in rts)
        for name in DecodeStep._fields:
            a, b = getattr(ref, name), getattr(ker, name)
            if name in ("positions", "counts") and not width:
                assert a is None and b is None
                continue
            assert a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b), name
        assert bool(ref.dense.any()) and not bool(ref.dense.all())
        assert bool((ref.window == -1).any()) and bool((ref.win_src >= 0).any())
        if width:  # the slot table reads the kernel's positions through their stride-0 head axis
            chosen = torch.randint(-1, 700, (rows.shape[0], hk, 10), generator=g).to(DEVICE)
            got = [rt.buffer_table(0, st, st.positions, chosen, sink + local) for rt, st in zip(rts, (ref, ker))]
            assert ker.positions.stride(1) == 0 and ref.positions.stride(1) != 0
            assert all(torch.equal(a, b) for a, b in zip(*got)) and int(rts[0].dropped) == int(rts[1].dropped) > 0


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_device_loc_in_one_launch_matches_the_torch_form(dtype):
    """SGLang's logical write locations -> device slots through the page map (a page with no device
    page writes to the padding page 0), as the pool's torch form computes them."""
    from asynctls_sglang.kernels.common.offload_tables import device_loc

    g = torch.Generator().manual_seed(11)
    b, pages = 16, 50
    page_map = torch.randint(-1, 40, (pages,), generator=g, dtype=torch.int32).to(DEVICE)
    loc = torch.randint(0, pages * b, (300,), generator=g).to(dtype).to(DEVICE)
    want = torch.where(page_map[loc.long() // b] >= 0, page_map[loc.long() // b] * b + loc.long() % b, loc.long() % b)
    got = device_loc(loc[::2], page_map, b)  # a strided view of the locations
    assert got.dtype == torch.int64 and torch.equal(got, want[::2])
    assert (page_map[loc.long() // b] < 0).any() and (page_map[loc.long() // b] >= 0).any()
    assert device_loc(loc[:0], page_map, b).shape == (0,)
