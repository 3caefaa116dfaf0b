"""The host pool's default size: 4x the device pool, capped to what the host holds. On the H200
(123 GiB available) the uncapped default for Qwen3-8B's 371k-token device pool was refused at
start-up (203.87 GiB); an explicit size keeps its own check (check_host_fits, up to 90%)."""
from types import SimpleNamespace

import pytest

from asynctls_sglang.adapter.allocator import DEFAULT_HOST_FRACTION, OffloadPagedAllocator, logical_tokens
from asynctls_sglang.config import AsyncTLSConfig
from asynctls_sglang.memory.host_tier import HostMemoryError
from asynctls_sglang.patches import offload as offload_patch

GIB = 2 ** 30
QWEN3_TOKEN = 36 * 2 * 8 * 128 * 2  # bytes of one token's K/V, every layer (bf16)


def test_explicit_size_is_kept_rounded_to_blocks():
    cfg = AsyncTLSConfig(offload=True, host_pool_tokens=600_000)
    assert logical_tokens(cfg, 371_008, QWEN3_TOKEN, 123 * GIB) == 600_000 // 64 * 64


def test_default_is_four_device_pools_when_they_fit():
    cfg = AsyncTLSConfig(offload=True)
    assert logical_tokens(cfg, 8192) == 4 * 8192  # nothing known of the host: no cap
    assert logical_tokens(cfg, 8192, QWEN3_TOKEN, 24 * GIB) == 4 * 8192


def test_default_is_capped_by_the_host():
    cfg = AsyncTLSConfig(offload=True)
    n = logical_tokens(cfg, 371_008, QWEN3_TOKEN, 123 * GIB)
    assert n % 64 == 0 and n < 4 * 371_008
    assert n * QWEN3_TOKEN <= DEFAULT_HOST_FRACTION * 123 * GIB < (n + 64) * QWEN3_TOKEN
    assert 550_000 < n < 650_000  # what launch/qwen3_8b_h200_offload.sh sets by hand (589824)


def test_allocator_hands_out_the_ids_the_pool_sized_its_index_for(monkeypatch):
    """The pool decides the logical size once (host memory changes while the engine starts);
    the allocator takes that number instead of recomputing it."""
    monkeypatch.setattr(offload_patch, "_offload_on", lambda server_args: True)
    made = {}

    class Recorder(OffloadPagedAllocator):
        def __init__(self, size, page_size, *args, device_tokens):
            made.update(size=size, device_tokens=device_tokens)

    monkeypatch.setattr("asynctls_sglang.adapter.allocator.OffloadPagedAllocator", Recorder)
    pool = SimpleNamespace(page_size=64, asynctls_logical_tokens=12_352)
    runner = SimpleNamespace(server_args=None, kv_cache_dtype=None, device="cpu")
    offload_patch._build_allocator(None, runner, token_to_kv_pool=pool,
                                   sizes=SimpleNamespace(max_total_num_tokens=8192))
    assert made == {"size": 12_352, "device_tokens": 8192}


def test_a_host_that_cannot_hold_the_device_pool_is_refused():
    cfg = AsyncTLSConfig(offload=True)
    with pytest.raises(HostMemoryError, match="fewer than the device pool's 371008.*host-pool-tokens"):
        logical_tokens(cfg, 371_008, QWEN3_TOKEN, 40 * GIB)
    # an explicit size is the user's: only check_host_fits judges it
    assert logical_tokens(AsyncTLSConfig(offload=True, host_pool_tokens=1024), 371_008, QWEN3_TOKEN, 40 * GIB) == 1024


def test_default_counts_the_resident_buffers_as_kv_the_gpu_holds():
    """The H200 fixed-memory run (2026-11-29): a 219968-token KV cap split into a 102400-token
    device pool and resident buffers worth 117553 tokens. 4 x the pool alone (409600) held 4 of
    the 6 requests of 96k; counting the buffers the default holds all 6 (then the host caps it)."""
    cfg = AsyncTLSConfig(offload=True)
    assert logical_tokens(cfg, 102_400, QWEN3_TOKEN, 123 * GIB) == 4 * 102_400  # the old default
    n = logical_tokens(cfg, 102_400, QWEN3_TOKEN, 123 * GIB, resident_tokens=117_553)
    assert n >= 6 * 98_304 + 6 * 64
    assert n * QWEN3_TOKEN <= DEFAULT_HOST_FRACTION * 123 * GIB  # capped by the host, not 4 x 219953
    assert logical_tokens(cfg, 8192, resident_tokens=1024) == 4 * 9216
    # an explicit size ignores them
    assert logical_tokens(AsyncTLSConfig(offload=True, host_pool_tokens=4096), 8192, resident_tokens=10**6) == 4096
