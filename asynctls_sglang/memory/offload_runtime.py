"""OffloadRuntime: the offloading engine as the attention backend drives it, one forward at a time.

Three places hold a request's K/V during decode (all indexed like SGLang's pools, [tokens, Hk, D]):
- the host tier: every complete block, written through after the forward that completed it;
- the device pool (SGLang's): the blocks being written, of which decode reads only the
  request's *window*: its sink blocks and the blocks of its local window (the open tail included),
  in place (until session 20 they were copied each layer into a window region of the resident
  buffers, one launch per layer);
- the resident block cache: C slots per (request, layer, KV head), filled from the host tier by the
  TransferEngine with the blocks the selection wants.
Attention reads the TransferEngine's buffers and the device pool through one slot table built from
the positions (buffer_table): window blocks from their device pool page (negative entries, the
attention's `pool`), other blocks from their resident slot, anything else is left out (counted as
dropped, never read as garbage).

One decode step, layer l (prefetch_depth 1):
  wait(l) -> write K/V -> scores -> wanted W = top-k_b (unmasked)
  -> attended blocks = top-k_b over blocks readable now (window or resident) -> tokens -> attention
  -> plan(need = local blocks, then W; dense rows: all their blocks) -> issue(l) on the copy stream.
The blocks wanted at step t are thus resident at step t+1 (temporal locality); a wanted block that
is not resident is replaced by the next-best readable one and counted late (the plan's misses).
prefetch_depth 0 plans and fetches before the masked top-k instead (never late, not hidden).
A prefill seeds the cache (seed): the last prompt token's selection, copied from the device pool.
Cache rows are SGLang's req_pool_indices (row 0 is SGLang's padding row too).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from asynctls_sglang import env
from asynctls_sglang.config import AsyncTLSConfig
from asynctls_sglang.memory.block_copy import copy_blocks
from asynctls_sglang.memory.host_tier import HostKVTier
from asynctls_sglang.memory.residency import COUNTERS, ResidentBlockCache, forced_blocks
from asynctls_sglang.memory.streams import PhaseClock
from asynctls_sglang.memory.transfer import TransferEngine
from asynctls_sglang.ops.select import step_positions


class DecodeStep(NamedTuple):
    """Per-forward tensors shared by every layer (built once, at the first layer)."""

    rows: torch.Tensor  # [bs] int64 cache rows (req_pool_indices)
    lens: torch.Tensor  # [bs] int64, the new token included
    pages: torch.Tensor  # [bs, MB] int64 host block of each request block
    host_done: torch.Tensor  # [bs] blocks already on the host: (lens - 1) // B
    window: torch.Tensor  # [bs, Wn] request blocks read from the device pool, -1 absent
    win_src: torch.Tensor  # [bs * Wn] device pool page of each window block, -1 absent
    need_fixed: torch.Tensor  # [bs, Hk, F] local blocks, then every block of a dense row
    dense: torch.Tensor  # [bs] bool: decodes over all its positions
    req: torch.Tensor  # [bs] arange: the attention's rows of buffer_table's table (built once per step)
    #: with decode_step(width=W): the attention's fixed positions [bs, Hk, W] (select.step_positions:
    #: a dense row's every position, else sink + local, then -1; the layers read their chosen ones in
    #: place) and the columns each row reads [bs]
    positions: torch.Tensor | None = None
    counts: torch.Tensor | None = None


def resident_row_bytes(cfg: AsyncTLSConfig, *, num_layers: int, kv_heads: int, head_dim: int,
                       v_head_dim: int | None, dtype_size: int, max_blocks: int) -> int:
    """Device bytes one cache row (one running request, or the padding row) costs in an
    OffloadRuntime: its C resident blocks in the K/V buffers of every layer, plus its residency
    tables. OffloadRuntime(...).device_nbytes == num_rows * this (tested)."""
    b, c = cfg.block_size, cfg.resident_capacity
    channels = head_dim + (v_head_dim or 0)
    buffers = c * b * kv_heads * channels * dtype_size
    tables = kv_heads * ((max_blocks + 1) * 4 + (c + 1) * 8 * 2)  # blk2slot int32, slot2blk/last_used int64
    return num_layers * (buffers + tables)


def plan_resident_rows(available_bytes: int, row_bytes: int, requested: int | None,
                       default_share: float = 0.5, most: int = 2048) -> tuple[int, int]:
    """(max running requests, bytes to charge) for the resident buffers out of available_bytes
    (the KV budget SGLang profiled). requested: --max-running-requests (per worker) or None: then
    as many requests as fit in default_share of the budget (at most `most`). Raises ConfigError
    when not even the requested (or one) request's buffers leave room for a KV pool."""
    from asynctls_sglang.config import ConfigError, flag_name

    gib = 2.0**30
    if requested is None:
        requested = max(1, min(most, int(available_bytes * default_share) // row_bytes - 1))
    charged = (requested + 1) * row_bytes  # + SGLang's padding row 0
    if charged >= available_bytes:
        raise ConfigError(
            f"asynctls offload: the resident block buffers need {charged / gib:.2f} GiB for "
            f"{requested} running requests ({row_bytes / gib:.3f} GiB each, padding row included) but "
            f"only {available_bytes / gib:.2f} GiB are left for the KV cache; lower --max-running-requests "
            f"or {flag_name('resident_blocks')}, or raise --mem-fraction-static")
    return requested, charged


class OffloadRuntime:
    def __init__(self, cfg: AsyncTLSConfig, *, num_layers: int, kv_heads: int, head_dim: int,
                 v_head_dim: int | None, dtype: torch.dtype, device: torch.device | str, num_rows: int,
                 max_blocks: int, host_blocks: int, timing: bool = False) -> None:
        """v_head_dim None: MLA (one latent buffer; V is its first channels). num_rows: SGLang's
        request rows + 1 (padding row 0); max_blocks: the context length in blocks; host_blocks:
        blocks of the host tier (raises HostMemoryError when they do not fit in host memory)."""
        self.cfg = cfg
        b = cfg.block_size
        self.block_size = b
        self.kv_heads = kv_heads
        self.n_sink = -(-cfg.sink_tokens // b)
        self.host = HostKVTier(num_layers=num_layers, num_blocks=host_blocks, block_size=b, kv_heads=kv_heads,
                               head_dim=head_dim, v_head_dim=v_head_dim, dtype=dtype, device=device)
        # the table reads and plans as Triton kernels: on a GPU, where their torch form is ~40 small
        # launches per layer, and under ASYNCTLS_OPS=triton on the CPU (Triton's interpreter: the
        # GPU's code path in the CPU engine's tests)
        kernels = torch.device(device).type == "cuda" or env.ops_choice() == "triton"
        self.cache = ResidentBlockCache(num_layers=num_layers, num_rows=num_rows, kv_heads=kv_heads,
                                        capacity=cfg.resident_capacity, max_blocks=max_blocks,
                                        max_miss=cfg.max_miss_blocks_per_step, block_size=b, device=device,
                                        use_kernel=kernels)
        self.engine = TransferEngine(self.host, self.cache, prefetch_depth=cfg.prefetch_depth, timing=timing,
                                     defer=env.defer_copies() and self.cache.device.type != "cuda",
                                     copy_programs=cfg.copy_programs)
        dev = self.cache.device
        self.seed_counters = torch.zeros_like(self.cache.counters)
        self.dropped = torch.zeros((), dtype=torch.int64, device=dev)  # attended positions not readable
        self.late = torch.zeros((), dtype=torch.int64, device=dev)  # wanted blocks not readable in time
        self.decode_steps = 0
        self.written_blocks = torch.zeros((), dtype=torch.int64, device=dev)
        self.loaded_blocks = 0  # prefix blocks mapped back to the device for a prefill
        #: {"host_pool_tokens", "device_pool_tokens"}: the allocator's sizes (set by its builder)
        self.pool_tokens: dict[str, int] = {}
        self.demoted_blocks = 0  # blocks whose device page was given back after a prefill
        self._pending_release: list[int] = []
        self._join_side_streams = False  # device pages were given back: order their reuse
        #: cache row -> logical pages its prefills computed or loaded back that a window kept mapped;
        #: its next prefill forward (the next chunk) reconsiders them, so a chunked prefill does not
        #: leave one window's pages mapped per chunk (docs/offload.md, "Device room")
        self._spared: dict[int, torch.Tensor] = {}
        #: cache row -> the pages its window kept at its last prefill forward since the last decode
        #: step (its first decode step reads them from the device); cleared when a decode step begins
        self._recent_windows: dict[int, torch.Tensor] = {}
        #: logical page -> device page (None: SGLang's page ids are device pages, host blocks alike)
        self.device_page: torch.Tensor | None = None
        #: the per-step tables and the table reads (decode_step, readable_pair, count_late, buffer_table)
        #: as Triton kernels (see `kernels` above; tests also set it under the interpreter)
        self.kernels = kernels
        #: time of the eager prefill work (adapter.offload: load_back, seed, write_through, demote, and
        #: the whole prefill forward), in the metrics as prefill_phases
        self.clock = PhaseClock(self.cache.device)

    @property
    def device_nbytes(self) -> int:
        """Device bytes of the resident buffers and tables (charged against the KV budget)."""
        c = self.cache
        tables = sum(t.numel() * t.element_size() for t in (c.blk2slot, c.slot2blk, c.last_used))
        return self.engine.nbytes + tables

    # rows ------------------------------------------------------------------------------------------
    def release_later(self, row: int) -> None:
        """A request gave its row back (finish, abort, retraction): clear it at the next forward.
        NOTE: deferred so that the clearing runs on the forward stream, after any forward that
        may still use the row (SGLang's overlap scheduler frees rows while a forward runs)."""
        if row > 0:
            self._pending_release.append(row)
            self._spared.pop(row, None)
            self._recent_windows.pop(row, None)

    def begin_forward(self, fresh_rows: torch.Tensor | None = None) -> None:
        """First thing in every forward (eager, before the layers). fresh_rows: rows starting a
        prefill, which must not inherit anything."""
        self.engine.begin_step()
        if self._join_side_streams:
            # NOTE: pages unmapped at the end of the last prefill may be rewritten from now on: the
            # write-through and the seeds that read them (side streams) must have finished.
            self.engine.before_replay()
            self._join_side_streams = False
        fresh = fresh_rows is not None and fresh_rows.numel() > 0
        if self._pending_release or fresh:
            # NOTE: the last decode step's plans ran on the copy stream (prefetch) and may still be
            # rewriting these rows' tables (eager decode; a graph replay joins it before it ends)
            self.engine.join()
        if self._pending_release:
            self.cache.reset(torch.tensor(self._pending_release, dtype=torch.int64, device=self.cache.device))
            self._pending_release.clear()
        if fresh:
            self.cache.reset(fresh_rows.long())
        if fresh_rows is None:  # a decode step: the requests decoding are the allocator's last_decode
            self._recent_windows.clear()

    # decode ----------------------------------------------------------------------------------------
    def decode_step(self, req_to_token: torch.Tensor, rows: torch.Tensor, lens: torch.Tensor,
                    max_blocks: int, dense_blocks: int, ops, width: int = 0) -> DecodeStep:
        """The per-forward tensors (fixed shapes for fixed max_blocks, dense_blocks; no host sync);
        width > 0: the attention's positions too (DecodeStep.positions / counts)."""
        cfg, b, hk = self.cfg, self.block_size, self.kv_heads
        if self.kernels:  # one launch for the ~65 small torch ops below and in step_positions (same tables, tested)
            from asynctls_sglang.kernels.common.offload_tables import decode_step_tables

            t = decode_step_tables(req_to_token, rows, lens, self.device_page, max_blocks=max_blocks,
                                   dense_blocks=dense_blocks, block_size=b, sink_tokens=cfg.sink_tokens,
                                   local_window=cfg.local_window, dense_len=cfg.dense_len, width=width,
                                   token_budget=cfg.token_budget)
            return DecodeStep(t["rows"], t["lens"], t["pages"], t["host_done"], t["window"], t["win_src"],
                              t["need_fixed"].unsqueeze(1).expand(-1, hk, -1),
                              t["dense"], t["req"],
                              t["positions"].unsqueeze(1).expand(-1, hk, -1) if width else None,
                              t["counts"] if width else None)
        # NOTE: copies, not views: the step's plans run on the copy stream and may run after SGLang
        # has written the next batch into the buffers behind req_pool_indices / seq_lens (eager
        # decode; found with ASYNCTLS_DEFER_COPIES: a late plan filled the next request's row)
        rows, lens = rows.to(torch.int64, copy=True), lens.to(torch.int64, copy=True)
        bs = rows.shape[0]
        pages = ops.block_table(req_to_token, rows, max_blocks, b)
        fixed = forced_blocks(lens, 1, b, cfg.sink_tokens, cfg.local_window)[:, 0]  # [bs, Wn]
        window = fixed
        # NOTE: a window block is one device page (page size = block size): its first slot's page
        first = req_to_token[rows.view(bs, 1), (window.clamp(min=0) * b).clamp(max=req_to_token.shape[1] - 1)]
        win_src = torch.where(window >= 0, self.device_slots(first) // b, -1).reshape(-1)
        dense = lens <= cfg.dense_len
        all_blocks = torch.arange(dense_blocks, device=lens.device).view(1, -1).expand(bs, -1)
        dense_need = torch.where(dense.view(bs, 1), all_blocks, -1)
        need_fixed = torch.cat([fixed[:, self.n_sink:], dense_need], 1).unsqueeze(1).expand(-1, hk, -1)
        sp = step_positions(lens, dense, hk, width, cfg, ops) if width else None
        return DecodeStep(rows, lens, pages, (lens - 1) // b, window, win_src, need_fixed, dense,
                          torch.arange(bs, device=lens.device), sp.positions if sp else None, sp.counts if sp else None)

    def device_slots(self, slots: torch.Tensor) -> torch.Tensor:
        """SGLang slot ids -> device pool slots (identity unless logical ids are in use; a slot
        with no device page maps to 0, a slot never read)."""
        slots = slots.long()
        if self.device_page is None:
            return slots
        b = self.block_size
        page = self.device_page[slots // b]
        return torch.where(page >= 0, page * b + slots % b, 0)

    def readable_pair(self, layer: int, step: DecodeStep, scores: torch.Tensor) -> torch.Tensor:
        """The block scores [bs, Hk, N] -> [2, bs, Hk, N]: [0] the scores, [1] the same with -inf
        where attention cannot read the block now (not resident in this layer and not in the row's
        window). The top-k_b of [0] is what the selection wants (prefetched for the next step), of
        [1] what attention reads, the best readable blocks: one top-k launch ranks both. One kernel
        on a GPU (self.kernels), the torch code below off it. scores may be [S, bs, Hk, N] partial
        rows that add up to the scores (ops.score_blocks(partials=True)): added here, in order."""
        if self.kernels:
            from asynctls_sglang.kernels.common.offload_tables import readable_pair

            return readable_pair(scores, self.cache.blk2slot[layer], step.rows, step.window)
        if scores.dim() == 4:
            parts, scores = scores, scores[0]
            for part in parts[1:]:
                scores = scores + part
        return torch.stack([scores, scores.masked_fill(~self._readable(layer, step, scores.shape[2]), float("-inf"))])

    def select_readable_pair(self, layer: int, step: DecodeStep, scores: torch.Tensor, k: int, ops) -> torch.Tensor:
        """ops.select_blocks(readable_pair(...), k): [2, bs, Hk, k], the wanted blocks and the best
        readable ones. On the kernels one launch builds the pair in registers and ranks it (H200,
        GLM-4.7-Flash 6 x 96k: readable_pair was a 2.1 us launch per layer before the top-k)."""
        if self.kernels:
            from asynctls_sglang.kernels.common.offload_tables import fits_readable_pair_topk, readable_pair_topk

            if fits_readable_pair_topk(scores.shape[-1], k) and env.topk_method() in ("auto", "resident"):
                return readable_pair_topk(scores, k, self.cache.blk2slot[layer], step.rows, step.window)
        return ops.select_blocks(self.readable_pair(layer, step, scores), k)

    def count_late(self, layer: int, step: DecodeStep, wanted: torch.Tensor) -> None:
        """Counts the wanted blocks [bs, Hk, k_b] (-1 unused) of sparse rows that attention could not
        read at this layer (late). Runs where the tables are those attention read: after the fetch
        at depth 0, before the plan (on the copy stream) at depth 1."""
        if self.kernels:
            from asynctls_sglang.kernels.common.offload_tables import count_late

            count_late(wanted, self.cache.blk2slot[layer], step.rows, step.window, step.dense, self.late)
            return
        self.late += self.cache.count_unreadable(layer, step.rows, torch.where(step.dense.view(-1, 1, 1), -1, wanted),
                                                 step.window)

    def _readable(self, layer: int, step: DecodeStep, n: int) -> torch.Tensor:
        """[bs, Hk, n] bool: block b of the row and head is resident in this layer or one of the
        row's window blocks."""
        bs = step.rows.shape[0]
        table = self.cache.blk2slot[layer, step.rows]
        blk = torch.arange(n, device=table.device)
        resident = table[:, :, blk.clamp(max=table.shape[2] - 1)] >= 0
        window = step.window.view(bs, 1, 1, -1)
        in_window = ((blk.view(1, 1, n, 1) == window) & (window >= 0)).any(-1)
        return resident | in_window

    def prefetch(self, layer: int, step: DecodeStep, wanted: torch.Tensor) -> None:
        """Plan `need` (local blocks, the dense rows' blocks, then the wanted blocks in rank order)
        and start the copies (depth 1: the plan too runs on the copy stream, off the compute
        stream's path; the next read of this layer's tables waits for it) or plan, copy and wait
        (depth 0)."""
        def plan(late=None):
            return self.cache.plan(layer, step.rows, step.need_fixed, step.pages, host_blocks=step.host_done,
                                   selected=wanted, dense=step.dense, late=late)

        if self.cfg.prefetch_depth == 0:
            self.engine.fetch_now(layer, plan())
            self.count_late(layer, step, wanted)
            return

        def count_and_plan():
            # NOTE: on the copy stream; the late blocks are counted before this layer's plan changes
            # its tables: they are still the ones this layer's attention read (depth 1: this runs
            # after the attention). On a GPU the count, the need list and the plan are one launch.
            return plan(late=(step.window, self.late))

        self.engine.issue(layer, count_and_plan, reads=(wanted, step.need_fixed, step.dense, step.rows, step.pages,
                                                        step.host_done, step.window))

    def buffer_table(self, layer: int, step: DecodeStep, positions: torch.Tensor, chosen: torch.Tensor | None = None,
                     start: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """positions [bs, Hk, K] (-1 unused) -> (table [bs, Hk*K] int32, req rows [bs], positions
        [bs, Hk, K]) in the contract of sparse_decode_attention over the resident buffers with the
        device pool as its `pool`: head h's k-th position becomes column h*K + k of row i, whose
        entry is its buffer row, or, for a window block's position, -(pool row) - 1: the window
        is read in place from the device pool (no copy into the resident buffers). Positions
        that are neither in the window nor resident become -1 (left out) and are counted.

        chosen [bs, Hk, Kc]: the layer's chosen positions, read in place of columns [start, start +
        Kc) of the rows that are not dense (select.StepPositions.put's rule, without writing them
        into positions first: one launch fewer per layer)."""
        bs, hk, k = positions.shape
        req = step.req
        if self.kernels:
            from asynctls_sglang.kernels.common.offload_tables import buffer_table

            table, columns = buffer_table(positions, self.cache.blk2slot[layer], step.rows, step.window, step.win_src,
                                          self.dropped, block_size=self.block_size, capacity=self.cache.capacity,
                                          chosen=chosen, start=start, dense=step.dense)
            return table, req, columns
        if chosen is not None:
            cols = slice(start, start + chosen.shape[2])
            positions = positions.clone()
            positions[:, :, cols] = torch.where(step.dense.view(-1, 1, 1), positions[:, :, cols], chosen)
        b, wn = self.block_size, step.window.shape[1]
        win = step.window.view(bs, 1, 1, wn)
        match = (positions.div(b, rounding_mode="floor").unsqueeze(-1) == win) & (win >= 0)
        in_window = match.any(-1) & (positions >= 0)
        w = match.to(torch.int32).argmax(-1)
        page = step.win_src.view(bs, 1, 1, wn).expand(-1, hk, k, -1).gather(3, w.long().unsqueeze(-1)).squeeze(-1)
        win_rows = -(page * b + positions.remainder(b)) - 1
        rows = torch.where(in_window, win_rows, self.cache.token_rows(layer, step.rows, positions))
        ok = (positions >= 0) & (in_window | (rows >= 0))
        self.dropped += ((positions >= 0) & ~ok).sum()
        column = torch.arange(hk * k, device=positions.device).view(1, hk, k)
        table = torch.where(ok, rows, 0).reshape(bs, hk * k).to(torch.int32)
        return table, req, torch.where(ok, column, -1)

    def logical_keys(self, layer: int, k_pool: torch.Tensor) -> "LogicalKeys":
        return LogicalKeys(self, layer, k_pool)

    def value_buffer(self, layer: int, v_head_dim: int) -> torch.Tensor:
        return self.engine.k[layer][..., :v_head_dim] if self.engine.v is None else self.engine.v[layer]

    def write_through_decode(self, step: DecodeStep, req_to_token: torch.Tensor,
                             k_pool: Sequence[torch.Tensor], v_pool: Sequence[torch.Tensor] | None) -> None:
        """After the last layer: the block each row completed in this step (lens % B == 0) goes to
        the host, every layer. Fixed bs entries, -1 for rows that completed nothing."""
        b = self.block_size
        done = (step.lens % b == 0) & (step.rows != 0)
        slot = req_to_token[step.rows, ((step.lens // b - 1).clamp(min=0) * b)].long()
        src = torch.where(done, self.device_slots(slot) // b, -1)
        dst = torch.where(done, slot // b, -1)
        self._write(k_pool, v_pool, src, dst, torch.full((1,), src.shape[0], dtype=torch.int64, device=src.device))
        self.written_blocks += done.sum()

    # prefill ---------------------------------------------------------------------------------------
    def write_through_extend(self, req_to_token: torch.Tensor, rows: torch.Tensor, prefix_lens: Sequence[int],
                             seq_lens: Sequence[int], k_pool: Sequence[torch.Tensor],
                             v_pool: Sequence[torch.Tensor] | None) -> None:
        """After the last layer of a prefill: blocks [prefix // B, seq // B) of each request (the
        ones this forward completed) go to the host. Eager (host lengths)."""
        b = self.block_size
        which, blocks = [], []
        for i, (p, s) in enumerate(zip(prefix_lens, seq_lens)):
            n = s // b - p // b
            which += [i] * n
            blocks += range(p // b, s // b)
        if not blocks:
            return
        dev = req_to_token.device
        which_t = torch.tensor(which, dtype=torch.int64, device=dev)
        blk = torch.tensor(blocks, dtype=torch.int64, device=dev)
        slot = req_to_token[rows.long()[which_t], blk * b].long()
        count = torch.full((1,), len(blocks), dtype=torch.int64, device=dev)
        self._write(k_pool, v_pool, self.device_slots(slot) // b, slot // b, count)
        self.written_blocks += len(blocks)

    def _write(self, k_pool, v_pool, src, dst, count) -> None:
        self.host.write_through(k_pool, v_pool if self.host.v is not None else None, src, dst, count)

    def seed(self, layer: int, q_last: torch.Tensor, index, req_to_token: torch.Tensor, rows: torch.Tensor,
             lens: torch.Tensor, max_blocks: int, k_pool: Sequence[torch.Tensor],
             v_pool: Sequence[torch.Tensor] | None, ops) -> None:
        """After a prefill wrote layer `layer`: make resident, from the device pool, the blocks the
        first decode step will want (the selection of the last prompt token; dense rows: all).
        All of them, in as many rounds of at most max_miss_blocks_per_step copies per request and
        head as that takes: a seed capped at one step's copies left most of a new request's
        selection late for its first decode steps, the ones that answer (H200, RULER 8k: offload
        0.247 vs 0.279 without, niah_single_2 0.30 vs 0.58)."""
        from asynctls_sglang.ops.select import block_scores

        cfg, b = self.cfg, self.block_size
        rows, lens = rows.long(), lens.long()
        step = self.decode_step(req_to_token, rows, lens + 1, max_blocks, -(-cfg.dense_len // b), ops)
        wanted = ops.select_blocks(block_scores(q_last, index, lens, cfg, ops, step.pages), cfg.selected_blocks)
        need = torch.cat([step.need_fixed, torch.where(step.dense.view(-1, 1, 1), -1, wanted)], 2)
        dev_pages = self.device_slots(step.pages * b) // b
        for _ in range(-(-need.shape[2] // self.cache.max_miss)):  # fixed count: no host sync
            self.engine.wait(layer)  # NOTE: plan() rewrites this layer's plan buffers, which an earlier copy may read
            plan = self.cache.plan(layer, rows, need, dev_pages, host_blocks=lens // b, counters=self.seed_counters)
            self.engine.issue(layer, plan, source=(k_pool, v_pool if self.host.v is not None else None))

    # logical ids (device_page set): prefix load-back and demotion around a prefill --------------
    def _request_blocks(self, req_to_token: torch.Tensor, rows: torch.Tensor,
                        ranges: Sequence[tuple[int, int, int]]) -> torch.Tensor:
        """Logical pages of blocks [lo, hi) of request i, for each (i, lo, hi) -> [n] int64 device."""
        b = self.block_size
        which, blocks = [], []
        for i, lo, hi in ranges:
            which += [i] * max(0, hi - lo)
            blocks += range(lo, hi)
        dev = req_to_token.device
        if not blocks:
            return torch.empty(0, dtype=torch.int64, device=dev)
        which_t = torch.tensor(which, dtype=torch.int64, device=dev)
        blk = torch.tensor(blocks, dtype=torch.int64, device=dev)
        return req_to_token[rows.long()[which_t], blk * b].long() // b

    def load_back(self, allocator, req_to_token: torch.Tensor, rows: torch.Tensor, prefix_lens: Sequence[int],
                  k_pool: Sequence[torch.Tensor], v_pool: Sequence[torch.Tensor] | None) -> torch.Tensor:
        """Before a prefill: map the complete prefix blocks that are on the host only back to device
        pages and copy them there (every layer), so the dense prefill attention reads them.
        Returns the logical pages loaded. Eager (a prefill; reads device values on the host)."""
        b = self.block_size
        pages = torch.unique(self._request_blocks(req_to_token, rows, [(i, 0, p // b) for i, p in enumerate(prefix_lens)]))
        pages = pages[self.device_page[pages] < 0]
        if pages.numel():
            dev = allocator.map_pages(pages)
            count = torch.full((1,), pages.numel(), dtype=torch.int64, device=pages.device)
            self.host.wait_written()  # NOTE: a block is read from the host only after it landed there
            for layer in range(self.host.num_layers):
                pair = (self.host.v[layer], v_pool[layer]) if self.host.v is not None and v_pool is not None else None
                copy_blocks(self.host.k[layer], k_pool[layer], pages, dev, count, b, pair=pair)
            self.loaded_blocks += pages.numel()
        return pages

    def demote(self, allocator, req_to_token: torch.Tensor, rows: torch.Tensor, prefix_lens: Sequence[int],
               seq_lens: Sequence[int], loaded: torch.Tensor) -> None:
        """After a prefill (its blocks written through, its seeds issued): the blocks it computed or
        loaded back keep only their host copy, and so do the pages the windows of the same
        requests' earlier prefill forwards kept (a chunked prefill's previous chunk ends), except
        the pages in a window: the batch's requests' (sink blocks and the local window of the first
        decode step), those of the prefills since the last decode step, and the last decode batch's.
        NOTE: every page a live request reads from the device is in some request's window and was
        never unmapped (window pages are mapped when allocated and only unmapped by SGLang's free);
        pages loaded here were host-only before; a page a request computed (or loaded) itself can
        be in another live request's window only when that one shares its prefix through the radix
        tree, and then it is in one of the windows kept."""
        cfg, b = self.cfg, self.block_size
        own = [int(r) for r in rows.tolist()]
        computed = self._request_blocks(req_to_token, rows, [(i, p // b, s // b)
                                                              for i, (p, s) in enumerate(zip(prefix_lens, seq_lens))])
        earlier = [self._spared.pop(r) for r in own if r in self._spared]
        sink = [(i, 0, min(self.n_sink, -(-s // b))) for i, s in enumerate(seq_lens)]
        local = [(i, max(0, s + 1 - cfg.local_window) // b, -(-s // b)) for i, s in enumerate(seq_lens)]
        windows = [self._request_blocks(req_to_token, rows, [sink[i], local[i]]) for i in range(len(own))]
        keep = [*windows, *(w for r, w in self._recent_windows.items() if r not in own)]
        last = getattr(allocator, "last_decode", None)
        if last is not None and last[1]:
            keep.append(self._request_blocks(last[0], torch.tensor(last[1], dtype=torch.int64, device=req_to_token.device),
                                             self._decode_windows(last[2])))
        candidates = torch.unique(torch.cat([computed, loaded, *earlier]))
        self._unmap(allocator, candidates, torch.cat(keep))
        # what a window kept of this batch's own pages: reconsidered at each request's next prefill
        left = candidates[self.device_page[candidates] >= 0]
        for i, r in enumerate(own):
            self._recent_windows[r] = windows[i]
            mine = self._request_blocks(req_to_token, rows, [(i, 0, -(-seq_lens[i] // b))])
            mine = torch.unique(mine[torch.isin(mine, left)])
            if mine.numel():
                self._spared[r] = mine

    def _decode_windows(self, lens: Sequence[int]) -> list[tuple[int, int, int]]:
        """(i, lo, hi) block ranges a decode step of request i (committed length n) may read from
        the device: its sink blocks and its local window, one block of margin on the left."""
        b = self.block_size
        out = []
        for i, n in enumerate(lens):
            first_local = max(0, n + 1 - self.cfg.local_window) // b - 1
            out += [(i, 0, min(self.n_sink, -(-n // b))), (i, max(first_local, 0), -(-(n + 1) // b))]
        return out

    def reclaim(self, allocator, req_to_token: torch.Tensor, rows: Sequence[int], lens: Sequence[int]) -> int:
        """A decode step finds the device pool short: give back the device pages of the decoding
        requests' complete blocks that left every window, per request blocks [sink blocks, first
        local-window block of the next step - 1); pages in some request's window (shared
        prefixes) stay. rows, lens: the decode batch's cache rows and committed lengths (host).
        Returns the pages freed. Eager, syncs (reads req_to_token): called only when short.
        NOTE: decode reads only windows from the device, and complete blocks are on the host."""
        keep = self._decode_windows(lens)  # per request: its sink range, then its local window
        drop = [(i, self.n_sink, keep[2 * i + 1][1]) for i in range(len(lens))]
        rows_t = torch.tensor(list(rows), dtype=torch.int64, device=req_to_token.device)
        candidates = torch.unique(self._request_blocks(req_to_token, rows_t, drop))
        if not candidates.numel():
            return 0
        return self._unmap(allocator, candidates, self._request_blocks(req_to_token, rows_t, keep))

    def _unmap(self, allocator, candidates: torch.Tensor, keep: torch.Tensor) -> int:
        """Give back the device pages of the logical pages in candidates (distinct) that are not in
        keep and have one. NOTE: the next forward joins the side streams before its writes reuse
        them (a write-through or seed may still read them)."""
        pages = candidates[~torch.isin(candidates, keep) & (self.device_page[candidates] >= 0)]
        if pages.numel():
            allocator.unmap_pages(pages)
            self.demoted_blocks += pages.numel()
            self._join_side_streams = True
        return pages.numel()

    # metrics ---------------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Offload metrics (host sync: call off the decode path)."""
        snap = self.engine.snapshot()
        seeds = dict(zip(COUNTERS, self.seed_counters.sum(0).tolist()))
        in_use = (self.cache.slot2blk[..., :-1] >= 0).any(-1).any(-1).any(0)  # [rows]
        for row in self._pending_release:
            in_use[row] = False
        snap.update({
            "blocks_late": int(self.late),
            "decode_steps": self.decode_steps,
            "seed_blocks_moved": seeds["moved"],
            "seed_bytes_moved": seeds["moved"] * self.engine.entry_bytes,
            "tokens_dropped": int(self.dropped),
            "blocks_written_through": int(self.written_blocks),
            "rows_in_use": int(in_use.sum()),
            "prefix_blocks_loaded": self.loaded_blocks,
            "blocks_demoted": self.demoted_blocks,
            "host_pool_bytes": self.host.nbytes,
            "resident_bytes": self.engine.nbytes,
            "resident_capacity_blocks": self.cache.capacity,
            # the step tables, table reads and plans: Triton kernels (a GPU, or ASYNCTLS_OPS=triton) or torch
            "table_ops": "triton" if self.kernels else "torch",
            **self.pool_tokens,
            "prefill_phases": self.clock.snapshot(),
        })
        return snap


class LogicalKeys:
    """Keys by logical slot for the index's re-quantisation (``keys[start:stop]``): the device page
    where the slot has one, else the host tier (only complete blocks are on the host; slots with
    neither belong to no live block, and their index keys are never read). Eager, rare
    (calibration): the whole logical range of every layer, so the host part moves as one
    contiguous copy per range (PCIe bandwidth), never a gather on the CPU."""

    def __init__(self, runtime: OffloadRuntime, layer: int, k_pool: torch.Tensor) -> None:
        self.runtime, self.layer, self.k_pool, self.device = runtime, layer, k_pool, k_pool.device

    def __getitem__(self, span: slice) -> torch.Tensor:
        if not isinstance(span, slice) or span.step not in (None, 1):
            raise TypeError("LogicalKeys reads contiguous slot ranges (keys[start:stop])")
        rt = self.runtime
        host = rt.host.k[self.layer]
        start, stop, _ = span.indices(host.shape[0])
        loc = torch.arange(start, stop, device=self.device)
        if rt.device_page is None:
            return self.k_pool[loc]
        rt.host.wait_written()  # NOTE: a block is read from the host only after its write-through landed
        from_host = host[start:stop].to(self.device, non_blocking=True)
        mapped = rt.device_page[loc // rt.block_size] >= 0
        return torch.where(mapped.view(-1, 1, 1), self.k_pool[rt.device_slots(loc)], from_host)
