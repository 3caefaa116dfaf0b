"""ResidentBlockCache: the recency rule on hand-traced steps, the delta, overflow, rows and reset."""
from __future__ import annotations

import random

import pytest
import torch
from offload_testing import plan_entries, resident_sets

from asynctls_sglang.memory.residency import ResidentBlockCache, forced_blocks


def make_cache(**kw) -> ResidentBlockCache:
    args = dict(num_layers=1, num_rows=3, kv_heads=1, capacity=4, max_blocks=10, max_miss=2,
                block_size=4, device="cpu")
    args.update(kw)
    return ResidentBlockCache(**args)


PAGES = torch.arange(10).view(1, 10) + 100  # request block j lives in host block 100 + j

# (need, slot2blk after, last_used after, plan {(host block, slot)}); row 1, C = 4, max_miss = 2.
STEPS = [
    ([0, 1, 2], [0, 1, -1, -1], [1, 1, -1, -1], {(100, 0), (101, 1)}),       # 2 overflows
    ([0, 2, 3], [0, 1, 2, 3], [2, 1, 2, 2], {(102, 2), (103, 3)}),           # free slots first
    ([0, 4], [0, 4, 2, 3], [3, 3, 2, 2], {(104, 1)}),                        # evict least recent (1)
    ([5, 3, 6], [6, 4, 5, 3], [4, 3, 4, 4], {(105, 2), (106, 0)}),           # tie 3/3: lower slot
    ([4, 4, -1, 7], [7, 4, 5, 3], [5, 5, 4, 4], {(107, 0)}),                 # duplicate, padding
]


def test_recency_rule_hand_traced():
    cache = make_cache()
    rows = torch.tensor([1])
    for step, (need, s2b, used, moves) in enumerate(STEPS, 1):
        plan = cache.plan(0, rows, torch.tensor([[need]]), PAGES)
        assert cache.slot2blk[0, 1, 0, :4].tolist() == s2b, f"step {step} slot2blk"
        assert cache.last_used[0, 1, 0, :4].tolist() == used, f"step {step} last_used"
        assert {(h, s) for _, _, h, s in plan_entries(cache, plan)} == moves, f"step {step} plan"
        assert all((r, hd) == (1, 0) for r, hd, _, _ in plan_entries(cache, plan))
    b2s = cache.blk2slot[0, 1, 0, :10].tolist()
    assert b2s == [-1, -1, -1, 3, 1, 2, -1, 0, -1, -1]
    assert resident_sets(cache, 0)[(2, 0)] == set() and resident_sets(cache, 0)[(0, 0)] == set()
    assert cache.snapshot() == {"plans": 5, "needed": 13, "hits": 4, "misses": 9, "moved": 8,
                                "overflow": 1, "evicted": 4}


def test_heads_are_independent_and_pinned_blocks_stay():
    cache = make_cache(kv_heads=2, capacity=3, max_miss=3)
    rows = torch.tensor([2])
    pin = 0  # a sink block, needed first at every step
    seq = [([pin, 1, 2], [pin, 5, 6]), ([pin, 3, 4], [pin, 5, 7]), ([pin, 1, 3], [pin, 8, 9])]
    for h0, h1 in seq:
        cache.plan(0, rows, torch.tensor([[h0, h1]]), PAGES)
        sets = resident_sets(cache, 0)
        assert sets[(2, 0)] == set(h0) and sets[(2, 1)] == set(h1)
    assert cache.snapshot()["evicted"] == 6  # head 0: 2 + 1, head 1: 1 + 2


def test_open_tail_and_padding_row_never_move():
    cache = make_cache(max_miss=4)
    plan = cache.plan(0, torch.tensor([0, 1]), torch.tensor([[[0, 1]], [[2, 3]]]), PAGES.expand(2, -1),
                      host_blocks=torch.tensor([9, 3]))
    assert {(r, h) for r, _, h, _ in plan_entries(cache, plan)} == {(1, 102)}  # block 3 not on host yet
    assert cache.snapshot()["needed"] == 1


