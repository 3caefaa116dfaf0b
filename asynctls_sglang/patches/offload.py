"""SGLang changes for the offloading engine (``offload`` on; nothing changes when it is off).

- Logical ids: the token allocator becomes adapter.allocator.OffloadPagedAllocator, whose ids
  range over the host pool (``host_pool_tokens``; default 4x the device pool plus the resident
  buffers) while SGLang's device pool keeps its usual size; the scheduler is told the logical
  capacity (configure), so it admits requests by host capacity and its pool-accounting checks
  stay exact.
- Rows: the resident cache rows are SGLang's request rows; when SGLang gives a row back
  (request finished, aborted or retracted: ReqToTokenPool.free) the engine clears it at the next
  forward (memory.offload_runtime).
- Device room: a prefill reads its whole prefix from the device (loaded back from the host) and
  writes its new tokens there, while SGLang budgets prefills by the logical (host) capacity. The
  prefill adder also admits a request only when the device pool has free pages for its prefix
  (a radix prefix shared with a request admitted in the same round counted once: the batch loads
  it back once), its chunk and one page per running request (else it waits, as for any lack of
  tokens; with nothing running it first evicts the radix cache's unused blocks, whose pages hold
  device pages too, never the request's own matched prefix), and the longest input accepted is
  what the device pool holds for one prefill (SGLang's input-length check then refuses longer
  prompts with its own error). Without this SGLang stopped with "Prefill out of memory" when it
  batched prefills past the device pool. A request refused for device room while others run ends
  the round without marking the running batch full (AddReqResult.OTHER, not NO_TOKEN): SGLang
  clears that mark only when a running request finishes, so the refused request waited for the
  whole batch to finish although the next round had room for it.
- Rows: SGLang counts the rows a prefill round may still take as max_running_requests less the
  running requests, and no more than the free request rows; a chunked request keeps its row
  between chunks and is in the round's list too, so the free rows counted it twice and the last
  row stayed unused while a chunked prefill ran (max_running_requests 6 decoded 5 at most when
  long prompts arrived together: the GLM-4.7-Flash fixed-memory run on the H200). Counted once.
"""
from __future__ import annotations

from sglang.srt.plugins.hook_registry import HookRegistry, HookType

from asynctls_sglang.patches.kv_pool import uses_asynctls

_CONF = "sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator"


def _offload_on(server_args) -> bool:
    if not uses_asynctls(server_args):
        return False
    from asynctls_sglang.config import AsyncTLSConfig

    return AsyncTLSConfig.from_env().offload


def _free(original, self, req, *args, **kwargs):
    row = getattr(req, "req_pool_idx", None)
    result = original(self, req, *args, **kwargs)
    runtime = getattr(self, "asynctls_offload", None)
    if runtime is not None and row is not None:
        runtime.release_later(int(row))
    return result


def _build_allocator(original, self, *args, **kwargs):
    if kwargs.get("token_to_kv_pool_allocator") is not None or not _offload_on(self.server_args):
        return original(self, *args, **kwargs)
    from asynctls_sglang.adapter.allocator import OffloadPagedAllocator

    pool = kwargs["token_to_kv_pool"]
    device_tokens = kwargs["sizes"].max_total_num_tokens
    # NOTE: the logical ids the pool sized its index for (adapter.pools: decided once, with the
    # available host memory then); recomputing them here could disagree with that index
    return OffloadPagedAllocator(pool.asynctls_logical_tokens, pool.page_size, self.kv_cache_dtype, self.device,
                                 pool, False, device_tokens=device_tokens)


def _configure(original, self, *args, **kwargs):
    result = original(self, *args, **kwargs)
    if _offload_allocator(result.token_to_kv_pool_allocator):
        import msgspec

        result = msgspec.structs.replace(result, max_total_num_tokens=result.token_to_kv_pool_allocator.size)
    return result


