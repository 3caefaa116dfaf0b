"""GPU memory accounting of the offload resident buffers (arithmetic, on the CPU): the bytes
charged per running request equal what OffloadRuntime allocates, and the KV budget SGLang sizes
its pool from is reduced by them, or start-up stops with the settings to change."""
from __future__ import annotations

import pytest
import torch

from asynctls_sglang.config import AsyncTLSConfig, ConfigError
from asynctls_sglang.memory.offload_runtime import OffloadRuntime, plan_resident_rows, resident_row_bytes

CFG = AsyncTLSConfig(block_size=16, block_budget=16, token_budget=256, sink_tokens=4, local_window=16,
                     offload=True)


@pytest.mark.parametrize("shape", [dict(kv_heads=2, head_dim=64, v_head_dim=64),  # GQA
                                   dict(kv_heads=1, head_dim=576, v_head_dim=None)],  # MLA latent
                         ids=["gqa", "mla"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_bytes_equal_the_runtime_allocation(shape, dtype):
    rows, layers, max_blocks = 5, 3, 40
    rt = OffloadRuntime(CFG, num_layers=layers, dtype=dtype, device="cpu", num_rows=rows,
                        max_blocks=max_blocks, host_blocks=8, **shape)
    row = resident_row_bytes(CFG, num_layers=layers, dtype_size=dtype.itemsize, max_blocks=max_blocks, **shape)
    assert rt.device_nbytes == rows * row


def test_qwen3_8b_defaults_cost_what_the_docs_say():
    """36 layers, 8 KV heads x 128 (K+V), bf16, C = 259 blocks of 64 (the window is read from the
    device pool: no window region since session 20): ~2.4 GB a request."""
    row = resident_row_bytes(AsyncTLSConfig(offload=True), num_layers=36, kv_heads=8, head_dim=128,
                             v_head_dim=128, dtype_size=2, max_blocks=2049)
    assert row == 36 * (259 * 64 * 8 * 256 * 2 + 8 * (2050 * 4 + 260 * 16))
    assert 2.4e9 < row < 2.5e9


def test_plan_charges_the_requested_rows_plus_padding():
    n, cost = plan_resident_rows(100 * 2**30, 2**30, requested=8)
    assert (n, cost) == (8, 9 * 2**30)  # SGLang's padding row 0 has buffers too


def test_plan_without_a_request_count_takes_half_the_budget_at_most():
    n, cost = plan_resident_rows(100 * 2**30, 2**30, requested=None)
    assert n == 49 and cost == 50 * 2**30
    assert plan_resident_rows(10**15, 1000, None)[0] == 2048  # never more than SGLang's usual default


def test_plan_refuses_buffers_that_leave_no_kv_pool():
    with pytest.raises(ConfigError, match="--max-running-requests.*--asynctls-resident-blocks.*--mem-fraction-static"):
        plan_resident_rows(40 * 2**30, int(2.4e9), requested=17)  # 18 x 2.4 GB > 40 GiB
    with pytest.raises(ConfigError, match="resident block buffers need"):
        plan_resident_rows(2**30, 2**30, requested=None)


QWEN3 = dict(token_bytes=36 * 8 * 256 * 2, index_bytes=36 * 8 * (16 + 8 + 8))  # K/V and index per token
GIB = 2**30


def test_index_of_the_resident_share_is_charged_under_a_kv_cap():
    """The H200 fixed-memory run: --max-total-tokens 102400 device tokens, resident buffers worth
    117553, a 123 GiB host (cap ~627k tokens). The default host pool holds min(4 x 219953, cap);
    _cell_size charged the index of 4 x 102400 of them; the rest is charged here."""
    from asynctls_sglang.adapter.allocator import host_cap_tokens
    from asynctls_sglang.memory.index_store import SparseIndexStore
    from asynctls_sglang.patches.kv_pool import resident_index_bytes

    assert QWEN3["index_bytes"] == SparseIndexStore.bytes_per_token(
        AsyncTLSConfig(offload=True), kv_heads=8, head_dim=128, is_mla=False, kv_dtype_size=2, num_layers=36)
    cap = host_cap_tokens(QWEN3["token_bytes"], 123 * GIB)
    got = resident_index_bytes(117_553, budget=100 * GIB, max_total_tokens=102_400, host_bytes=123 * GIB, **QWEN3)
    assert got == (cap - 4 * 102_400) * QWEN3["index_bytes"]  # ~2 GB: the 217k logical tokens past 4 x the pool


def test_no_charge_when_four_device_pools_already_fill_the_host():
    """A whole H200 (no KV cap): the device pool alone reaches the host cap, so the resident
    share adds no logical token and nothing is charged for it."""
    from asynctls_sglang.patches.kv_pool import resident_index_bytes

    assert resident_index_bytes(339_000, budget=50 * GIB, max_total_tokens=None, host_bytes=123 * GIB, **QWEN3) == 0


def test_without_a_host_cap_the_whole_resident_share_is_charged():
    from asynctls_sglang.patches.kv_pool import resident_index_bytes

    got = resident_index_bytes(1000, budget=GIB, max_total_tokens=2048, host_bytes=None, **QWEN3)
    assert got == 4 * 1000 * QWEN3["index_bytes"]


def test_a_charge_that_leaves_no_pool_is_refused():
    from asynctls_sglang.patches.kv_pool import resident_index_bytes

    with pytest.raises(ConfigError, match="index of the default host pool.*--asynctls-host-pool-tokens"):
        resident_index_bytes(117_553, budget=GIB, max_total_tokens=1024, host_bytes=None, **QWEN3)


def test_an_explicit_host_pool_charges_its_whole_index():
    """With host_pool_tokens set, _cell_size charges no index per device token: the index of the
    whole logical range is a fixed size, charged from the budget (it was not charged at all)."""
    from asynctls_sglang.patches.kv_pool import fixed_index_bytes

    assert fixed_index_bytes(600_064, QWEN3["index_bytes"], 100 * GIB) == 600_064 * QWEN3["index_bytes"]  # ~5.5 GB
    with pytest.raises(ConfigError, match="600064-token host pool.*--asynctls-host-pool-tokens"):
        fixed_index_bytes(600_064, QWEN3["index_bytes"], 4 * GIB)


@pytest.mark.parametrize("fields, ratio", [({}, 1), ({"offload": True}, 4),
                                           ({"offload": True, "host_pool_tokens": 4096}, 0)],
                         ids=["no-offload", "offload-auto", "offload-explicit"])
def test_index_charged_per_device_token_once(monkeypatch, fields, ratio):
    """SGLang's per-token cell size carries the index once per device token without offload, for
    the DEFAULT_HOST_RATIO logical tokens of each with the auto host pool, and not at all with an
    explicit one (its whole index is a fixed charge in _profile; charging it here too counted it
    twice)."""
    import json
    from types import SimpleNamespace

    from asynctls_sglang import BACKEND_NAME
    from asynctls_sglang.patches import kv_pool

    cfg = AsyncTLSConfig(**fields)
    monkeypatch.setenv("ASYNCTLS_CONFIG", json.dumps(fields))
    mc = SimpleNamespace(kv_lora_rank=512, qk_rope_head_dim=64)  # MLA: no tensor-parallel lookup
    kvc = SimpleNamespace(server_args=SimpleNamespace(attention_backend=BACKEND_NAME), model_config=mc,
                          use_mla_backend=True, kv_cache_dtype=torch.bfloat16)
    per_token = kv_pool._index_bytes(cfg, kvc, 27)
    assert per_token > 0
    assert kv_pool._cell_size(lambda self, kvc, n: 1000, None, kvc, 27) == 1000 + ratio * per_token