@pytest.mark.parametrize("capacity, max_miss, n_need", [(6, 6, 4), (9, 2, 5), (5, 5, 5)],
                         ids=["roomy", "miss-capped", "capacity-equals-need"])
def test_plan_is_the_set_difference(capacity, max_miss, n_need):
    rng = random.Random(capacity * 100 + max_miss)
    rows_total, hk, mb = 4, 3, 12
    cache = make_cache(num_rows=rows_total, kv_heads=hk, capacity=capacity, max_blocks=mb, max_miss=max_miss)
    pages = torch.stack([torch.randperm(mb, generator=torch.Generator().manual_seed(r)) + 50 * r
                         for r in range(rows_total)])
    for step in range(25):
        rows = torch.tensor(rng.sample(range(1, rows_total), 2))
        need = torch.tensor([[rng.sample(range(mb), n_need) for _ in range(hk)] for _ in rows])
        before = resident_sets(cache, 0)
        plan = cache.plan(0, rows, need, pages[rows])
        after = resident_sets(cache, 0)
        moved = plan_entries(cache, plan)
        for i, r in enumerate(rows.tolist()):
            for h in range(hk):
                want = [b for b in need[i, h].tolist() if b not in before[(r, h)]]  # in need order
                admitted = want[:max_miss]
                got = {blk for rr, hh, blk, _ in moved if (rr, hh) == (r, h)}
                assert got == {int(pages[r, b]) for b in admitted}, f"step {step} row {r} head {h}"
                kept = set(need[i, h].tolist()) - set(want[max_miss:])
                assert kept <= after[(r, h)] and after[(r, h)] <= before[(r, h)] | kept
                assert len(after[(r, h)]) <= capacity
        untouched = set(before) - {(r, h) for r in rows.tolist() for h in range(hk)}
        assert all(before[k] == after[k] for k in untouched), "a row outside the batch changed"
        slots = [(r, h, s) for r, h, _, s in moved]
        assert len(slots) == len(set(slots)), "two copies into one slot"


def test_overflow_counter():
    cache = make_cache(capacity=8, max_miss=3)
    cache.plan(0, torch.tensor([1, 2]), torch.tensor([[[0, 1, 2, 3, 4, 5, 6]], [[1, 2, -1, -1, -1, -1, -1]]]),
               PAGES.expand(2, -1))
    snap = cache.snapshot()
    assert (snap["misses"], snap["moved"], snap["overflow"]) == (9, 5, 4)
    cache.plan(0, torch.tensor([1]), torch.tensor([[[0, 1, 2, 3, 4, 5, 6]]]), PAGES)  # 3 hits, 4 misses
    snap = cache.snapshot()
    assert (snap["hits"], snap["moved"], snap["overflow"]) == (3, 8, 5)


def test_reset_and_rows_under_a_global_cap():
    cache = make_cache(num_rows=10, capacity=4, global_cap_blocks=8)
    assert cache.num_rows == 3  # padding row + 8 // 4 requests
    a, b = cache.acquire_row(), cache.acquire_row()
    assert (a, b) == (1, 2) and cache.acquire_row() is None
    cache.plan(0, torch.tensor([a, b]), torch.tensor([[[0, 1]], [[2, 3]]]), PAGES.expand(2, -1))
    cache.release_row(a)  # abort
    sets = resident_sets(cache, 0)
    assert sets[(a, 0)] == set() and sets[(b, 0)] == {2, 3}
    assert cache.last_used[0, a].eq(-1).all()
    assert cache.acquire_row() == a


def test_forced_blocks():
    got = forced_blocks(torch.tensor([1, 10, 64, 65]), 2, 16, 4, 16)
    assert got.shape == (4, 2, 3)
    assert got[:, 0].tolist() == [[0, 0, -1], [0, 0, -1], [0, 3, -1], [0, 3, 4]]
