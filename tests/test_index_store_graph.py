"""The index under CUDA graphs: a captured decode keeps the tensors it was captured with.

A decode CUDA graph records the addresses of every tensor its kernels read, and SGLang captures
the decode graphs at start-up, before any real prefill. The index's channel set is calibrated
later, at the first real prefills (``observe_prefill``): it must change the captured tensors in
place, or the replays keep scoring tokens at the start-up channels (or at freed memory) while
the index keys are re-quantised at the calibrated ones. Seen on the H200 as nonsense answers
with ``--cuda-graph-backend-prefill disabled`` (no prefill-graph capture calibrating first).
Emulated here on the CPU by holding the LayerIndex taken before calibration, as a graph does.
"""
from __future__ import annotations

import torch

from asynctls_sglang.config import AsyncTLSConfig
from asynctls_sglang.memory.index_store import SparseIndexStore
from asynctls_sglang.ops.select import select_positions


def _store_with_keys(hq=9, hk=3, d=64, block=64, n=1024, seed=0):
    """One request of n tokens in a paged pool (SmolLM2-135M's heads), keys already written."""
    g = torch.Generator().manual_seed(seed)
    cfg = AsyncTLSConfig(block_size=block, block_budget=8, token_budget=256, sink_tokens=16,
                         local_window=64, calibration_tokens=4 * n)
    slots = (n // block + 4) * block
    store = SparseIndexStore(cfg, num_layers=1, num_slots=slots, kv_heads=hk, head_dim=d, is_mla=False,
                             dtype=torch.float32, device="cpu")
    r2t = torch.zeros(2, 4096, dtype=torch.int32)
    r2t[1, :n] = torch.arange(block, block + n, dtype=torch.int32)  # page 0 is padding
    # keys whose energy sits in the last channels: calibration moves away from the first r
    scale = torch.linspace(0.05, 3.0, d)
    k = torch.randn(n, hk, d, generator=g) * scale
    kbuf = torch.zeros(slots, hk, d)
    loc = r2t[1, :n].long()
    kbuf[loc] = k
    store.on_write(0, loc, k)
    q = torch.randn(n, hq, d, generator=g) * scale
    return cfg, store, r2t, kbuf, loc, k, q


def test_calibration_changes_the_captured_channels_in_place():
    cfg, store, r2t, kbuf, loc, k, q = _store_with_keys()
    captured = store.layer_index(0)  # what a decode graph captured at start-up
    before = captured.channels.clone()
    ptrs = [t.data_ptr() for t in captured]
    store.observe_prefill(0, q, k, lambda: kbuf)  # the first real prefill
    fresh = store.layer_index(0)
    assert store.requantisations == 1 and not torch.equal(fresh.channels, before)
    assert [t.data_ptr() for t in fresh] == ptrs, "calibration replaced an index tensor a graph may hold"
    assert torch.equal(captured.channels, fresh.channels)


def test_selection_through_the_captured_index_equals_the_fresh_one():
    cfg, store, r2t, kbuf, loc, k, q = _store_with_keys()
    captured = store.layer_index(0)
    store.observe_prefill(0, q, k, lambda: kbuf)
    qd = torch.randn(1, 9, 64, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.05, 3.0, 64)
    args = (r2t, torch.tensor([1]), torch.tensor([loc.shape[0]]), 4096 // cfg.block_size, cfg)
    want = select_positions(qd, store.layer_index(0), *args)
    got = select_positions(qd, captured, *args)
    assert torch.equal(got, want)
