"""The device-room admission of offload (patches/offload.py) in pieces, without an engine: the pages
a prefill needs, the input cap, and the SGLang 0.5.17 signatures the hooks wrap
(tests/test_engine_offload_device_room.py runs it inside the engine)."""
from __future__ import annotations

import inspect
from types import SimpleNamespace

import torch

from asynctls_sglang.patches import offload


def _req(prefix: int, total: int):
    return SimpleNamespace(prefix_indices=torch.zeros(prefix), full_untruncated_fill_ids=[0] * total)


def test_pages_count_the_prefix_the_chunk_and_one_spare():
    assert offload._device_pages(_req(0, 64), None, 16) == 4 + 1
    assert offload._device_pages(_req(0, 65), None, 16) == 5 + 1
    assert offload._device_pages(_req(100, 700), None, 16) == 44 + 1  # prefix read from the device
    assert offload._device_pages(_req(100, 700), 200, 16) == 19 + 1  # only this chunk is written
    assert offload._device_pages(_req(0, 700), 0, 16) == 1


def test_the_input_cap_applies_to_offload_only():
    from asynctls_sglang.adapter.allocator import OffloadPagedAllocator

    info = (1000, 2, 3, 4, 99999, 99994, 7)
    alloc = object.__new__(OffloadPagedAllocator)
    alloc.device_pages_total, alloc.page_size = 96, 16
    worker = SimpleNamespace(model_runner=SimpleNamespace(token_to_kv_pool_allocator=alloc))
    capped = offload._worker_info(lambda self: info, worker)
    assert capped[4] == 94 * 16 - 1 and capped[5] == capped[4] - 5 and capped[:4] + capped[6:] == info[:4] + info[6:]
    other = SimpleNamespace(model_runner=SimpleNamespace(token_to_kv_pool_allocator=object()))
    assert offload._worker_info(lambda self: info, other) == info
    small = (1000, 2, 3, 4, 500, 495, 7)  # already below the cap: unchanged
    assert offload._worker_info(lambda self: small, worker) == small


def test_hooked_sglang_methods_have_the_expected_shape():
    from sglang.srt.managers.schedule_policy import PrefillAdder
    from sglang.srt.managers.tp_worker import TpModelWorker

    assert list(inspect.signature(PrefillAdder.add_one_req).parameters)[:2] == ["self", "req"]
    assert list(inspect.signature(PrefillAdder.add_chunked_req).parameters) == ["self", "req"]
    src = inspect.getsource(TpModelWorker.get_worker_info)
    # positions 4 and 5 of the tuple are max_req_len and max_req_input_len (what _worker_info caps)
    body = src[src.index("return ("):]
    items = [x.strip() for x in body[len("return ("):body.index("\n        )")].split(",") if x.strip()]
    assert items[4] == "max_req_len" and items[5] == "max_req_len - 5", items
    for attr in ("can_run_list", "running_batch", "tree_cache", "rem_chunk_tokens", "token_to_kv_pool_allocator"):
        assert f"self.{attr}" in inspect.getsource(PrefillAdder.__init__), attr


def _two_requests(b: int = 16):
    """An offload allocator and runtime (sink 4 tokens, local window 32, blocks of b) with request
    rows 1 and 2: row 1 on logical pages 1..20, row 2 sharing row 1's first 6 pages (a radix
    prefix) then on pages 30..43. Nothing mapped; device pages 40..49 free."""
    from asynctls_sglang.adapter.allocator import OffloadPagedAllocator
    from asynctls_sglang.config import AsyncTLSConfig
    from asynctls_sglang.memory.offload_runtime import OffloadRuntime

    cfg = AsyncTLSConfig(block_size=b, block_budget=16, token_budget=256, sink_tokens=4, local_window=32)
    alloc = object.__new__(OffloadPagedAllocator)
    alloc.page_size = b
    alloc.device_page = torch.full((64,), -1, dtype=torch.int64)
    alloc.dev_free = torch.arange(40, 50)
    rt = OffloadRuntime(cfg, num_layers=1, kv_heads=1, head_dim=8, v_head_dim=8, dtype=torch.float32,
                        device="cpu", num_rows=3, max_blocks=20, host_blocks=4)
    rt.device_page = alloc.device_page
    alloc.asynctls_runtime = rt
    req_to_token = torch.zeros(3, 20 * b, dtype=torch.int64)
    own1, own2 = list(range(1, 21)), list(range(1, 7)) + list(range(30, 44))
    for row, pages in ((1, own1), (2, own2)):
        req_to_token[row] = torch.tensor([p * b + t for p in pages for t in range(b)])
    return alloc, rt, req_to_token


