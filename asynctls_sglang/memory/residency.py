"""ResidentBlockCache: which logical blocks each request keeps on the GPU, and what must move.

Per (cache row, layer, KV head) a fixed set of C block slots. Tables (device tensors, one
slice per layer): blk2slot [rows, Hk, MB + 1] (request block -> slot, -1 absent), slot2blk
[rows, Hk, C + 1] (slot -> request block, -1 free), last_used [rows, Hk, C + 1] (the layer's
step clock when the slot's block was last needed, -1 free). The extra last column of each is a
scratch target for masked scatters. Blocks are per-request block indices (position // B); the
host block of request block j is pages[row, j] (SGLang's logical page id).

The rules, per row and KV head, for one plan() of `need` = pinned blocks, then selected blocks:
- hits (needed and resident) are stamped with the current step;
- misses are admitted in `need` order, at most max_miss per step; the rest are overflow;
- admitted misses take the free slots first, then the least recently needed slots (ties: lower
  slot); a slot holding a block needed at this step is never a victim, so pinned (sink/local)
  blocks, which are needed at every step, are never evicted;
- cache row 0 is the padding row: it never plans or moves anything.
Everything is fixed-shape device math: no .item(), nonzero, unique or boolean-mask indexing.
On a GPU plan() is one Triton kernel (kernels.common.residency_plan, one program per batch row
and KV head), the clock's increment included, instead of ~45 small torch ops (_plan_torch, the CPU
path and the kernel's reference): same tables, counters and copies (the plan's groups in
another order: see TransferPlan).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

COUNTERS = ("plans", "needed", "hits", "misses", "moved", "overflow", "evicted")
_BIG = torch.iinfo(torch.int64).max


class TransferPlan(NamedTuple):
    """Block copies host -> resident cache (capacity P = bs*Hk*M entries).

    Contract for consumers: copy the entries i < count[0] whose src, dst and head are not -1
    (copy_blocks does: it skips -1 entries), in any order: live entries have distinct
    destinations; entries at or past count are -1. Both paths front-pack (every entry before
    count is live) and keep each (batch row, head) group's copies together in need order; the
    torch path orders the groups by (row, head), the kernel path by which of its programs took
    its range first (it varies from run to run on a GPU).
    """

    src_block: torch.Tensor  # [P] int64 host (logical) block id
    dst_block: torch.Tensor  # [P] int64 resident block = cache_row * C + slot
    head: torch.Tensor  # [P] int64 KV head
    count: torch.Tensor  # [1] int64 live entries


class ResidentBlockCache:
    def __init__(self, *, num_layers: int, num_rows: int, kv_heads: int, capacity: int, max_blocks: int,
                 max_miss: int, block_size: int, device: torch.device | str,
                 global_cap_blocks: int | None = None, use_kernel: bool | None = None) -> None:
        """num_rows: cache rows wanted (row 0, the padding row, included); global_cap_blocks bounds
        rows * capacity (resident blocks per layer and KV head, all requests together).
        use_kernel: plan() with the Triton kernel (True), the torch ops (False), or the kernel
        exactly when the tables are on a CUDA device (None). True off the GPU needs
        TRITON_INTERPRET=1 before the kernels are imported (tests)."""
        if global_cap_blocks is not None:
            num_rows = min(num_rows, 1 + global_cap_blocks // capacity)
        if num_rows < 2:
            raise ValueError(f"ResidentBlockCache: room for {num_rows - 1} requests (capacity {capacity} "
                             f"blocks each, global cap {global_cap_blocks})")
        dev = torch.device(device)
        self.num_layers, self.num_rows, self.kv_heads = num_layers, num_rows, kv_heads
        self.capacity, self.max_blocks, self.max_miss, self.block_size = capacity, max_blocks, max_miss, block_size
        self.device = dev
        self.use_kernel = dev.type == "cuda" if use_kernel is None else use_kernel
        shape = (num_layers, num_rows, kv_heads)
        self.blk2slot = torch.full((*shape, max_blocks + 1), -1, dtype=torch.int32, device=dev)
        self.slot2blk = torch.full((*shape, capacity + 1), -1, dtype=torch.int64, device=dev)
        self.last_used = torch.full((*shape, capacity + 1), -1, dtype=torch.int64, device=dev)
        self.clock = torch.zeros(num_layers, dtype=torch.int64, device=dev)
        self.counters = torch.zeros(num_layers, len(COUNTERS), dtype=torch.int64, device=dev)
        self._plans: dict[tuple[int, int], TransferPlan] = {}
        self._free_rows = list(range(num_rows - 1, 0, -1))

    # rows (host side, at admission / release; outside the decode step) -----------------------
    def acquire_row(self) -> int | None:
        """A free cache row for a new request, or None when the global cap is reached."""
        return self._free_rows.pop() if self._free_rows else None

    def release_row(self, row: int) -> None:
        """Request end or abort: forget the row's blocks in every layer and free it."""
        self.reset(torch.tensor([row], device=self.device))
        self._free_rows.append(row)

    def reset(self, rows: torch.Tensor) -> None:
        """Clear rows [n] (device int64) in every layer. NOTE: copies still in flight into these
        rows' slots are harmless: the tables no longer point at them, and the copy stream runs
        in order, so a later owner's copies into the same slots land after them."""
        rows = rows.to(self.device)
        for table in (self.blk2slot, self.slot2blk, self.last_used):
            table.index_fill_(1, rows, -1)  # not `table[:, rows] = -1`: that copies a CPU scalar over

    # per step ------------------------------------------------------------------------------------
    def plan_buffers(self, layer: int, bs: int) -> TransferPlan:
        """The preallocated plan of `layer` for batch size bs (CUDA graphs: one per captured bs).
        NOTE: plan() of a layer rewrites these while the previous copies of that layer might still
        read them, unless the compute stream waited that layer's copy event first (it must)."""
        key = (layer, bs)
        if key not in self._plans:
            p = bs * self.kv_heads * self.max_miss
            full = lambda: torch.full((p + 1,), -1, dtype=torch.int64, device=self.device)  # noqa: E731
            self._plans[key] = TransferPlan(full(), full(), full(), torch.zeros(1, dtype=torch.int64,
                                                                                  device=self.device))
        return self._plans[key]

    def plan(self, layer: int, rows: torch.Tensor, need: torch.Tensor, pages: torch.Tensor,
             host_blocks: torch.Tensor | None = None, counters: torch.Tensor | None = None, *,
             selected: torch.Tensor | None = None, dense: torch.Tensor | None = None,
             late: tuple[torch.Tensor, torch.Tensor] | None = None) -> TransferPlan:
        """Update `layer`'s residency for one step and return the copies that make it true.

        rows [bs] int64 cache rows (distinct, except padding 0); need [bs, Hk, N] int64 request
        blocks, -1 unused, duplicates allowed (pinned blocks first, then the selection in rank
        order); pages [bs, >= max needed block + 1] host block of each request block;
        host_blocks [bs] (optional): blocks already written to the host; needed blocks at or past
        it (the open tail) are ignored; counters [layers, len(COUNTERS)] (optional): where to
        count this plan instead of self.counters (e.g. seeds after a prefill). The returned plan
        views preallocated buffers [P] (P = bs*Hk*max_miss; layout: see TransferPlan). Tables are
        updated at once: the copies must land before any read of the new slots (TransferEngine
        orders that).
        selected [bs, Hk, Ks] with dense [bs] bool: `need` is then only the pinned head of each
        list and the selection follows it, -1 for the dense rows (whose pinned head already lists
        all their blocks). late = (window [bs, WN] the rows' window blocks, -1 absent; counter [1]
        int64): counter += the selected blocks of rows not dense that attention could not read
        before this plan: not resident in this layer and not a window block
        (OffloadRuntime.count_late). On the kernel all of it is the one launch.
        """
        if self.use_kernel and need.shape[0] > 0:
            return self._plan_kernel(layer, rows, need, pages, host_blocks, counters, selected, dense, late)
        if selected is not None:
            if dense is None or tuple(dense.shape) != (need.shape[0],) or selected.shape[:2] != need.shape[:2]:
                raise ValueError(f"plan: selected [bs, Hk, Ks] with dense [bs], got {tuple(selected.shape)} "
                                 f"and {None if dense is None else tuple(dense.shape)} for need {tuple(need.shape)}")
            selected = torch.where(dense.view(-1, 1, 1), -1, selected)
            if late is not None:
                window, counter = late
                counter += self.count_unreadable(layer, rows, selected, window)
            need = torch.cat([need, selected], 2)
        self.clock[layer] += 1
        return self._plan_torch(layer, rows, need, pages, host_blocks, counters)

    def count_unreadable(self, layer: int, rows: torch.Tensor, blocks: torch.Tensor,
                         window: torch.Tensor) -> torch.Tensor:
        """How many of blocks [bs, Hk, K] (-1 unused) are neither resident in `layer` nor one of
        their row's window blocks [bs, WN] (-1 absent); a 0-dim tensor."""
        bs = blocks.shape[0]
        b2s = self.blk2slot[layer, rows]  # [bs, Hk, MB + 1]
        resident = torch.gather(b2s, 2, blocks.clamp(min=0, max=self.max_blocks)) >= 0
        win = window.view(bs, 1, 1, -1)
        in_window = ((blocks.unsqueeze(-1) == win) & (win >= 0)).any(-1)
        return ((blocks >= 0) & ~resident & ~in_window).sum()

    def _plan_kernel(self, layer: int, rows: torch.Tensor, need: torch.Tensor, pages: torch.Tensor,
                     host_blocks: torch.Tensor | None, counters: torch.Tensor | None, selected: torch.Tensor | None,
                     dense: torch.Tensor | None, late: tuple[torch.Tensor, torch.Tensor] | None) -> TransferPlan:
        """plan() in one Triton launch (grid bs x Hk), the clock's increment included."""
        from asynctls_sglang.kernels.common.residency_plan import plan_residency

        bs = need.shape[0]
        plan = self.plan_buffers(layer, bs)
        p = plan.src_block.shape[0] - 1
        plan_residency(self.blk2slot[layer], self.slot2blk[layer], self.last_used[layer],
                       self.clock[layer:layer + 1], (self.counters if counters is None else counters)[layer],
                       rows, need, pages, host_blocks, plan.src_block, plan.dst_block, plan.head, plan.count,
                       max_miss=self.max_miss, selected=selected, dense=dense, late=late, advance_clock=True)
        return TransferPlan(plan.src_block[:p], plan.dst_block[:p], plan.head[:p], plan.count)

    def _plan_torch(self, layer: int, rows: torch.Tensor, need: torch.Tensor, pages: torch.Tensor,
                    host_blocks: torch.Tensor | None, counters: torch.Tensor | None) -> TransferPlan:
        """plan() after the clock's increment, in torch ops (the CPU path and the kernel's
        reference); the plan front-packed."""
        bs, hk, n = need.shape
        c, mb = self.capacity, self.max_blocks
        dev = need.device
        now = self.clock[layer]
        valid = (need >= 0) & (rows != 0).view(bs, 1, 1)
        if host_blocks is not None:
            valid &= need < host_blocks.view(bs, 1, 1)
        valid &= ~_later_duplicates(torch.where(valid, need, _BIG))
        blk = torch.where(valid, need, mb)  # [bs, Hk, N]; mb = scratch column
        b2s = self.blk2slot[layer, rows]  # [bs, Hk, MB + 1]
        s2b = self.slot2blk[layer, rows]  # [bs, Hk, C + 1]
        used = self.last_used[layer, rows]  # [bs, Hk, C + 1]
        slot = torch.where(valid, torch.gather(b2s, 2, blk).long(), -1)
        hit = slot >= 0
        miss = valid & ~hit
        hit_slot = torch.where(hit, slot, c)
        used.scatter_(2, hit_slot, now.expand(hit_slot.shape))
        keep = torch.zeros(bs, hk, c + 1, dtype=torch.bool, device=dev)
        keep.scatter_(2, hit_slot, True)
        keep[..., c].fill_(True)
        order = torch.sort(torch.where(keep, _BIG, used)[..., :c], dim=2, stable=True).indices  # victims first
        evictable = (~keep[..., :c]).sum(2, keepdim=True)  # [bs, Hk, 1]
        rank = torch.cumsum(miss.long(), 2) - 1
        admit = miss & (rank < self.max_miss) & (rank < evictable)
        victim = torch.where(admit, torch.gather(order, 2, rank.clamp(0, c - 1)), c)  # [bs, Hk, N]
        old = torch.gather(s2b, 2, victim)
        evict = admit & (old >= 0)
        b2s.scatter_(2, torch.where(evict, old, mb), -1)
        b2s.scatter_(2, torch.where(admit, blk, mb), victim.to(b2s.dtype))
        s2b.scatter_(2, victim, torch.where(admit, blk, -1))
        used.scatter_(2, victim, now.expand(victim.shape))
        # scratch columns stay -1 (fill_: a kernel with the scalar as an argument, never a copy
        # from the host, so it is also safe while a CUDA graph is captured)
        b2s[..., mb].fill_(-1)
        s2b[..., c].fill_(-1)
        used[..., c].fill_(-1)
        # NOTE: rows are distinct apart from padding row 0, whose entries are all invalid, so
        # these row writes never race on a real row.
        self.blk2slot[layer, rows] = b2s
        self.slot2blk[layer, rows] = s2b
        self.last_used[layer, rows] = used
        self._count(self.counters if counters is None else counters, layer, valid, hit, miss, admit, evict)
        return self._pack(layer, rows, admit, blk, victim, pages)

    def _count(self, counters: torch.Tensor, layer: int, *masks: torch.Tensor) -> None:
        sums = torch.stack([m.sum() for m in masks])  # needed, hits, misses, moved, evicted
        row = counters[layer]
        row[0] += 1
        row[1:5] += sums[:4]
        row[5] += sums[2] - sums[3]  # overflow = misses not admitted
        row[6] += sums[4]

    def _pack(self, layer: int, rows: torch.Tensor, admit: torch.Tensor, blk: torch.Tensor,
              victim: torch.Tensor, pages: torch.Tensor) -> TransferPlan:
        bs, hk, n = admit.shape
        plan = self.plan_buffers(layer, bs)
        p = plan.src_block.shape[0] - 1
        flat = admit.reshape(-1)
        at = torch.where(flat, torch.cumsum(flat.long(), 0) - 1, p)  # [bs*Hk*N]; p = scratch
        host = torch.gather(pages.long(), 1, blk.clamp(max=pages.shape[1] - 1).view(bs, hk * n)).view(-1)
        dst = (rows.view(bs, 1, 1) * self.capacity + victim).reshape(-1)
        heads = torch.arange(hk, device=admit.device).view(1, hk, 1).expand(bs, hk, n).reshape(-1)
        for buf, val in ((plan.src_block, host), (plan.dst_block, dst), (plan.head, heads)):
            buf.fill_(-1)
            buf.scatter_(0, at, torch.where(flat, val, -1))
            # NOTE: not `buf[p] = -1`: assigning a Python scalar to a 0-dim view copies a CPU
            # scalar tensor to the GPU (a host sync, and an error under CUDA-graph capture)
            buf[p:].fill_(-1)
        plan.count.copy_(flat.sum().view(1))
        return TransferPlan(plan.src_block[:p], plan.dst_block[:p], plan.head[:p], plan.count)

    # reads for the attention ---------------------------------------------------------------------
    def token_rows(self, layer: int, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """positions [bs, Hk, K] (-1 unused) -> rows of the resident buffers [rows * C * B, Hk, D]
        holding them, -1 where unused or not resident."""
        bs, hk, _ = positions.shape
        b = self.block_size
        blk = torch.where(positions >= 0, positions // b, self.max_blocks).clamp(max=self.max_blocks)
        slot = torch.gather(self.blk2slot[layer, rows], 2, blk).long()
        out = (rows.view(bs, 1, 1) * self.capacity + slot) * b + positions % b
        return torch.where((slot >= 0) & (positions >= 0), out, -1)

    def snapshot(self) -> dict[str, int]:
        """Totals over layers (host sync: call off the decode path)."""
        totals = self.counters.sum(0).tolist()
        return dict(zip(COUNTERS, totals))


def _later_duplicates(values: torch.Tensor) -> torch.Tensor:
    """[..., N] -> bool: entries equal to an earlier entry of their row (_BIG never counts)."""
    s, order = torch.sort(values, dim=-1, stable=True)
    dup_sorted = torch.zeros_like(s, dtype=torch.bool)
    dup_sorted[..., 1:] = (s[..., 1:] == s[..., :-1]) & (s[..., 1:] != _BIG)
    return torch.zeros_like(dup_sorted).scatter_(-1, order, dup_sorted)


def forced_blocks(seq_lens: torch.Tensor, kv_heads: int, block_size: int, sink_tokens: int,
                  local_window: int) -> torch.Tensor:
    """[bs, Hk, S + L] request blocks holding sink or local-window tokens (S = ceil(sink / B),
    L = ceil(local / B) + 1), -1 where absent; duplicates possible (plan() drops them)."""
    b = block_size
    lens = seq_lens.long().view(-1, 1)
    n_sink, n_local = -(-sink_tokens // b), (-(-local_window // b) + 1 if local_window else 0)
    sink = torch.arange(n_sink, device=lens.device).view(1, -1).expand(lens.shape[0], -1)
    sink = torch.where(sink * b < lens, sink, -1)
    first = (lens - local_window).clamp(min=0) // b
    local = first + torch.arange(n_local, device=lens.device).view(1, -1)
    local = torch.where((local * b < lens) & (lens > 0), local, -1)
    return torch.cat([sink, local], 1).unsqueeze(1).expand(-1, kv_heads, -1)
