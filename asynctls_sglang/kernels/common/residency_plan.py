"""plan_residency: one decode step of the resident block cache, one launch (see
residency_plan_kernel and memory.residency.ResidentBlockCache, whose plan() calls it on a GPU).

Same tables, rules and counters as ResidentBlockCache._plan_torch, and the same plan up to the
order of its (batch row, KV head) groups: front-packed, count = the live entries, -1 past
them; each group's copies together, in need order, the groups in the order the programs took
their ranges (atomics: it varies from run to run on a GPU). Fixed grid (bs, Hk), no
workspace (the plan's scratch entry serves the programs' two shared counters), no host sync:
CUDA-graph capturable.
"""
from __future__ import annotations

import torch

from asynctls_sglang.kernels.common.launch import check, pow2
from asynctls_sglang.kernels.common.residency_plan_kernel import plan_residency_kernel


def plan_residency(blk2slot: torch.Tensor, slot2blk: torch.Tensor, last_used: torch.Tensor,
                   clock: torch.Tensor, counters: torch.Tensor, rows: torch.Tensor, need: torch.Tensor,
                   pages: torch.Tensor, host_blocks: torch.Tensor | None, src: torch.Tensor,
                   dst: torch.Tensor, head: torch.Tensor, count: torch.Tensor, *, max_miss: int,
                   selected: torch.Tensor | None = None, dense: torch.Tensor | None = None,
                   late: tuple[torch.Tensor, torch.Tensor] | None = None, advance_clock: bool = False) -> None:
    """Update one layer's tables for one step and write its plan.

    blk2slot [R, Hk, MB + 1] int32, slot2blk / last_used [R, Hk, C + 1] int64 (the layer's
    slices, updated in place; last column: scratch, stays -1); clock [1] int64 (the layer's
    clock, already advanced: this step's stamp; see advance_clock); counters [7] int64 (plans, needed, hits,
    misses, moved, overflow, evicted; added to); rows [bs] cache rows (0: padding);
    need [bs, Hk, N] request blocks (-1 unused, duplicates allowed; see selected); pages [bs, W] host block of
    each request block; host_blocks [bs] or None: blocks at or past it are ignored;
    src, dst, head [P + 1] int64 with P = bs * Hk * max_miss: the plan, front-packed (entry P:
    scratch, -1 before and after), count [1] int64: the live entries (read first: the previous
    plan's entries up to it are cleared).
    selected [bs, Hk, Ks] with dense [bs] bool: `need` is only the fixed head of every list, and
    the selection follows it (-1 for dense rows), as torch.cat([need, where(dense, -1, selected)])
    would make it; late = (window [bs, WN], counter [1] int64): counter += the selected blocks of
    rows not dense that are neither resident nor a window block, read before the plan (what
    OffloadRuntime.count_late counts). advance_clock: clock += 1 in the launch (else the caller
    advanced it). With all of these: one launch where there were five (the count, the where, the
    cat, the clock's add, the plan).
    Not checked at run time: rows distinct apart from 0, tables consistent (blk2slot and
    slot2blk inverse, last_used older than clock), admitted blocks < W.
    """
    bs, hk, nf = need.shape
    n = nf + (selected.shape[2] if selected is not None else 0)
    r, hk_t, mb1 = blk2slot.shape
    c = slot2blk.shape[2] - 1
    p = bs * hk * max_miss
    check(hk == hk_t, f"plan_residency: need has {hk} heads, the tables {hk_t}")
    check(blk2slot.dtype == torch.int32 and slot2blk.dtype == torch.int64 and last_used.dtype == torch.int64,
          "plan_residency: blk2slot int32, slot2blk and last_used int64")
    check(slot2blk.shape == last_used.shape == (r, hk, c + 1) and slot2blk.stride() == last_used.stride(),
          "plan_residency: slot2blk and last_used must be [R, Hk, C + 1] with the same strides")
    check(blk2slot.stride(2) == 1 and slot2blk.stride(2) == 1, "plan_residency: tables need a unit last stride")
    check(c >= 1 and mb1 >= 2 and max_miss >= 1, "plan_residency: capacity, max_blocks and max_miss must be >= 1")
    # duplicates are found by claiming blk2slot entries with 2^30 - j, above every slot
    check(c + n < 2 ** 30, "plan_residency: capacity + need width must stay below 2^30")
    check(tuple(rows.shape) == (bs,) and pages.dim() == 2 and pages.shape[0] == bs and pages.shape[1] >= 1,
          f"plan_residency: rows [{bs}] and pages [{bs}, W]")
    check(host_blocks is None or tuple(host_blocks.shape) == (bs,), f"plan_residency: host_blocks [{bs}]")
    check(clock.numel() == 1 and counters.dim() == 1 and counters.shape[0] == 7,
          "plan_residency: clock [1] and counters [7]")
    check(all(t.dtype == torch.int64 and tuple(t.shape) == (p + 1,) for t in (src, dst, head))
          and count.numel() == 1 and count.dtype == torch.int64,
          f"plan_residency: plan buffers [{p + 1}] int64 and count [1] int64")
    for t in (rows, need, pages) + (() if host_blocks is None else (host_blocks,)):
        check(not t.dtype.is_floating_point and t.dtype != torch.bool, "plan_residency: integer inputs")
    check(selected is None or (selected.dim() == 3 and selected.shape[:2] == (bs, hk) and selected.stride(2) == 1
                               and not selected.dtype.is_floating_point and dense is not None
                               and tuple(dense.shape) == (bs,)),
          f"plan_residency: selected [{bs}, {hk}, Ks] integer (unit last stride) with dense [{bs}]")
    check(late is None or (selected is not None and late[0].dim() == 2 and late[0].shape[0] == bs
                           and late[1].numel() == 1 and late[1].dtype == torch.int64),
          f"plan_residency: late = (window [{bs}, WN], counter [1] int64), with selected")
    if bs == 0 or hk == 0:
        return
    block_n = pow2(n, 16)
    block_c = pow2(c, 16)
    if selected is None:  # unused by the kernel (HAS_SEL=False)
        selected, dense = need, rows
    window, counter = late if late is not None else (rows.view(bs, 1), count)  # unused when HAS_LATE=False
    plan_residency_kernel[(bs, hk)](
        blk2slot, slot2blk, last_used, clock, counters, rows, need, pages,
        host_blocks if host_blocks is not None else rows, src, dst, head, count, selected, dense, window, counter,
        n, c, mb1 - 1, max_miss, pages.shape[1], p, bs * hk, hk, nf, window.shape[1],
        blk2slot.stride(0), blk2slot.stride(1), slot2blk.stride(0), slot2blk.stride(1), rows.stride(0),
        need.stride(0), need.stride(1), need.stride(2), pages.stride(0), pages.stride(1),
        host_blocks.stride(0) if host_blocks is not None else 0, counters.stride(0),
        selected.stride(0), selected.stride(1), window.stride(0),
        HAS_HOST=host_blocks is not None, HAS_SEL=selected is not need, HAS_LATE=late is not None,
        ADVANCE=advance_clock,
        BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_W=pow2(window.shape[1], 2),
        # NOTE: fixed, as are the pages' row stride and the sizes (do_not_specialize): a prefill's
        # seed plans with its own batch size and page-table width, and each new variant compiled
        # during serving (~1.5 s on the H200's host; six variants over batch sizes 1-8)
        BLOCK_X=1024,
        # H200, one program per (row, head), CUDA-graph replays: bs 64 x Hk 8, C 259, N 163,
        # M 64: 20 us with 8 warps, 23 with 4; C 100, N 43, M 16: 9.4 us with 4, 11 with 8
        num_warps=8 if max(block_n, block_c) >= 512 else 4)
