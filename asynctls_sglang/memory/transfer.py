"""TransferEngine: the resident block cache's device buffers and the copies that fill them.

Per layer the engine owns resident K/V buffers [rows * C * B, Hk, D] (MLA: one latent buffer),
laid out like SGLang's pools so resident block r*C + s holds rows (r*C + s)*B .. +B; a plan entry
(host block h, resident block d, head j) copies head j of host rows h*B .. +B there.

Streams (GPU; on the CPU every call runs inline, in order):
  compute stream  ... attention(l) -> issue(l) ......................... wait(l) -> attention(l) ...
  h2d_copy stream                 fork -> plan(l) -> wait host writes -> gather(l) -> record done[l]
The compute stream waits only done[l], right before it reads layer l's resident blocks (and
layer l's residency tables, which plan(l) rewrites). A decode step's plan runs on the copy
stream (issue with a callable), off the compute stream's critical path; the seeds after a
prefill pass a plan made on the compute stream.
"""
from __future__ import annotations

import collections
from typing import Callable, Sequence

import torch

from asynctls_sglang.memory.block_copy import copy_blocks
from asynctls_sglang.memory.host_tier import HostKVTier
from asynctls_sglang.memory.residency import ResidentBlockCache, TransferPlan
from asynctls_sglang.memory.streams import LayerEvents, SideStream


