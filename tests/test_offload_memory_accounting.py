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
    """36 layers, 8 KV heads x 128 (K+V), bf16, C = 259 + 3 window blocks of 64: ~2.4 GB a request."""
    row = resident_row_bytes(AsyncTLSConfig(offload=True), num_layers=36, kv_heads=8, head_dim=128,
                             v_head_dim=128, dtype_size=2, max_blocks=2049)
    assert row == 36 * ((259 + 3) * 64 * 8 * 256 * 2 + 8 * (2050 * 4 + 260 * 16))
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


def test_index_of_the_resident_share_of_the_host_pool_is_charged():
    """The default host pool counts the resident buffers (4 logical tokens per token of theirs);
    the index is kept per logical token on the device, so those tokens' index is charged too."""
    from asynctls_sglang.memory.index_store import SparseIndexStore
    from asynctls_sglang.patches.kv_pool import resident_index_bytes

    cfg, shape = AsyncTLSConfig(offload=True), dict(heads=8, dim=128, is_mla=False, dtype_size=2, num_layers=36)
    per_token = SparseIndexStore.bytes_per_token(cfg, kv_heads=8, head_dim=128, is_mla=False, kv_dtype_size=2,
                                                 num_layers=36)
    assert per_token == 36 * 8 * (16 + 8 + 8)  # INT4 keys (r = 32), scale/zero, min/max per block
    assert resident_index_bytes(cfg, 117_553, available=100 * 2**30, **shape) == 4 * 117_553 * per_token
    explicit = AsyncTLSConfig(offload=True, host_pool_tokens=600_000)
    assert resident_index_bytes(explicit, 117_553, available=1, **shape) == 0
    with pytest.raises(ConfigError, match="index of the default host pool.*--asynctls-host-pool-tokens"):
        resident_index_bytes(cfg, 117_553, available=2**30, **shape)