def test_reclaim_frees_only_blocks_decoded_past_every_window():
    b = 16
    alloc, rt, req_to_token = _two_requests(b)
    alloc.device_page[1:21] = torch.arange(101, 121)
    alloc.device_page[30:44] = torch.arange(130, 144)
    alloc.device_page[10] = -1  # already host-only
    # row 1: 300 tokens (blocks 0..18): window = sink block 0 + blocks from (301-32)//16 - 1 = 15
    # row 2: 100 tokens (blocks 0..6): window = block 0 + blocks from (101-32)//16 - 1 = 3, i.e.
    # shared pages 4..6 stay mapped for row 2
    alloc.decoding = (req_to_token, [1, 2], [300, 100])
    freed = alloc.reclaim_decode()
    dropped = sorted(set(range(2, 16)) - {4, 5, 6, 10})  # pages of row 1's blocks 1..14, not row 2's window
    assert freed == len(dropped) and rt._join_side_streams and rt.demoted_blocks == freed
    assert all(alloc.device_page[p] == -1 for p in dropped)
    assert all(alloc.device_page[p] >= 0 for p in [1, 4, 5, 6] + list(range(16, 21)) + list(range(30, 44)))
    assert sorted(alloc.dev_free.tolist()) == sorted(list(range(40, 50)) + [100 + p for p in dropped])
    alloc.decoding = None
    assert alloc.reclaim_decode() == 0


def _mapped_blocks(alloc, first_page: int, blocks: int) -> set[int]:
    return {j for j in range(blocks) if alloc.device_page[first_page + j] >= 0}


def test_chunked_prefill_gives_back_its_earlier_chunks_windows():
    """Each chunk's demotion spares the window at that chunk's end; the next chunk's demotion must
    give those pages back (before, one window's pages per chunk stayed mapped until the request
    ended, and under a KV cap the device pool ran dry: H200, 6 x 96k MLA, no request finished)."""
    b = 16
    alloc, rt, req_to_token = _two_requests(b)
    alloc.device_page[1:21] = torch.arange(101, 121)  # row 1's pages, mapped as SGLang allocates them
    rows = torch.tensor([1])
    empty = torch.empty(0, dtype=torch.int64)
    # chunk 1: tokens 0..99 (complete blocks 0..5); window: sink block 0, local blocks 4..6
    rt.demote(alloc, req_to_token, rows, [0], [100], empty)
    assert _mapped_blocks(alloc, 1, 7) == {0, 4, 5, 6}
    # chunk 2: tokens 100..199 (complete blocks 6..11); window: block 0, local blocks 10..12
    rt.demote(alloc, req_to_token, rows, [100], [200], empty)
    assert _mapped_blocks(alloc, 1, 13) == {0, 10, 11, 12}  # blocks 4, 5 of chunk 1's window given back
    # chunk 3 ends the prefill at 300 tokens: only its window stays
    rt.demote(alloc, req_to_token, rows, [200], [300], empty)
    assert _mapped_blocks(alloc, 1, 19) == {0, 16, 17, 18}
    rt.release_later(1)
    assert 1 not in rt._spared


def test_chunk_demotion_spares_the_windows_of_requests_decoding_on_a_shared_prefix():
    """Row 2 decodes on row 1's first 6 pages (a shared radix prefix) with 90 tokens: its window
    (blocks 0 and 2..5) holds pages row 1 computed. Row 1's next chunk must not give them back
    while row 2 reads them, and gives them back once nothing reads them."""
    b = 16
    alloc, rt, req_to_token = _two_requests(b)
    alloc.device_page[1:21] = torch.arange(101, 121)
    alloc.device_page[30:36] = torch.arange(130, 136)
    rows, empty = torch.tensor([1]), torch.empty(0, dtype=torch.int64)
    rt.demote(alloc, req_to_token, rows, [0], [100], empty)
    alloc.last_decode = (req_to_token, [2], [90])
    rt.begin_forward(None)  # the decode step
    rt.demote(alloc, req_to_token, rows, [100], [200], empty)
    assert _mapped_blocks(alloc, 1, 13) == {0, 4, 5, 10, 11, 12}  # 4, 5: in row 2's window
    alloc.last_decode = None  # row 2 ended
    rt.begin_forward(None)
    rt.demote(alloc, req_to_token, rows, [200], [300], empty)
    assert _mapped_blocks(alloc, 1, 19) == {0, 16, 17, 18}


