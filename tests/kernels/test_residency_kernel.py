"""ResidentBlockCache.plan() through the Triton kernel (kernels.common.residency_plan) against the
torch path (_plan_torch, the reference): after every call the same tables, clock and counters,
and the same copies (both plans front-packed; the kernel's (row, head) groups in any order)."""
from __future__ import annotations

import random

import pytest
import torch
from kernel_testing import DEVICE, by_device, case

from asynctls_sglang.kernels.common.gather_host import copy_blocks as copy_blocks_triton
from asynctls_sglang.memory.block_copy import copy_blocks_torch
from asynctls_sglang.memory.residency import COUNTERS, ResidentBlockCache, TransferPlan

TABLES = ("blk2slot", "slot2blk", "last_used", "clock", "counters")


def _pair(**kw) -> tuple[ResidentBlockCache, ResidentBlockCache]:
    args = dict(num_layers=2, num_rows=5, kv_heads=2, capacity=7, max_blocks=24, max_miss=3, block_size=4,
                device=DEVICE)
    args.update(kw)
    return ResidentBlockCache(**args, use_kernel=False), ResidentBlockCache(**args, use_kernel=True)


def _live(plan: TransferPlan) -> list[tuple[int, int, int]]:
    """(src, dst, head) of the entries < count that are not -1, in buffer order; checks that an
    entry is complete or all -1."""
    n = int(plan.count)
    out = []
    for s, d, h in zip(plan.src_block[:n].tolist(), plan.dst_block[:n].tolist(), plan.head[:n].tolist()):
        assert (s >= 0) == (d >= 0) == (h >= 0), f"half-written entry {(s, d, h)}"
        if s >= 0:
            out.append((s, d, h))
    return out


