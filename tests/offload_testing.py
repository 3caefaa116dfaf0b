"""Shared helpers of the offload tests: bit views, random paged requests, table invariants."""
from __future__ import annotations

import torch

from asynctls_sglang.memory.residency import ResidentBlockCache, TransferPlan


def bits(t: torch.Tensor) -> torch.Tensor:
    """Integer view of a float tensor, so NaN poison and payloads compare exactly."""
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def plan_entries(cache: ResidentBlockCache, plan: TransferPlan) -> set[tuple[int, int, int, int]]:
    """{(cache row, head, host block, slot)} of a plan's live entries; checks the packing (both
    paths front-pack: every entry before count is live, every one after it -1)."""
    n = int(plan.count)
    src, dst, head = plan.src_block.tolist(), plan.dst_block.tolist(), plan.head.tolist()
    live = list(zip(src[:n], dst[:n], head[:n]))
    assert all(x >= 0 for e in live for x in e), "live entries must be complete"
    assert all(x == -1 for x in src[n:] + dst[n:] + head[n:]), "entries past count must be -1"
    c = cache.capacity
    return {(d // c, h, s, d % c) for s, d, h in live}


def resident_sets(cache: ResidentBlockCache, layer: int) -> dict[tuple[int, int], set[int]]:
    """{(row, head): resident request blocks}, after checking blk2slot and slot2blk are inverses."""
    out = {}
    b2s, s2b = cache.blk2slot[layer].tolist(), cache.slot2blk[layer].tolist()
    for r in range(cache.num_rows):
        for h in range(cache.kv_heads):
            by_slot = {s: b for s, b in enumerate(s2b[r][h][:cache.capacity]) if b >= 0}
            by_blk = {b: s for b, s in enumerate(b2s[r][h][:cache.max_blocks]) if s >= 0}
            assert {b: s for s, b in by_slot.items()} == by_blk, f"row {r} head {h}: tables disagree"
            assert b2s[r][h][cache.max_blocks] == -1 and s2b[r][h][cache.capacity] == -1, "scratch written"
            out[(r, h)] = set(by_blk)
    return out
