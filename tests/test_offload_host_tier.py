"""HostKVTier: bit-exact write-through round trips (GQA and MLA), skipped entries, size errors."""
from __future__ import annotations

import pytest
import torch
from offload_testing import bits

from asynctls_sglang.memory import host_tier
from asynctls_sglang.memory.host_tier import HostKVTier, HostMemoryError

SHAPES = [
    pytest.param(2, 4, 64, 64, torch.bfloat16, id="gqa-hk4-bf16"),
    pytest.param(3, 3, 100, 36, torch.float16, id="gqa-hk3-d100-fp16"),
    pytest.param(2, 1, 576, None, torch.bfloat16, id="mla-576-bf16"),
    pytest.param(1, 2, 8, 8, torch.float32, id="gqa-fp32"),
]


def _device_pool(layers, pages, b, hk, d, dv, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    raw = lambda dim: torch.randint(-(1 << 15), 1 << 15, (pages * b, hk, dim), generator=gen,  # noqa: E731
                                    dtype=torch.int32).to(bits(torch.empty(0, dtype=dtype)).dtype).view(dtype)
    k = [raw(d) for _ in range(layers)]  # random bit patterns: NaNs, infs, denormals included
    v = None if dv is None else [raw(dv) for _ in range(layers)]
    return k, v


@pytest.mark.parametrize("layers, hk, d, dv, dtype", SHAPES)
def test_write_through_round_trip_bit_exact(layers, hk, d, dv, dtype):
    b, pages, blocks = 8, 6, 7
    dev_k, dev_v = _device_pool(layers, pages, b, hk, d, dv, dtype, seed=d)
    tier = HostKVTier(num_layers=layers, num_blocks=blocks, block_size=b, kv_heads=hk, head_dim=d,
                      v_head_dim=dv, dtype=dtype)
    assert not tier.pinned and tier.is_mla == (dv is None)
    poison = 0x7BCD if dtype.itemsize == 2 else 0x7BCDEF01
    for t in tier.k + (tier.v or []):
        bits(t).fill_(poison)
    src = torch.tensor([4, 0, 2, 5, 1, 3])  # device pages
    dst = torch.tensor([6, 1, 0, -1, 3, 2])  # host blocks; -1 skipped; entry 5 past the count
    tier.write_through(dev_k, dev_v, src, dst, torch.tensor([5]))
    for layer in range(layers):
        hk_blocks, hv_blocks = tier.blocks(layer)
        want_k = dev_k[layer].view(pages, b, hk, d)
        for s, h in ((4, 6), (0, 1), (2, 0), (1, 3)):
            assert torch.equal(bits(hk_blocks[h]), bits(want_k[s])), f"layer {layer} K block {h}"
            if dv is not None:
                assert torch.equal(bits(hv_blocks[h]), bits(dev_v[layer].view(pages, b, hk, dv)[s]))
        for h in (2, 4, 5):  # never written
            assert (bits(hk_blocks[h]) == poison).all(), f"block {h} was written"


def test_size_checked_before_allocating(monkeypatch):
    monkeypatch.setattr(host_tier, "available_host_bytes", lambda: 1 << 20)
    with pytest.raises(HostMemoryError, match="--asynctls-host-pool-tokens"):
        HostKVTier(num_layers=4, num_blocks=64, block_size=64, kv_heads=8, head_dim=128, v_head_dim=128,
                   dtype=torch.bfloat16)


def test_allocation_failure_is_explained(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("cudaHostAlloc failed")

    monkeypatch.setattr(host_tier.torch, "empty", fail)
    with pytest.raises(HostMemoryError, match="could not pin.*cudaHostAlloc failed"):
        HostKVTier(num_layers=1, num_blocks=2, block_size=4, kv_heads=1, head_dim=4, v_head_dim=4,
                   dtype=torch.float32, pin=True)


def test_available_memory_is_read():
    avail = host_tier.available_host_bytes()
    assert avail is None or avail > 0


def test_pinned_buffers_are_locked_in_place_at_their_exact_size(monkeypatch):
    """Pinned buffers are page-locked where they lie (cudaHostRegister) at their exact size, and
    unlocked by close(): torch's pinned allocator rounds each buffer up to a power of two (a
    1.23 GB layer took 2 GiB; 87 GB of pool locked 144 GB and the host killed the scheduler)."""
    calls = []

    class Cudart:
        def cudaHostRegister(self, ptr, size, flags):
            calls.append(("register", ptr, size, flags))
            return 0

        def cudaHostUnregister(self, ptr):
            calls.append(("unregister", ptr))
            return 0

    monkeypatch.setattr(host_tier.torch.cuda, "cudart", lambda: Cudart())
    tier = HostKVTier(num_layers=2, num_blocks=3, block_size=4, kv_heads=1, head_dim=5, v_head_dim=3,
                      dtype=torch.float32, pin=True)
    registered = [c for c in calls if c[0] == "register"]
    assert sorted(c[2] for c in registered) == [3 * 4 * 3 * 4] * 2 + [3 * 4 * 5 * 4] * 2  # exact, not 2^n
    assert {c[1] for c in registered} == {t.data_ptr() for t in tier.k + tier.v}
    assert all(c[3] & 2 for c in registered)  # mapped: the gather kernel reads through a device address
    tier.close()
    assert sorted(c[1] for c in calls if c[0] == "unregister") == sorted(c[1] for c in registered)
    tier.close()  # once only
    assert len(calls) == 8


def test_a_failed_lock_is_explained(monkeypatch):
    monkeypatch.setattr(host_tier.torch.cuda, "cudart",
                        lambda: type("C", (), {"cudaHostRegister": lambda self, *a: 2})())
    with pytest.raises(HostMemoryError, match="could not pin.*cudaHostRegister failed with CUDA error 2"):
        HostKVTier(num_layers=1, num_blocks=2, block_size=4, kv_heads=1, head_dim=4, v_head_dim=4,
                   dtype=torch.float32, pin=True)


def test_logical_keys_read_device_pages_where_mapped_else_the_host_and_requantise_alike():
    """The index's re-quantisation with offload reads keys by logical slot range: a mapped page from
    its device page, the rest from the host tier (one contiguous copy, not a CPU gather: 40-80 s
    per calibration at an 80 GB host pool). The index keys come out as from the dense keys."""
    from asynctls_sglang.config import AsyncTLSConfig
    from asynctls_sglang.memory.index_store import SparseIndexStore
    from asynctls_sglang.memory.offload_runtime import OffloadRuntime

    b, hk, d, blocks = 4, 2, 8, 6
    cfg = AsyncTLSConfig(block_size=b, block_budget=2, token_budget=8, sink_tokens=1, local_window=2,
                         index_channels=2, calibration_tokens=8)
    rt = OffloadRuntime(cfg, num_layers=1, kv_heads=hk, head_dim=d, v_head_dim=d, dtype=torch.float32,
                        device="cpu", num_rows=2, max_blocks=blocks, host_blocks=blocks)
    logical = torch.randn(blocks * b, hk, d)  # every logical slot's key
    rt.device_page = torch.tensor([2, -1, 0, -1, 3, -1])  # logical page -> device page
    k_pool = torch.full((5 * b, hk, d), float("nan"))
    for page, dev in enumerate(rt.device_page.tolist()):
        if dev >= 0:
            k_pool[dev * b:(dev + 1) * b] = logical[page * b:(page + 1) * b]
        else:
            rt.host.k[0][page * b:(page + 1) * b] = logical[page * b:(page + 1) * b]
    keys = rt.logical_keys(0, k_pool)
    assert torch.equal(keys[0:blocks * b], logical)
    assert torch.equal(keys[5:14], logical[5:14])  # ranges across pages, either side
    with pytest.raises(TypeError, match="contiguous"):
        keys[torch.arange(4)]

    stores = [SparseIndexStore(cfg, num_layers=1, num_slots=blocks * b, kv_heads=hk, head_dim=d, is_mla=False,
                               dtype=torch.float32, device="cpu") for _ in range(2)]
    q = torch.zeros(2, hk, d)
    q[..., [1, 6]] = 1.0
    stores[0].observe_prefill(0, q, logical[:2], lambda: logical)
    stores[1].observe_prefill(0, q, logical[:2], lambda: keys)
    assert stores[1].requantisations == 1 and torch.equal(stores[0].channels[0], stores[1].channels[0])
    assert torch.equal(stores[0].codes[0], stores[1].codes[0])
    assert torch.equal(stores[0].scale_zero[0], stores[1].scale_zero[0])