def _device_pages(req, rem_chunk_tokens, page: int, shared: int = 0) -> int:
    """Device pages a prefill of req needs: its prefix as if host-only (conservative), less the
    `shared` prefix pages another request of the same round already claimed, its chunk, one spare."""
    prefix = len(req.prefix_indices)
    extend = len(req.full_untruncated_fill_ids) - prefix
    if rem_chunk_tokens is not None:
        extend = min(extend, max(int(rem_chunk_tokens), 0))
    return -(-(prefix + extend) // page) - min(shared, prefix // page) + 1


def _path(req):
    """(node, prefix tokens up to and including it) from req's radix node up to the root; empty
    without a radix tree."""
    node, n = getattr(req, "last_node", None), len(req.prefix_indices)
    while node is not None and n > 0 and getattr(node, "value", None) is not None:
        yield node, n
        n -= len(node.value)
        node = getattr(node, "parent", None)


def _shared_pages(adder, req, page: int) -> int:
    """Pages of req's prefix that a request admitted earlier in this round claimed already: a
    shared prefix (the same radix path) is loaded back once for the whole batch (load_back maps
    each host-only page once), so it is counted once."""
    claimed = getattr(adder, "asynctls_claimed_nodes", {})
    return next((claimed[id(node)] for node, _ in _path(req) if id(node) in claimed), 0)


def _claim(adder, req, need: int, page: int) -> None:
    """Count an admitted request's pages, and mark its radix path as claimed (pages up to each node)."""
    adder.asynctls_device_claimed = getattr(adder, "asynctls_device_claimed", 0) + need
    claimed = adder.__dict__.setdefault("asynctls_claimed_nodes", {})
    for node, n in _path(req):
        claimed[id(node)] = n // page


def _device_room(adder, alloc) -> int:
    """Free device pages this adder may still hand out (one page kept per running request for
    its next decode block)."""
    running = adder.running_batch.batch_size() if adder.running_batch is not None else 0
    return alloc.device_available_pages() - running - getattr(adder, "asynctls_device_claimed", 0)


def _make_room(adder, alloc, need: int, req) -> bool:
    """Nothing runs and nothing is admitted: evict unused radix-cache blocks (their device pages
    go back with them) until need pages are free or nothing is evictable. True when they are.
    NOTE: req's matched prefix is locked meanwhile: SGLang locks it only once the request is
    admitted, and evicting it would leave req reading KV ids that were given back."""
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams

    tree = adder.tree_cache
    node = getattr(req, "last_node", None)
    lock = node is not None and tree is not None and hasattr(tree, "inc_lock_ref")
    if lock:
        tree.inc_lock_ref(node)
    try:
        while _device_room(adder, alloc) < need and tree is not None and tree.evictable_size() > 0:
            before = tree.evictable_size()
            tree.evict(EvictParams(num_tokens=(need - _device_room(adder, alloc)) * alloc.page_size))
            if tree.evictable_size() >= before:
                break
    finally:
        if lock:
            tree.dec_lock_ref(node)
    return _device_room(adder, alloc) >= need


def _decoding(batch) -> tuple:
    """(req_to_token, cache rows, committed lengths) of a ScheduleBatch's requests that hold a row
    (host lists; a request that finished in the last step has none any more): what
    OffloadRuntime.reclaim and the allocator's decoding / last_decode take."""
    lens = batch.seq_lens_cpu.tolist()
    if len(lens) != len(batch.reqs):  # not a batch of requests and their lengths: nothing known
        return batch.req_to_token_pool.req_to_token, [], []
    live = [(int(r.req_pool_idx), n) for r, n in zip(batch.reqs, lens) if r.req_pool_idx is not None]
    return batch.req_to_token_pool.req_to_token, [r for r, _ in live], [n for _, n in live]


def _reclaim_running(adder, alloc) -> int:
    """Give back the running requests' device pages they decoded past (OffloadRuntime.reclaim, as
    a decode step short of pages does; their KV is on the host). Returns the pages freed.
    Eager, syncs: only for a chunked request short of room for its prefix."""
    rt, batch = alloc.asynctls_runtime, adder.running_batch
    if rt is None or batch is None or batch.is_empty():
        return 0
    req_to_token, rows, lens = _decoding(batch)
    return rt.reclaim(alloc, req_to_token, rows, lens) if rows else 0


def _gated(add):
    """AROUND hook for PrefillAdder.add_one_req / add_chunked_req: the device-room admission."""
    def hook(original, self, req, *args, **kwargs):
        from sglang.srt.managers.schedule_policy import AddReqResult

        alloc = self.token_to_kv_pool_allocator
        if not _offload_allocator(alloc):
            return original(self, req, *args, **kwargs)
        if getattr(self, "asynctls_parked", False):
            # NOTE: nothing else joins a round whose chunked request sits out: SGLang counts a
            # middle chunk in flight for every prefill batch built while it has a chunked
            # request, and only a batch holding that request counts it back. OTHER: NO_TOKEN
            # would mark the running batch full until one of its requests finishes
            return AddReqResult.OTHER
        page = alloc.page_size
        shared = _shared_pages(self, req, page)
        need = _device_pages(req, self.rem_chunk_tokens, page, shared)
        idle = not self.can_run_list and (self.running_batch is None or self.running_batch.is_empty())
        if _device_room(self, alloc) < need and not (idle and _make_room(self, alloc, need, req)):
            if add == "chunked":
                # NOTE: SGLang must take the chunked request back (it holds its pages); shrink its
                # chunk to the room instead, at least one page
                room = _device_room(self, alloc) - _device_pages(req, 0, page, shared)  # left for the chunk
                if room < 1 and not idle and _reclaim_running(self, alloc):
                    room = _device_room(self, alloc) - _device_pages(req, 0, page, shared)
                if room < 1 and not idle:
                    # not one page beside its prefix: park it this round (SGLang keeps it as its
                    # chunked request and offers it again, as for hybrid SWA) while the running
                    # requests give room back; a one-page chunk would make the prefix load-back
                    # fail inside the forward and stop the scheduler. Idle, nothing gives room
                    # back: it goes on, to that clear error rather than waiting forever.
                    self.asynctls_parked = True
                    return req
                self.rem_chunk_tokens = max(page, room * page)
                need = _device_pages(req, self.rem_chunk_tokens, page, shared)
            elif idle:
                return AddReqResult.NO_TOKEN
            else:
                # NOTE: OTHER, not NO_TOKEN: the room comes back within rounds (this round's
                # prefills are demoted after their forward, decode gives back pages), while
                # NO_TOKEN marks the running batch full until one of its requests finishes
                return AddReqResult.OTHER
        n = len(self.can_run_list)
        result = original(self, req, *args, **kwargs)
        if len(self.can_run_list) > n:
            _claim(self, req, need, page)
        return result
    return hook


def _prefill_round(original, self, *args, **kwargs):
    """AROUND hook for Scheduler.get_new_batch_prefill: remember the round's chunked request (the
    round sets chunked_req to None when it takes the last chunk, and that request still holds its
    row and is in the round's list) for _allocatable_reqs."""
    self.asynctls_round_chunked = self.chunked_req
    try:
        return original(self, *args, **kwargs)
    finally:
        self.asynctls_round_chunked = None


def _allocatable_reqs(original, self, running_bs):
    """AROUND hook for Scheduler.get_num_allocatable_reqs (offload only): the row of the round's
    chunked request, held between its chunks, counted once (module docstring, "Rows")."""
    res = original(self, running_bs)
    chunked = getattr(self, "asynctls_round_chunked", None)
    if chunked is None or chunked.req_pool_idx is None or not _offload_allocator(self.token_to_kv_pool_allocator):
        return res
    from sglang.srt.runtime_context import get_parallel

    return min(res + 1, get_parallel().pp_max_micro_batch_size - running_bs)


def _offload_allocator(alloc) -> bool:
    from asynctls_sglang.adapter.allocator import OffloadPagedAllocator

    return isinstance(alloc, OffloadPagedAllocator)


def _worker_info(original, self, *args, **kwargs):
    """Cap the longest input at what the device pool holds for one prefill (offload only)."""
    info = original(self, *args, **kwargs)
    alloc = self.model_runner.token_to_kv_pool_allocator
    if not _offload_allocator(alloc):
        return info
    cap = (alloc.device_pages_total - 2) * alloc.page_size - 1
    if cap < info[4]:
        import logging

        logging.getLogger(__name__).warning(
            "asynctls offload: inputs are limited to %d tokens, what the device pool (%d tokens) holds for "
            "one prefill (its prefix is read from the device); for longer ones raise --max-total-tokens or "
            "--mem-fraction-static, or give the resident buffers less of the KV budget (lower "
            "--max-running-requests or --asynctls-resident-blocks)", cap - 5,
            alloc.device_pages_total * alloc.page_size)
        info = (*info[:4], cap, cap - 5, *info[6:])
    return info


def _prepare_for_decode(original, self, *args, **kwargs):
    """Tell the offload allocator which requests decode (their windows stay on the device) for
    the allocation of this step (OffloadPagedAllocator.reclaim_decode)."""
    alloc = self.token_to_kv_pool_allocator
    if not _offload_allocator(alloc):
        return original(self, *args, **kwargs)
    # NOTE: seq_lens_cpu: the committed lengths (prepare_for_decode adds this step's token after
    # the allocation); host values, no sync
    alloc.decoding = _decoding(self)
    alloc.last_decode = alloc.decoding  # kept: the next prefill's demotion spares these windows
    try:
        return original(self, *args, **kwargs)
    finally:
        alloc.decoding = None


def apply() -> None:
    HookRegistry.register("sglang.srt.managers.schedule_batch.ScheduleBatch.prepare_for_decode",
                          _prepare_for_decode, HookType.AROUND)
    policy = "sglang.srt.managers.schedule_policy.PrefillAdder"
    HookRegistry.register(f"{policy}.add_one_req", _gated("one"), HookType.AROUND)
    HookRegistry.register(f"{policy}.add_chunked_req", _gated("chunked"), HookType.AROUND)
    scheduler = "sglang.srt.managers.scheduler.Scheduler"
    HookRegistry.register(f"{scheduler}.get_new_batch_prefill", _prefill_round, HookType.AROUND)
    HookRegistry.register(f"{scheduler}.get_num_allocatable_reqs", _allocatable_reqs, HookType.AROUND)
    HookRegistry.register("sglang.srt.managers.tp_worker.TpModelWorker.get_worker_info", _worker_info,
                          HookType.AROUND)
    HookRegistry.register("sglang.srt.mem_cache.memory_pool.ReqToTokenPool.free", _free, HookType.AROUND)
    HookRegistry.register(f"{_CONF}._build_token_to_kv_pool_allocator", _build_allocator, HookType.AROUND)
    HookRegistry.register(f"{_CONF}.configure", _configure, HookType.AROUND)
