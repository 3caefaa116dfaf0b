"""The batched, paged torch ops against the per-request reference."""
from __future__ import annotations

import pytest
import torch

from asynctls_sglang import reference as R
from asynctls_sglang.config import AsyncTLSConfig
from asynctls_sglang.memory.index_store import SparseIndexStore
from asynctls_sglang.ops import torch_ops as O
from asynctls_sglang.ops.select import select_positions


def paged_batch(lengths, hk, d, block, seed=0):
    """Requests laid out in shuffled pages of a pool, as SGLang's paged allocator does."""
    g = torch.Generator().manual_seed(seed)
    pages_needed = sum(-(-n // block) for n in lengths)
    pages = (torch.randperm(pages_needed + 5, generator=g)[:pages_needed] + 1).tolist()
    r2t = torch.zeros(len(lengths) + 1, 4096, dtype=torch.int32)
    keys = []
    for row, n in enumerate(lengths, start=1):
        for p in range(n):
            if p % block == 0:
                page = pages.pop()
            r2t[row, p] = page * block + p % block
        keys.append(torch.randn(n, hk, d, generator=g))
    return r2t, keys, (pages_needed + 6) * block


CASES = [
    pytest.param([300], 9, 3, 64, id="one-gqa3"),
    pytest.param([77, 400, 130], 8, 2, 32, id="ragged-gqa4"),
    pytest.param([250, 90], 16, 1, 576, id="mla-576"),
    pytest.param([65, 64, 63], 4, 4, 64, id="mha-block-edges"),
]


@pytest.mark.parametrize("lengths, hq, hk, d", CASES)
@pytest.mark.parametrize("selection", ["tls", "quest"])
def test_batched_selection_equals_reference(lengths, hq, hk, d, selection):
    block = 16
    cfg = AsyncTLSConfig(block_size=block, block_budget=6, token_budget=64, sink_tokens=4, local_window=12,
                         selection=selection, calibration_tokens=10**6)
    r2t, keys, slots = paged_batch(lengths, hk, d, block)
    store = SparseIndexStore(cfg, num_layers=1, num_slots=slots, kv_heads=hk, head_dim=d, is_mla=hk == 1 and d == 576,
                             dtype=torch.float32, device="cpu")
    kbuf = torch.zeros(slots + block, hk, d)
    for row, k in enumerate(keys, start=1):
        loc = r2t[row, :k.shape[0]].long()
        kbuf[loc] = k
        store.observe_prefill(0, torch.randn(k.shape[0], hq, d), k, lambda: kbuf)
        # write in uneven chunks, as chunked prefill and decode do
        for s, e in ((0, 5), (5, 40), (40, 41), (41, k.shape[0])):
            if s < k.shape[0]:
                store.on_write(0, loc[s:e], k[s:e])
    q = torch.randn(len(lengths), hq, d)
    lens = torch.tensor(lengths)
    got = select_positions(q, store.layer_index(0), r2t, torch.arange(1, len(lengths) + 1), lens,
                           -(-max(lengths) // block), cfg)
    for i, k in enumerate(keys):
        want = R.select_tokens(q[i], k, store.channels[0], cfg).positions
        assert torch.equal(got[i], want), f"request {i}"


def test_summaries_reset_when_a_page_is_reused():
    kmin, kmax = torch.zeros(4, 1, 2), torch.zeros(4, 1, 2)
    flag = torch.zeros(4, dtype=torch.int32)
    O.update_block_summaries(kmin, kmax, flag, torch.tensor([8, 9, 10]), torch.full((3, 1, 2), 100.0), 4)
    assert kmax[2].tolist() == [[100.0, 100.0]]
    # page 2 freed and reused by another request: its first write (offset 0) starts it afresh
    O.update_block_summaries(kmin, kmax, flag, torch.tensor([8]), torch.full((1, 1, 2), -1.0), 4)
    assert kmax[2].tolist() == [[-1.0, -1.0]] and kmin[2].tolist() == [[-1.0, -1.0]]
    O.update_block_summaries(kmin, kmax, flag, torch.tensor([9]), torch.full((1, 1, 2), 5.0), 4)
    assert kmax[2].tolist() == [[5.0, 5.0]] and kmin[2].tolist() == [[-1.0, -1.0]]


def test_attention_over_all_positions_equals_dense_reference():
    torch.manual_seed(0)
    r2t, keys, slots = paged_batch([50, 33], 2, 16, 8)
    kbuf, vbuf = torch.zeros(slots + 8, 2, 16), torch.zeros(slots + 8, 2, 16)
    vals = [torch.randn_like(k) for k in keys]
    for row, (k, v) in enumerate(zip(keys, vals), start=1):
        kbuf[r2t[row, :k.shape[0]].long()] = k
        vbuf[r2t[row, :k.shape[0]].long()] = v
    q = torch.randn(2, 6, 16)
    pos = O.dense_positions(torch.tensor([50, 33]), 2, 50)
    out = O.sparse_decode_attention(q, kbuf, vbuf, r2t, torch.tensor([1, 2]), pos, 0.25)
    for i in range(2):
        torch.testing.assert_close(out[i], R.dense_attention(q[i], keys[i], vals[i], 0.25))


def test_index_store_requantises_when_channels_change_and_freezes():
    cfg = AsyncTLSConfig(block_size=4, block_budget=2, token_budget=8, sink_tokens=1, local_window=2,
                         index_channels=2, calibration_tokens=8)
    store = SparseIndexStore(cfg, num_layers=1, num_slots=16, kv_heads=1, head_dim=4, is_mla=False,
                             dtype=torch.float32, device="cpu")
    kbuf = torch.randn(20, 1, 4)
    store.on_write(0, torch.arange(16), kbuf[:16])
    q = torch.zeros(2, 1, 4)
    q[..., 3] = 1.0
    q[..., 2] = 1.0
    store.observe_prefill(0, q, kbuf[:2], lambda: kbuf)
    assert store.channels[0].tolist() == [[2, 3]] and store.requantisations == 1
    codes, sz = R.quantize_index_keys(kbuf[:16], store.channels[0])
    assert torch.equal(store.codes[0], codes) and torch.equal(store.scale_zero[0], sz)
    store.observe_prefill(0, torch.ones(20, 1, 4), kbuf, lambda: kbuf)  # reaches 8 tokens: frozen
    frozen = store.channels[0].clone()
    store.observe_prefill(0, torch.randn(20, 1, 4) * 100, kbuf, lambda: kbuf)
    assert torch.equal(store.channels[0], frozen)