class TransferEngine:
    def __init__(self, host: HostKVTier, cache: ResidentBlockCache, *, prefetch_depth: int = 1,
                 timing: bool = False, timing_window: int = 4096,
                 defer: bool = False, copy_programs: int | None = None) -> None:
        """timing: record CUDA timing events around copies and waits (eager runs only: it creates
        events per call; off under CUDA graphs).
        defer (off the GPU only; tests): the copy stream at its latest. Each issue's work (plan
        and copies) is queued and runs only when something waits for it: wait(l) runs the
        queue up to layer l's last issue, and join, before_replay, end_capture and snapshot run
        all of it. On the CPU the streams otherwise run inline, which hides a missing wait.
        copy_programs: programs of each host->device copy launch (None: copy_blocks' default)."""
        if host.block_size != cache.block_size or host.num_layers != cache.num_layers \
                or host.kv_heads != cache.kv_heads:
            raise ValueError("TransferEngine: host tier and resident cache disagree on block size, layers or heads")
        self.host, self.cache, self.prefetch_depth = host, cache, prefetch_depth
        self.copy_programs = copy_programs
        dev = cache.device
        slots = cache.num_rows * cache.capacity * cache.block_size
        self.k = [torch.zeros(slots, host.kv_heads, host.head_dim, dtype=host.dtype, device=dev)
                  for _ in range(host.num_layers)]
        self.v = None if host.v is None else [
            torch.zeros(slots, host.kv_heads, host.v_head_dim, dtype=host.dtype, device=dev)
            for _ in range(host.num_layers)]
        self.copy_stream = SideStream("h2d_copy", dev)
        self.done = LayerEvents(host.num_layers, dev)
        self.timing = timing and self.copy_stream.stream is not None
        self._copy_times: collections.deque = collections.deque(maxlen=timing_window)
        self._wait_times: collections.deque = collections.deque(maxlen=timing_window)
        if defer and self.copy_stream.stream is not None:
            raise ValueError("TransferEngine: defer simulates a late copy stream off the GPU only")
        #: defer: (layer, work) in issue order, not yet run
        self._queue: list[tuple[int, Callable[[], None]]] | None = [] if defer else None

    @property
    def entry_bytes(self) -> int:
        """Bytes one plan entry moves: one block of one KV head, K and V."""
        return self.host.block_bytes // self.host.kv_heads

    @property
    def nbytes(self) -> int:
        tensors = self.k + (self.v or [])
        return sum(t.numel() * t.element_size() for t in tensors)

    # step boundaries -------------------------------------------------------------------------
    def begin_step(self) -> None:
        """Call at the start of every forward: eagerly, or first thing inside a captured graph."""
        self.done.new_step()
        self.host.written.new_step()

    def before_replay(self) -> None:
        """Call eagerly before each CUDA-graph replay: the compute stream waits for all copies and
        write-throughs issued outside the graph (a replay only orders after its own stream)."""
        self._run_queued()
        self.copy_stream.join_into_current()
        self.host.write_stream.join_into_current()

    def end_capture(self) -> None:
        """Call last inside a capture: every forked side stream must join the capture stream."""
        self._run_queued()
        self.copy_stream.join_into_current()
        self.host.write_stream.join_into_current()

    def _run_queued(self, layer: int | None = None) -> None:
        """defer: run the queued work, all of it or up to layer `layer`'s last issue (in order,
        as the copy stream would have)."""
        if not self._queue:
            return
        last = len(self._queue) if layer is None else \
            max((i + 1 for i, (l, _) in enumerate(self._queue) if l == layer), default=0)
        work, self._queue[:] = self._queue[:last], self._queue[last:]
        for _, run in work:
            run()

    # copies ------------------------------------------------------------------------------------
    def issue(self, layer: int, plan: TransferPlan | Callable[[], TransferPlan],
              source: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor] | None] | None = None,
              reads: Sequence[torch.Tensor] = ()) -> None:
        """Start the copies of `layer`'s plan on the copy stream; returns at once on a GPU.

        plan: a TransferPlan, or a callable that makes it (ResidentBlockCache.plan), run on the
        copy stream after the fork: the compute stream then only records the fork. reads: the
        compute stream's tensors that callable reads (kept alive for the copy stream). Nothing may
        write them before the copy stream has run: pass copies of buffers that get rewritten (such
        as SGLang's batch tensors), not views.
        source: per-layer (k, v) buffers to copy from instead of the host tier (e.g. the device
        pool right after prefill, with device page ids in the plan's src_block).
        """
        k_src = self.host.k if source is None else source[0]
        v_src = self.host.v if source is None else source[1]

        def work() -> TransferPlan:
            made = plan() if callable(plan) else plan
            # NOTE: blocks are read from the host only after their write-through has landed.
            self.host.wait_written()
            start = self._event()
            pair = (v_src[layer], self.v[layer]) if self.v is not None and v_src is not None else None
            copy_blocks(k_src[layer], self.k[layer], made.src_block, made.dst_block, made.count,
                        self.host.block_size, made.head, pair, programs=self.copy_programs)
            end = self._event()
            if start is not None:
                self._copy_times.append((start, end))
            return made

        if self._queue is not None:
            self._queue.append((layer, work))
            self.done.record(layer, self.copy_stream)
            return
        # NOTE: fork = the copy stream waits for all the compute stream issued so far: the plan's
        # inputs are written, and the attention of this layer already read the old contents of
        # the victim slots and the old tables, so rewriting them is safe.
        self.copy_stream.fork()
        self.copy_stream.keep_alive(*reads)
        with self.copy_stream.active():
            made = work()
        # NOTE: plan tensors may be the caller's temporaries (seed's plan after a prefill)
        self.copy_stream.keep_alive(made.src_block, made.dst_block, made.head, made.count)
        self.done.record(layer, self.copy_stream)

    def wait(self, layer: int) -> None:
        """The compute stream waits for the copies of `layer` (and nothing else).

        NOTE: call before reading layer `layer`'s resident buffers and before the next plan() of
        that layer (which rewrites the plan buffers the copy kernel reads).
        """
        self._run_queued(layer)
        before = self._event()
        self.done.wait(layer)
        after = self._event()
        if before is not None:
            self._wait_times.append((before, after))

    def join(self) -> None:
        """The compute stream waits for everything issued on the copy stream (eager; no-op off
        the GPU). Before the residency tables are changed on the compute stream outside a plan."""
        self._run_queued()
        self.copy_stream.join_into_current()

    def fetch_now(self, layer: int, plan: TransferPlan) -> None:
        """prefetch_depth 0: copy and wait before this step's attention (never late, not hidden)."""
        self.issue(layer, plan)
        self.wait(layer)

    def _event(self) -> torch.cuda.Event | None:
        if not self.timing:
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def snapshot(self) -> dict[str, float | int | str]:
        """Metrics (host sync: call off the decode path). A step is one plan of layer 0."""
        self._run_queued()
        if self.copy_stream.stream is not None:
            # NOTE: decode plans count on the copy stream: the host waits for it (not the compute stream)
            self.copy_stream.stream.synchronize()
        counts = self.cache.snapshot()
        steps = int(self.cache.counters[0, 0])
        moved, hits, misses = counts["moved"], counts["hits"], counts["misses"]
        late = misses if self.prefetch_depth >= 1 else counts["overflow"]
        snap: dict[str, float | int | str] = {
            "offload_steps": steps, "blocks_needed": counts["needed"], "blocks_hit": hits,
            "blocks_missed": misses, "blocks_moved": moved, "blocks_overflow": counts["overflow"],
            "blocks_evicted": counts["evicted"], "blocks_late": late,
            "bytes_moved": moved * self.entry_bytes,
            "bytes_per_step": moved * self.entry_bytes / steps if steps else 0.0,
            "hit_rate": hits / (hits + misses) if hits + misses else 1.0,
        }
        if not self.timing:
            # stated, not omitted: a reader must not take a missing figure for "all hidden"
            snap["transfer_timing"] = ("off (ASYNCTLS_OFFLOAD_TIMING=1 with --disable-cuda-graph "
                                       "on a GPU times copies and waits)")
        else:
            torch.cuda.synchronize(self.cache.device)
            copy_ms = sum(s.elapsed_time(e) for s, e in self._copy_times)
            exposed_ms = sum(s.elapsed_time(e) for s, e in self._wait_times)
            snap.update({"transfer_ms": copy_ms, "exposed_ms": exposed_ms,
                         "hidden_ms": max(0.0, copy_ms - exposed_ms),
                         "hidden_fraction": max(0.0, 1.0 - exposed_ms / copy_ms) if copy_ms else 1.0})
        return snap
