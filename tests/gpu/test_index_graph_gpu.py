"""On a GPU: a CUDA graph of the decode selection, captured before the index is calibrated (as
SGLang captures its decode graphs at start-up) and replayed after the first real prefill
calibrated it, selects what an eager call with the calibrated index selects. Before the fix that
changes the channel set in place, the replay scored tokens at the start-up channels (16% of the
positions matched on the H200, 2026-11-28). Skipped without CUDA.
"""
from __future__ import annotations

import pytest
import torch

from asynctls_sglang.config import AsyncTLSConfig
from asynctls_sglang.memory.index_store import SparseIndexStore
from asynctls_sglang.ops.select import select_positions

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_graph_replay_after_calibration_selects_like_eager():
    from asynctls_sglang.kernels import triton_ops as ops

    dev = "cuda"
    g = torch.Generator().manual_seed(0)
    hq, hk, d, block, n = 9, 3, 64, 64, 8000  # SmolLM2-135M's heads, an 8k request
    cfg = AsyncTLSConfig(block_size=block, block_budget=128, token_budget=512, calibration_tokens=4 * n)
    slots = (n // block + 4) * block
    store = SparseIndexStore(cfg, num_layers=1, num_slots=slots, kv_heads=hk, head_dim=d, is_mla=False,
                             dtype=torch.bfloat16, device=dev, ops=ops)
    r2t = torch.zeros(2, 8192, dtype=torch.int32)
    r2t[1, :n] = torch.arange(block, block + n, dtype=torch.int32)
    scale = torch.linspace(0.05, 3.0, d)  # energy in the last channels: calibration moves away from 0..r-1
    k = (torch.randn(n, hk, d, generator=g) * scale).to(dev, torch.bfloat16)
    kbuf = torch.zeros(slots, hk, d, device=dev, dtype=torch.bfloat16)
    loc = r2t[1, :n].long().to(dev)
    kbuf[loc] = k
    store.on_write(0, loc, k)
    q = (torch.randn(n, hq, d, generator=g) * scale).to(dev, torch.bfloat16)
    args = (r2t.to(dev), torch.tensor([1], device=dev), torch.tensor([n], dtype=torch.int32, device=dev),
            8192 // block, cfg)
    qd = (torch.randn(1, hq, d, generator=torch.Generator().manual_seed(1)) * scale).to(dev, torch.bfloat16)
    captured = store.layer_index(0)
    select_positions(qd, captured, *args, ops=ops)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = select_positions(qd, captured, *args, ops=ops)
    before = store.channels[0].clone()
    store.observe_prefill(0, q, k, lambda: kbuf)
    graph.replay()
    torch.cuda.synchronize()
    want = select_positions(qd, store.layer_index(0), *args, ops=ops)
    assert store.requantisations == 1 and not torch.equal(before, store.channels[0])
    assert torch.equal(out.sort(-1).values, want.sort(-1).values)