def _groups(live: list[tuple[int, int, int]], c: int) -> list[tuple[tuple[int, int], list[int]]]:
    """Runs of consecutive entries of one (cache row, head): [((row, head), [src, ...]), ...]."""
    out: list = []
    for s, d, h in live:
        key = (d // c, h)
        if not out or out[-1][0] != key:
            out.append((key, []))
        out[-1][1].append(s)
    return out


def _check_plans(cache_t: ResidentBlockCache, cache_k: ResidentBlockCache, layer: int, rows: torch.Tensor,
                 plan_t: TransferPlan, plan_k: TransferPlan, what: str) -> None:
    bs, hk, m, c = rows.shape[0], cache_k.kv_heads, cache_k.max_miss, cache_k.capacity
    p = bs * hk * m
    # the whole buffers [P + 1]: the views handed out are their first P entries
    buf_t, buf_k = cache_t.plan_buffers(layer, bs), cache_k.plan_buffers(layer, bs)
    assert plan_k.src_block.data_ptr() == buf_k.src_block.data_ptr() and plan_k.src_block.shape[0] == p
    live_t, live_k = _live(plan_t), _live(plan_k)
    for name, plan, buf, live in (("torch", plan_t, buf_t, live_t), ("kernel", plan_k, buf_k, live_k)):
        assert int(plan.count) == len(live), f"{what}: {name} plan not front-packed"
        for t in (buf.src_block, buf.dst_block, buf.head):
            assert t[len(live):].eq(-1).all(), f"{what}: {name} plan past its live entries (scratch included)"
    # the same copies (as a multiset): the same groups, each in need order; the kernel's groups
    # come in the order its programs ran (the interpreter: the torch path's order, a GPU: any)
    assert sorted(live_k) == sorted(live_t), f"{what}: plans differ\n torch  {live_t}\n kernel {live_k}"
    groups_t, groups_k = _groups(live_t, c), _groups(live_k, c)
    assert len({g for g, _ in groups_k}) == len(groups_k), f"{what}: a group of the kernel's plan is split"
    assert dict(groups_k) == dict(groups_t), f"{what}: a group's copies in another order"
    real = set(rows.tolist()) - {0}
    assert all(r in real and 0 <= h < hk and len(srcs) <= m for (r, h), srcs in groups_k), what


def _assert_same(cache_t: ResidentBlockCache, cache_k: ResidentBlockCache, what: str) -> None:
    for name in TABLES:
        a, b = getattr(cache_t, name), getattr(cache_k, name)
        if not torch.equal(a, b):
            bad = (a != b).nonzero()[:5].tolist()
            raise AssertionError(f"{what}: {name} differs at {bad}: torch {[a[tuple(i)].item() for i in bad]} "
                                 f"kernel {[b[tuple(i)].item() for i in bad]}")


def _need(rng: random.Random, lens: list[int], hk: int, n_pin: int, n_sel: int, mb: int,
          transpose: bool) -> torch.Tensor:
    """Per (row, head): pinned blocks (sink, local; -1 where absent), then a selection with
    duplicates, -1s and blocks past the row's length (the open tail)."""
    out = []
    for n_blk in lens:
        rows = []
        for _ in range(hk):
            pin = [0, max(n_blk - 1, 0), n_blk][:n_pin]
            pin = [b if b < n_blk and rng.random() > 0.1 else -1 for b in pin]
            sel = []
            for _ in range(n_sel):
                u = rng.random()
                sel.append(-1 if u < 0.15 else rng.choice(pin) if u < 0.25 and pin else
                           rng.randrange(max(n_blk, 1)) if u < 0.9 else min(n_blk, mb - 1))
            rows.append(pin + sel)
        out.append(rows)
    need = torch.tensor(out, dtype=torch.int64)  # [bs, Hk, N]
    if transpose:  # the same values through a [bs, N, Hk] tensor: other strides
        need = need.transpose(1, 2).contiguous().transpose(1, 2)
    return need.to(DEVICE)


CASES = by_device([
    # layers, rows, Hk, C, MB, max_miss, bs, pinned, selected, steps
    case(2, 5, 2, 7, 24, 3, 3, 2, 8, 10, id="overflow-miss-capped"),
    case(2, 6, 3, 5, 30, 8, 4, 3, 9, 8, id="capacity-below-need"),
    case(1, 4, 2, 19, 24, 19, 3, 2, 10, 8, id="roomy"),
    case(1, 3, 1, 1, 6, 1, 2, 0, 3, 8, id="one-slot"),
    case(1, 2, 1, 3, 8, 2, 1, 1, 4, 6, id="one-program"),
    case(1, 3, 2, 259, 300, 40, 2, 3, 170, 3, id="c259-n173"),
], [
    case(2, 40, 8, 259, 2048, 64, 48, 3, 160, 6, id="real-c259-n163"),
    case(1, 12, 8, 600, 700, 128, 16, 3, 300, 4, id="c600-n303"),
])


@pytest.mark.parametrize("layers, num_rows, hk, c, mb, max_miss, bs, n_pin, n_sel, steps", CASES)
def test_kernel_plan_equals_torch_plan(layers, num_rows, hk, c, mb, max_miss, bs, n_pin, n_sel, steps):
    rng = random.Random(c * 1000 + mb * 10 + hk)
    cache_t, cache_k = _pair(num_layers=layers, num_rows=num_rows, kv_heads=hk, capacity=c, max_blocks=mb,
                             max_miss=max_miss)
    seeds_t = torch.zeros(layers, len(COUNTERS), dtype=torch.int64, device=DEVICE)
    seeds_k = seeds_t.clone()
    # host block of request block j of cache row r (distinct across rows)
    pages_of = torch.stack([torch.randperm(mb, generator=torch.Generator().manual_seed(r)) + 1000 * r
                            for r in range(num_rows)]).to(DEVICE)
    lens = {r: rng.randrange(1, mb + 1) for r in range(num_rows)}
    for step in range(steps):
        real = rng.sample(range(1, num_rows), min(bs, num_rows - 1))
        rows_l = real + [0] * (bs - len(real))  # padding rows (row 0) fill the batch
        rng.shuffle(rows_l)
        rows = torch.tensor(rows_l, device=DEVICE)
        if step and rng.random() < 0.3:  # a request ends; its row is reused by a new one
            r = rng.choice(range(1, num_rows))
            cache_t.reset(torch.tensor([r]))
            cache_k.reset(torch.tensor([r]))
            lens[r] = rng.randrange(1, mb + 1)
        for r in real:
            lens[r] = min(mb, lens[r] + rng.randrange(0, 2))
        pages = pages_of[rows]
        if rng.random() < 0.3:  # a wider page table than any block needs
            pages = torch.cat([pages, torch.full((bs, 3), -5, dtype=torch.int64, device=DEVICE)], 1)
        for layer in range(layers):
            need = _need(rng, [lens[r] for r in rows_l], hk, n_pin, n_sel, mb, transpose=rng.random() < 0.3)
            host = None
            if rng.random() < 0.7:  # the open tail (and sometimes more) not on the host yet
                host = torch.tensor([max(0, lens[r] - rng.randrange(0, 3)) for r in rows_l], device=DEVICE)
            seed = rng.random() < 0.2
            what = f"step {step} layer {layer} rows {rows_l}"
            # (the torch path views `need` flat: it takes a contiguous copy)
            plan_t = cache_t.plan(layer, rows, need.contiguous(), pages, host_blocks=host,
                                  counters=seeds_t if seed else None)
            plan_k = cache_k.plan(layer, rows, need, pages, host_blocks=host, counters=seeds_k if seed else None)
            _assert_same(cache_t, cache_k, what)
            assert torch.equal(seeds_t, seeds_k), f"{what}: counters argument"
            _check_plans(cache_t, cache_k, layer, rows, plan_t, plan_k, what)
    snap = cache_k.snapshot()
    assert snap["plans"] > 0 and snap["moved"] > 0 and snap["hits"] > 0
    if c < 10:
        assert snap["evicted"] > 0 and snap["overflow"] > 0


def test_empty_and_all_padding_batches():
    cache_t, cache_k = _pair()
    need = torch.tensor([[[0, 1, 1, -1], [2, 2, 3, 4]]] * 2, device=DEVICE)
    pages = torch.arange(24, device=DEVICE).view(1, -1).expand(2, -1)  # stride 0 rows
    for rows in ([0, 0], [0, 3], [3, 0]):
        rows = torch.tensor(rows, device=DEVICE)
        plans = [cache.plan(1, rows, need, pages) for cache in (cache_t, cache_k)]
        _assert_same(cache_t, cache_k, f"rows {rows.tolist()}")
        _check_plans(cache_t, cache_k, 1, rows, *plans, f"rows {rows.tolist()}")
    empty = torch.zeros(0, 2, 4, dtype=torch.int64, device=DEVICE)
    for cache in (cache_t, cache_k):
        cache.plan(0, torch.zeros(0, dtype=torch.int64, device=DEVICE), empty, pages[:0])
    _assert_same(cache_t, cache_k, "empty batch")


def test_copies_fill_the_same_resident_buffers():
    """Both plans, applied with copy_blocks (Triton kernel and torch), give the same resident
    buffer, and each resident block holds its host block's head."""
    hk, d, b, c, mb, num_rows = 2, 8, 4, 5, 16, 4
    cache_t, cache_k = _pair(num_layers=1, num_rows=num_rows, kv_heads=hk, capacity=c, max_blocks=mb, max_miss=3,
                             block_size=b)
    gen = torch.Generator().manual_seed(7)
    host = torch.randn(num_rows * mb * b, hk, d, generator=gen).to(DEVICE)
    res_t = torch.full((num_rows * c * b, hk, d), float("nan"), device=DEVICE)
    res_k, res_k2 = res_t.clone(), res_t.clone()
    pages_of = torch.arange(num_rows * mb, device=DEVICE).view(num_rows, mb).flip(1)
    rng = random.Random(3)
    for step in range(10):
        rows_l = rng.sample(range(1, num_rows), 2) + [0]
        rows = torch.tensor(rows_l, device=DEVICE)
        need = _need(rng, [mb] * 3, hk, 2, 6, mb, transpose=False)
        plan_t = cache_t.plan(0, rows, need, pages_of[rows])
        plan_k = cache_k.plan(0, rows, need, pages_of[rows])
        _assert_same(cache_t, cache_k, f"step {step}")
        copy_blocks_triton(host, res_t, plan_t.src_block, plan_t.dst_block, plan_t.count, b, plan_t.head)
        copy_blocks_triton(host, res_k, plan_k.src_block, plan_k.dst_block, plan_k.count, b, plan_k.head)
        copy_blocks_torch(host, res_k2, plan_k.src_block, plan_k.dst_block, plan_k.count, b, plan_k.head)
        for got in (res_k, res_k2):
            assert torch.equal(got.isnan(), res_t.isnan()) and torch.equal(got.nan_to_num(), res_t.nan_to_num())
        b2s = cache_k.blk2slot[0].cpu()
        for r in rows_l:
            for h in range(hk):
                for blk in (b2s[r, h, :mb] >= 0).nonzero().flatten().tolist():
                    s = (r * c + int(b2s[r, h, blk])) * b
                    src = int(pages_of[r, blk]) * b
                    assert torch.equal(res_k[s:s + b, h], host[src:src + b, h]), f"step {step} row {r} block {blk}"


FUSED_CASES = by_device([
    # layers, rows, Hk, C, MB, max_miss, bs, pinned, selected, window blocks, steps
    case(2, 6, 2, 7, 24, 3, 4, 2, 8, 3, 8, id="overflow"),
    case(1, 4, 3, 19, 30, 19, 3, 0, 10, 1, 6, id="no-pinned-head"),
    case(1, 3, 1, 40, 60, 8, 2, 3, 40, 4, 4, id="c40-n43"),
], [
    case(2, 40, 8, 259, 2048, 32, 16, 3, 128, 4, 5, id="real-qwen"),
    case(1, 12, 1, 176, 1600, 32, 6, 3, 128, 4, 5, id="real-glm"),
])


@pytest.mark.parametrize("layers, num_rows, hk, c, mb, max_miss, bs, n_pin, n_sel, wn, steps", FUSED_CASES)
def test_fused_selection_and_late_count(layers, num_rows, hk, c, mb, max_miss, bs, n_pin, n_sel, wn, steps):
    """plan(need = the pinned head, selected=, dense=, late=) on the kernel (one launch) and on the
    torch path, against what they replace: count_late's kernel on the tables before the plan, then
    plan() of torch.cat([head, where(dense, -1, selected)]). Same tables, clock, counters, plans
    (as multisets of groups) and late counts after every call."""
    from asynctls_sglang.kernels.common.offload_tables import count_late

    rng = random.Random(c * 7 + n_sel)
    args = dict(num_layers=layers, num_rows=num_rows, kv_heads=hk, capacity=c, max_blocks=mb, max_miss=max_miss,
                block_size=4, device=DEVICE)
    cache_t, cache_k = ResidentBlockCache(**args, use_kernel=False), ResidentBlockCache(**args, use_kernel=True)
    cache_r = ResidentBlockCache(**args, use_kernel=True)
    late_t, late_k, late_r = (torch.zeros(1, dtype=torch.int64, device=DEVICE) for _ in range(3))
    pages_of = torch.stack([torch.randperm(mb, generator=torch.Generator().manual_seed(r)) + 1000 * r
                            for r in range(num_rows)]).to(DEVICE)
    lens = {r: rng.randrange(1, mb + 1) for r in range(num_rows)}
    total_late = 0
    for step in range(steps):
        real = rng.sample(range(1, num_rows), min(bs, num_rows - 1))
        rows_l = real + [0] * (bs - len(real))
        rng.shuffle(rows_l)
        rows = torch.tensor(rows_l, device=DEVICE)
        for r in real:
            lens[r] = min(mb, lens[r] + rng.randrange(0, 2))
        pages = pages_of[rows]
        dense = torch.tensor([rng.random() < 0.25 for _ in rows_l], device=DEVICE)
        # window blocks: some of the row's last blocks, -1 where absent
        window = torch.tensor([[max(lens[r] - 1 - j, 0) if rng.random() > 0.2 else -1 for j in range(wn)]
                               for r in rows_l], dtype=torch.int64, device=DEVICE)
        for layer in range(layers):
            need = _need(rng, [lens[r] for r in rows_l], hk, n_pin, n_sel, mb, transpose=False)
            head, sel = need[:, :, :n_pin], need[:, :, n_pin:]
            if rng.random() < 0.5:  # the head as the runtime passes it: one row for all heads (stride 0)
                head = head[:, :1].expand(-1, hk, -1)
            host = torch.tensor([max(0, lens[r] - rng.randrange(0, 3)) for r in rows_l], device=DEVICE)
            what = f"step {step} layer {layer} rows {rows_l} dense {dense.tolist()}"
            count_late(sel, cache_r.blk2slot[layer], rows, window, dense, late_r)
            full = torch.cat([head, torch.where(dense.view(-1, 1, 1), -1, sel)], 2)
            plan_r = cache_r.plan(layer, rows, full, pages, host_blocks=host)
            plan_t = cache_t.plan(layer, rows, head, pages, host_blocks=host, selected=sel, dense=dense,
                                  late=(window, late_t))
            plan_k = cache_k.plan(layer, rows, head, pages, host_blocks=host, selected=sel, dense=dense,
                                  late=(window, late_k))
            _assert_same(cache_r, cache_t, what + " (torch, fused)")
            _assert_same(cache_r, cache_k, what + " (kernel, fused)")
            _check_plans(cache_r, cache_t, layer, rows, plan_r, plan_t, what + " (torch, fused)")
            _check_plans(cache_r, cache_k, layer, rows, plan_r, plan_k, what + " (kernel, fused)")
            assert int(late_t) == int(late_r) == int(late_k), \
                f"{what}: late torch {int(late_t)} kernel {int(late_k)}, count_late {int(late_r)}"
        total_late = int(late_r)
    assert total_late > 0 and cache_k.snapshot()["hits"] > 0, "the case never counts a late block or a hit"