def test_prefill_demotion_spares_windows_kept_by_prefills_since_the_last_decode():
    """Row 2 prefilled (its window kept) but has not decoded yet when row 1's next chunk runs."""
    b = 16
    alloc, rt, req_to_token = _two_requests(b)
    alloc.device_page[1:21] = torch.arange(101, 121)
    alloc.device_page[30:36] = torch.arange(130, 136)
    empty = torch.empty(0, dtype=torch.int64)
    rt.demote(alloc, req_to_token, torch.tensor([1]), [0], [100], empty)
    rt.demote(alloc, req_to_token, torch.tensor([2]), [96], [90 + 6], empty)  # row 2: 96 tokens
    rt.demote(alloc, req_to_token, torch.tensor([1]), [100], [200], empty)
    assert {4, 5} <= _mapped_blocks(alloc, 1, 13)  # row 2's first decode step reads them


class _Tree:
    """A radix cache stand-in whose eviction gives device pages back."""

    def __init__(self, alloc, evictable_pages: int):
        self.alloc, self.left = alloc, evictable_pages

    def evictable_size(self):
        return self.left * self.alloc.page_size

    def evict(self, params):
        n = min(self.left, -(-params.num_tokens // self.alloc.page_size))
        self.left -= n
        self.alloc.dev_free = torch.cat([self.alloc.dev_free, torch.arange(1000, 1000 + n)])


def _adder(free_pages: int, running: int, evictable_pages: int = 0, rem_chunk=None):
    from asynctls_sglang.adapter.allocator import OffloadPagedAllocator

    alloc = object.__new__(OffloadPagedAllocator)
    alloc.page_size, alloc.dev_free = 16, torch.arange(free_pages)
    batch = SimpleNamespace(batch_size=lambda: running, is_empty=lambda: running == 0)
    return SimpleNamespace(token_to_kv_pool_allocator=alloc, running_batch=batch, can_run_list=[],
                           rem_chunk_tokens=rem_chunk, tree_cache=_Tree(alloc, evictable_pages))


def _admit(adder, req, kind="one"):
    def original(self, r, *args):
        self.can_run_list.append(r)
        return "added"
    return offload._gated(kind)(original, adder, req)


def test_gate_admits_by_device_room_and_counts_what_it_admitted():
    from sglang.srt.managers.schedule_policy import AddReqResult

    adder = _adder(free_pages=50, running=4)  # room 46
    assert _admit(adder, _req(0, 320)) == "added"  # 20 + 1 pages
    assert adder.asynctls_device_claimed == 21
    assert _admit(adder, _req(0, 320)) == "added"  # 21 more: 42 <= 46
    # 63 > 46: waits, ending the round with OTHER (NO_TOKEN would mark SGLang's running batch full
    # until one of its requests finishes, although the room comes back next round)
    assert _admit(adder, _req(0, 320)) == AddReqResult.OTHER
    assert len(adder.can_run_list) == 2


def test_gate_evicts_the_radix_cache_only_when_nothing_runs():
    from sglang.srt.managers.schedule_policy import AddReqResult

    busy = _adder(free_pages=10, running=2, evictable_pages=100)
    assert _admit(busy, _req(0, 320)) == AddReqResult.OTHER and busy.tree_cache.left == 100
    idle = _adder(free_pages=10, running=0, evictable_pages=100)
    assert _admit(idle, _req(0, 320)) == "added" and idle.tree_cache.left == 100 - 11
    empty = _adder(free_pages=10, running=0, evictable_pages=3)
    assert _admit(empty, _req(0, 320)) == AddReqResult.NO_TOKEN  # idle: nothing gives room back


def test_gate_shrinks_a_chunked_request_to_the_room():
    adder = _adder(free_pages=30, running=4, rem_chunk=2048)  # room 26
    req = _req(160, 4000)  # 10 prefix pages must be mapped back
    assert _admit(adder, req, "chunked") == "added"
    assert adder.rem_chunk_tokens == (26 - 1 - 10) * 16
    assert adder.asynctls_device_claimed == 10 + 15 + 1  # what the shrunk chunk needs


def test_gate_parks_a_chunked_request_whose_prefix_leaves_no_room_while_others_run():
    """Room 28 - 2 running; the prefix alone needs 30 pages: a one-page chunk would fail its
    prefix load-back inside the forward (the scheduler stops). With requests running, the chunked
    request sits out the round (SGLang offers it again); idle, it goes on with one page."""
    busy = _adder(free_pages=30, running=2, rem_chunk=2048)
    req = _req(480, 4000)
    assert _admit(busy, req, "chunked") is req and busy.can_run_list == []
    assert getattr(busy, "asynctls_device_claimed", 0) == 0 and busy.rem_chunk_tokens == 2048
    # nothing else joins that round (SGLang would count a middle chunk in flight for the batch)
    from sglang.srt.managers.schedule_policy import AddReqResult

    assert _admit(busy, _req(0, 32)) == AddReqResult.OTHER and busy.can_run_list == []
    idle = _adder(free_pages=30, running=0, rem_chunk=2048)
    assert _admit(idle, req, "chunked") == "added" and idle.rem_chunk_tokens == 16


def test_gate_gives_a_chunked_request_the_pages_running_requests_decoded_past():
    """Row 1 decodes at 300 tokens on 20 mapped pages; 10 device pages are free. A chunked request
    whose 10-page prefix leaves no room for a chunk first takes back row 1's pages outside its
    windows (their KV is on the host), as a decode step short of pages does, then goes on."""
    b = 16
    alloc, rt, req_to_token = _two_requests(b)
    alloc.device_page[1:21] = torch.arange(101, 121)
    batch = SimpleNamespace(batch_size=lambda: 1, is_empty=lambda: False, reqs=[SimpleNamespace(req_pool_idx=1)],
                            seq_lens_cpu=torch.tensor([300]),
                            req_to_token_pool=SimpleNamespace(req_to_token=req_to_token))
    adder = SimpleNamespace(token_to_kv_pool_allocator=alloc, running_batch=batch, can_run_list=[],
                            rem_chunk_tokens=2048, tree_cache=_Tree(alloc, 0))
    assert _admit(adder, _req(160, 4000), "chunked") == "added"
    freed = set(range(1, 15))  # blocks 1..14: past the sink block, before the local window (15..)
    assert _mapped_blocks(alloc, 1, 20) == set(range(20)) - freed
    assert adder.rem_chunk_tokens == (10 + len(freed) - 1 - 11) * 16


def _shared_req(prefix: int, total: int, path):
    """A request whose radix prefix ends at path[-1] (path: nodes from the root's child down)."""
    req = _req(prefix, total)
    req.last_node = path[-1]
    return req


def _chain(*lengths):
    """Radix nodes root -> ... with value lengths (the root's value is empty: the walk stops there)."""
    node = SimpleNamespace(value=torch.zeros(0), parent=None)
    out = []
    for n in lengths:
        node = SimpleNamespace(value=torch.zeros(n), parent=node)
        out.append(node)
    return out


def test_gate_counts_a_prefix_shared_in_the_round_once():
    from sglang.srt.managers.schedule_policy import AddReqResult

    path = _chain(160, 96)  # a 256-token prefix in two radix nodes
    adder = _adder(free_pages=45, running=0)
    assert _admit(adder, _shared_req(256, 320, path)) == "added"  # 16 prefix + 4 + 1 pages
    assert adder.asynctls_device_claimed == 21
    assert _admit(adder, _shared_req(256, 320, path)) == "added"  # the same prefix: 4 + 1
    assert _admit(adder, _shared_req(160, 224, path[:1])) == "added"  # a shorter one inside it: 4 + 1
    assert adder.asynctls_device_claimed == 21 + 5 + 5
    longer = _chain(160, 96, 64)  # not the same nodes: nothing shared
    assert _admit(adder, _shared_req(320, 384, longer)) == AddReqResult.OTHER  # 24 + 1 > 45 - 31
    deeper = path + [SimpleNamespace(value=torch.zeros(64), parent=path[-1])]
    assert _admit(adder, _shared_req(320, 384, deeper)) == "added"  # 4 new prefix pages + 4 + 1 <= 14
    assert adder.asynctls_device_claimed == 31 + 9


class _LockingTree(_Tree):
    """_Tree whose prefix node (its first `node_pages` evictable pages) can be locked as SGLang's
    RadixCache.inc_lock_ref does: locked pages are not evictable."""

    def __init__(self, alloc, evictable_pages: int, node_pages: int):
        super().__init__(alloc, evictable_pages)
        self.node_pages, self.locks, self.lock_calls = node_pages, 0, []

    def evictable_size(self):
        return (self.left - (self.node_pages if self.locks else 0)) * self.alloc.page_size

    def evict(self, params):
        n = min(self.evictable_size() // self.alloc.page_size, -(-params.num_tokens // self.alloc.page_size))
        self.left -= n
        self.alloc.dev_free = torch.cat([self.alloc.dev_free, torch.arange(1000, 1000 + n)])

    def inc_lock_ref(self, node):
        self.locks += 1
        self.lock_calls.append(("inc", node))

    def dec_lock_ref(self, node):
        self.locks -= 1
        self.lock_calls.append(("dec", node))


def test_making_room_never_evicts_the_prefix_the_request_matched():
    """With nothing running, the gate evicts radix blocks to make room, but not the request's own
    matched prefix (SGLang locks it only after admission): evicting it would free the KV ids the
    request is about to read. Here the room needed exceeds what the rest of the tree frees: the
    request waits, its prefix stays, and the lock is released."""
    from sglang.srt.managers.schedule_policy import AddReqResult

    adder = _adder(free_pages=10, running=0)
    node = SimpleNamespace(value=torch.zeros(160), parent=None)
    adder.tree_cache = tree = _LockingTree(adder.token_to_kv_pool_allocator, evictable_pages=30, node_pages=10)
    req = _shared_req(160, 800, [node])  # 10 prefix pages (in the tree) + 40 new + 1 = 51 > 10 + 20
    assert _admit(adder, req) == AddReqResult.NO_TOKEN
    assert tree.left == 10  # the other 20 pages went, the matched prefix's 10 stayed
    assert tree.lock_calls == [("inc", node), ("dec", node)] and tree.locks == 0
    adder = _adder(free_pages=10, running=0)
    adder.tree_cache = tree = _LockingTree(adder.token_to_kv_pool_allocator, evictable_pages=60, node_pages=10)
    assert _admit(adder, _shared_req(160, 800, [node])) == "added"  # enough besides the prefix
    assert tree.left >= 10 and tree.locks == 0


def test_the_rounds_chunked_request_row_is_counted_once(monkeypatch):
    """SGLang's rows left for a prefill round: min(max running - running, free rows). A chunked
    request holds its row between chunks and is in the round's list, so with offload it is counted
    once: one more than the free rows, never past max running; unchanged otherwise."""
    import sglang.srt.runtime_context as runtime_context

    from asynctls_sglang.adapter.allocator import OffloadPagedAllocator

    monkeypatch.setattr(runtime_context, "get_parallel", lambda: SimpleNamespace(pp_max_micro_batch_size=6))

    def original(self, running_bs):
        return min(6 - running_bs, 1)  # one free row

    sched = SimpleNamespace(token_to_kv_pool_allocator=object.__new__(OffloadPagedAllocator), chunked_req=None)
    seen = []
    offload._prefill_round(lambda self: seen.append(self.asynctls_round_chunked), sched)
    assert seen == [None] and sched.asynctls_round_chunked is None
    sched.chunked_req = SimpleNamespace(req_pool_idx=5)
    # during the round the chunked request is remembered, even once the round clears chunked_req
    offload._prefill_round(lambda self: seen.append(offload._allocatable_reqs(original, self, 4)), sched)
    assert seen[-1] == 2 and sched.asynctls_round_chunked is None
    sched.asynctls_round_chunked = sched.chunked_req
    assert offload._allocatable_reqs(original, sched, 5) == 1  # max running 6: one more at most
    sched.asynctls_round_chunked = SimpleNamespace(req_pool_idx=None)  # holds no row
    assert offload._allocatable_reqs(original, sched, 4) == 1
    stock = SimpleNamespace(token_to_kv_pool_allocator=object(), asynctls_round_chunked=sched.chunked_req)
    assert offload._allocatable_reqs(original, stock, 4) == 1
