"""The offload engine on a GPU: UVA gather from pinned host memory, no host sync in plan + gather,
and a CUDA graph of plan + gather (copy stream forked and joined inside the capture) equal to eager.
Skipped without CUDA."""
from __future__ import annotations

import pytest
import torch
from offload_testing import bits

from asynctls_sglang.memory.host_tier import HostKVTier
from asynctls_sglang.memory.residency import ResidentBlockCache
from asynctls_sglang.memory.transfer import TransferEngine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

B, HK, D, LAYERS, BS, MB = 64, 8, 128, 2, 4, 64


def _engine(seed: int = 0):
    host = HostKVTier(num_layers=LAYERS, num_blocks=BS * MB, block_size=B, kv_heads=HK, head_dim=D,
                      v_head_dim=D, dtype=torch.bfloat16, device="cuda")
    assert host.pinned and host.k[0].is_pinned()
    gen = torch.Generator().manual_seed(seed)
    for t in host.k + host.v:
        t.copy_(torch.randn(t.shape, generator=gen))
    cache = ResidentBlockCache(num_layers=LAYERS, num_rows=BS + 1, kv_heads=HK, capacity=48, max_blocks=MB,
                               max_miss=16, block_size=B, device="cuda")
    return host, cache, TransferEngine(host, cache)


def _need(step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(step)
    return torch.stack([torch.randperm(MB, generator=gen)[:24] for _ in range(BS * HK)]).view(BS, HK, 24)


def _step(cache, engine, rows, need, pages):
    engine.begin_step()
    for layer in range(LAYERS):
        engine.wait(layer)
        engine.issue(layer, cache.plan(layer, rows, need, pages))
    for layer in range(LAYERS):
        engine.wait(layer)


def _check(host, cache, engine, rows, pages):
    c = cache.capacity
    b2s = cache.blk2slot.cpu()
    for layer in range(LAYERS):
        k, v = engine.k[layer].cpu(), engine.v[layer].cpu()
        for i, row in enumerate(rows.tolist()):
            for h in range(HK):
                for blk in (b2s[layer, row, h, :MB] >= 0).nonzero().flatten().tolist():
                    s = (row * c + int(b2s[layer, row, h, blk])) * B
                    src = int(pages[i, blk]) * B
                    assert torch.equal(bits(k[s:s + B, h]), bits(host.k[layer][src:src + B, h]))
                    assert torch.equal(bits(v[s:s + B, h]), bits(host.v[layer][src:src + B, h]))


def test_uva_gather_no_sync():
    host, cache, engine = _engine()
    rows = torch.arange(1, BS + 1, device="cuda")
    pages = (torch.arange(BS * MB).view(BS, MB)).cuda()
    _step(cache, engine, rows, _need(0).cuda(), pages)  # compile
    # the needs go to the GPU first: a copy from pageable host memory is itself a sync
    needs = [_need(step).cuda() for step in range(1, 4)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for need in needs:
            _step(cache, engine, rows, need, pages)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    _check(host, cache, engine, rows, pages.cpu())


def test_cuda_graph_of_plan_and_gather_equals_eager():
    rows = torch.arange(1, BS + 1, device="cuda")
    pages = (torch.arange(BS * MB).view(BS, MB)).cuda()
    eager = _engine()
    graphed = _engine()
    need = _need(0).cuda()
    for host, cache, engine in (eager, graphed):
        _step(cache, engine, rows, need, pages)  # warm up, allocate plan buffers
    graphed[2].before_replay()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _step(graphed[1], graphed[2], rows, need, pages)
        graphed[2].end_capture()
    for step in range(1, 5):
        need.copy_(_need(step).cuda())
        _step(eager[1], eager[2], rows, need, pages)
        graphed[2].before_replay()
        graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(eager[1].blk2slot, graphed[1].blk2slot)
    for layer in range(LAYERS):
        assert torch.equal(bits(eager[2].k[layer]), bits(graphed[2].k[layer]))
    _check(*graphed, rows, pages.cpu())
