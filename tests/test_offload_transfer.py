"""TransferEngine on the CPU: exactly the planned blocks move, and no KV is lost or mixed
between requests across eviction, abort (reset) and row reuse."""
from __future__ import annotations

import contextlib
import random

import pytest
import torch
from offload_testing import bits, plan_entries, resident_sets

from asynctls_sglang.memory.host_tier import HostKVTier
from asynctls_sglang.memory.residency import ResidentBlockCache, forced_blocks
from asynctls_sglang.memory.transfer import TransferEngine

B = 4


def build(hk: int, d: int, dv: int | None, layers: int = 2, capacity: int = 5, max_miss: int = 3,
          host_blocks: int = 40, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    host = HostKVTier(num_layers=layers, num_blocks=host_blocks, block_size=B, kv_heads=hk, head_dim=d,
                      v_head_dim=dv, dtype=torch.bfloat16)
    for t in host.k + (host.v or []):
        t.copy_(torch.randn(t.shape, generator=gen))
    cache = ResidentBlockCache(num_layers=layers, num_rows=4, kv_heads=hk, capacity=capacity, max_blocks=10,
                               max_miss=max_miss, block_size=B, device="cpu")
    engine = TransferEngine(host, cache)
    for t in engine.k + (engine.v or []):
        t.fill_(float("nan"))  # poison: anything read before it is written shows up
    return host, cache, engine


def apply_plan(engine, layer, entries, want_k, want_v):
    """What the plan should do, one entry at a time."""
    c = engine.cache.capacity
    for row, head, src, slot in entries:
        dst = (row * c + slot) * B
        want_k[dst:dst + B, head] = engine.host.k[layer][src * B:(src + 1) * B, head]
        if want_v is not None:
            want_v[dst:dst + B, head] = engine.host.v[layer][src * B:(src + 1) * B, head]


def check_resident_data(engine, layer, pages_of_row):
    """Every resident (row, head, block) holds exactly that request's host block, head only."""
    c = engine.cache.capacity
    for (row, head), blocks in resident_sets(engine.cache, layer).items():
        for blk in blocks:
            slot = int(engine.cache.blk2slot[layer, row, head, blk])
            src = pages_of_row[row][blk]
            got = engine.k[layer][(row * c + slot) * B:(row * c + slot + 1) * B, head]
            assert torch.equal(bits(got), bits(engine.host.k[layer][src * B:(src + 1) * B, head])), \
                f"layer {layer} row {row} head {head} block {blk}"
            if engine.v is not None:
                got_v = engine.v[layer][(row * c + slot) * B:(row * c + slot + 1) * B, head]
                assert torch.equal(bits(got_v), bits(engine.host.v[layer][src * B:(src + 1) * B, head]))


@pytest.mark.parametrize("hk, d, dv", [(2, 8, 6), (3, 5, 5), (1, 24, None)], ids=["gqa-hk2", "gqa-hk3-d5", "mla"])
def test_moves_exactly_the_planned_blocks(hk, d, dv):
    host, cache, engine = build(hk, d, dv)
    rng = random.Random(hk)
    pages_of_row = {r: rng.sample(range(host.num_blocks), 10) for r in range(4)}
    for step in range(12):
        rows = [1, 2, 3] if step != 6 else [3, 1]
        if step == 8:  # abort row 2, give the row to a new request with other host blocks
            cache.release_row(2)
            pages_of_row[2] = rng.sample(range(host.num_blocks), 10)
        pages = torch.tensor([pages_of_row[r] for r in rows])
        for layer in range(host.num_layers):
            need = torch.tensor([[rng.sample(range(10), 3) for _ in range(hk)] for _ in rows])
            want_k = engine.k[layer].clone()
            want_v = None if engine.v is None else engine.v[layer].clone()
            engine.wait(layer)
            plan = cache.plan(layer, torch.tensor(rows), need, pages)
            apply_plan(engine, layer, plan_entries(cache, plan), want_k, want_v)
            engine.issue(layer, plan)
            engine.wait(layer)
            assert torch.equal(bits(engine.k[layer]), bits(want_k)), f"step {step} layer {layer}: K"
            if want_v is not None:
                assert torch.equal(bits(engine.v[layer]), bits(want_v)), f"step {step} layer {layer}: V"
            check_resident_data(engine, layer, pages_of_row)
    snap = engine.snapshot()
    assert snap["blocks_moved"] > 0 and snap["bytes_moved"] == snap["blocks_moved"] * B * (d + (dv or 0)) * 2
    assert snap["offload_steps"] == 12 and 0 < snap["hit_rate"] < 1
    assert snap["blocks_late"] == snap["blocks_missed"]
    # no CUDA events on the CPU: the hidden/exposed split is stated as off, never reported as 100%
    assert snap["transfer_timing"].startswith("off") and "hidden_fraction" not in snap


def test_a_plan_made_on_the_copy_stream_moves_what_a_plan_made_before_issue_moves():
    """issue() with a callable (a decode step's plan, run on the copy stream after the fork, see
    OffloadRuntime.prefetch) leaves the same tables and resident data as a plan passed made."""
    (host, cache, made), (_, cache2, deferred) = build(2, 8, 6), build(2, 8, 6)
    rng = random.Random(7)
    pages = torch.tensor([rng.sample(range(host.num_blocks), 10) for _ in range(3)])
    rows = torch.tensor([1, 2, 3])
    for step in range(6):
        for layer in range(host.num_layers):
            need = torch.tensor([[rng.sample(range(10), 3) for _ in range(2)] for _ in range(3)])
            made.wait(layer)
            made.issue(layer, cache.plan(layer, rows, need, pages))
            deferred.wait(layer)
            deferred.issue(layer, lambda: cache2.plan(layer, rows, need, pages), reads=(need, rows, pages))
            made.wait(layer)
            deferred.wait(layer)
            for a, b in ((cache.blk2slot, cache2.blk2slot), (cache.slot2blk, cache2.slot2blk),
                         (made.k[layer], deferred.k[layer]), (made.v[layer], deferred.v[layer])):
                assert torch.equal(bits(a), bits(b)), f"step {step} layer {layer}"
    assert made.snapshot()["blocks_moved"] == deferred.snapshot()["blocks_moved"] > 0


def test_deferred_copies_run_only_when_waited_for():
    """defer (tests): the copy stream at its latest. Nothing an issue does (plan, copies) happens
    before the compute side waits for that layer (or joins); then it all does, in issue order."""
    host, cache, engine = build(2, 8, 6)
    _, cache2, deferred = build(2, 8, 6)
    deferred._queue = []  # as TransferEngine(..., defer=True) on the CPU
    pages, rows = torch.tensor([[3, 7, 11, 2, 5, 9, 13, 17, 19, 23]] * 2), torch.tensor([1, 2])
    need = torch.tensor([[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [0, 2, 4]]])
    engine.issue(0, cache.plan(0, rows, need, pages))
    deferred.issue(0, lambda: cache2.plan(0, rows, need, pages))
    deferred.issue(1, lambda: cache2.plan(1, rows, need, pages))
    assert (cache2.blk2slot < 0).all() and torch.isnan(deferred.k[0]).all()  # not run yet
    deferred.wait(0)
    assert torch.equal(cache2.blk2slot[0], cache.blk2slot[0])
    assert torch.equal(bits(deferred.k[0]), bits(engine.k[0])) and (cache2.blk2slot[1] < 0).all()
    deferred.join()
    assert (cache2.blk2slot[1] >= 0).any() and not deferred._queue
    with pytest.raises(ValueError, match="off the GPU only") if torch.cuda.is_available() else \
            contextlib.nullcontext():
        TransferEngine(host, cache, defer=True)


def test_pool_to_host_to_resident_round_trip_and_translation():
    """Device pool --write-through--> host --plan/gather--> resident buffer, read via token_rows."""
    hk, d, dv, layers = 2, 8, 8, 1
    host, cache, engine = build(hk, d, dv, layers=layers, capacity=6, max_miss=6)
    gen = torch.Generator().manual_seed(3)
    seq_len, n_pages = 22, 8  # blocks 0..4 are complete, block 5 is the open tail
    dev_k = [torch.randn(n_pages * B, hk, d, generator=gen).bfloat16()]
    dev_v = [torch.randn(n_pages * B, hk, dv, generator=gen).bfloat16()]
    device_pages = torch.tensor([5, 2, 7, 0, 3, 6])  # the request's device page per block
    host_blocks = torch.tensor([11, 30, 4, 17, 25, 9])  # its logical (host) block per block
    done = (seq_len - 1) // B
    host.write_through(dev_k, dev_v, device_pages, host_blocks, torch.tensor([done]))
    rows = torch.tensor([1])
    need = torch.cat([forced_blocks(torch.tensor([seq_len]), hk, B, 4, 6), torch.tensor([[[2, 3], [1, 3]]])], 2)
    plan = cache.plan(0, rows, need, host_blocks.view(1, -1), host_blocks=torch.tensor([done]))
    engine.issue(0, plan)
    engine.wait(0)
    mask = cache.blk2slot[0, rows, :, :6] >= 0  # resident request blocks
    assert [set(mask[0, h].nonzero().flatten().tolist()) for h in range(hk)] == [{0, 2, 3, 4}, {0, 1, 3, 4}]
    positions = torch.arange(seq_len).view(1, 1, -1).expand(1, hk, -1)
    tok = cache.token_rows(0, rows, positions)  # [1, Hk, seq_len]
    want_resident = [{0, 2, 3, 4}, {0, 1, 3, 4}]  # sink 0, local 4 (5 is the open tail), selected
    for h in range(hk):
        for pos in range(seq_len):
            r = int(tok[0, h, pos])
            assert (r >= 0) == (pos // B in want_resident[h]), f"head {h} position {pos}"
            if r >= 0:
                src = int(device_pages[pos // B]) * B + pos % B
                assert torch.equal(bits(engine.k[0][r, h]), bits(dev_k[0][src, h]))
                assert torch.equal(bits(engine.v[0][r, h]), bits(dev_v[0][src, h]))


def test_copy_programs_setting_reaches_the_copy_launch(monkeypatch):
    """cfg.copy_programs -> OffloadRuntime's TransferEngine -> every copy_blocks call of issue()
    (on a GPU the kernel's grid; the CPU's torch copy takes and ignores it)."""
    import asynctls_sglang.memory.transfer as transfer
    from asynctls_sglang.config import AsyncTLSConfig
    from asynctls_sglang.memory.offload_runtime import OffloadRuntime

    seen = []
    real = transfer.copy_blocks

    def spy(*args, **kw):
        seen.append(kw.get("programs"))
        return real(*args, **kw)

    monkeypatch.setattr(transfer, "copy_blocks", spy)
    for programs in (16, 5):
        cfg = AsyncTLSConfig(block_size=B, block_budget=16, token_budget=64, sink_tokens=4, local_window=8,
                             copy_programs=programs)
        rt = OffloadRuntime(cfg, num_layers=1, kv_heads=1, head_dim=8, v_head_dim=8, dtype=torch.float32,
                            device="cpu", num_rows=3, max_blocks=20, host_blocks=4)
        assert rt.engine.copy_programs == programs
        seen.clear()
        rows = torch.tensor([1])
        need = torch.tensor([[[0, 1, 2]]])
        pages = torch.arange(20).view(1, -1)
        rt.engine.issue(0, rt.cache.plan(0, rows, need, pages))
        rt.engine.join()
        assert seen == [programs]
    assert AsyncTLSConfig().copy_programs == 16
