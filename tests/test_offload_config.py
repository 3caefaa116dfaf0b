"""The offload settings of AsyncTLSConfig: defaults, derived sizes, and the error messages."""
from __future__ import annotations

import pytest

from asynctls_sglang.cli_config import split_asynctls_flags
from asynctls_sglang.config import AsyncTLSConfig, ConfigError


def test_defaults_and_derived_sizes():
    cfg = AsyncTLSConfig()
    assert cfg.offload is False and cfg.prefetch_depth == 1 and cfg.host_pool_tokens is None
    assert cfg.pinned_blocks == 1 + 2  # sink 16 -> 1 block; local 64 -> up to 2 blocks
    assert cfg.needed_blocks == 131 and cfg.resident_capacity == 2 * 128 + 3
    assert AsyncTLSConfig(selection="quest").selected_blocks == 2048 // 64
    assert AsyncTLSConfig(resident_blocks=131).resident_capacity == 131


@pytest.mark.parametrize("changes, message", [
    (dict(resident_blocks=130), "'resident_blocks' .*--asynctls-resident-blocks.*128 \\+ 3 = 131"),
    (dict(resident_blocks=0), "positive integer or None"),
    (dict(host_pool_tokens=1000), "multiple of block_size"),
    (dict(prefetch_depth=2), "--asynctls-prefetch-depth.*only 0"),
    (dict(max_miss_blocks_per_step=0), "--asynctls-max-miss-blocks-per-step"),
    (dict(offload=1), "--asynctls-offload.*true or false"),
    (dict(copy_programs=0), "--asynctls-copy-programs.*positive integer"),
], ids=["resident-too-small", "resident-zero", "host-pool-unaligned", "depth-2", "miss-zero", "offload-int",
        "copy-programs-zero"])
def test_offload_validation(changes, message):
    with pytest.raises(ConfigError, match=message):
        AsyncTLSConfig(**changes)


def test_flags_reach_the_fields():
    values, rest = split_asynctls_flags(["--asynctls-offload", "--asynctls-host-pool-tokens", "auto",
                                         "--asynctls-resident-blocks=300", "--port", "1"])
    assert values == {"offload": True, "host_pool_tokens": None, "resident_blocks": 300}
    assert rest == ["--port", "1"]
    assert AsyncTLSConfig.from_dict(values).resident_capacity == 300


def test_offload_timing_needs_eager_decode(monkeypatch):
    """CUDA events cannot be recorded inside a captured graph: refused at start, with the fix named."""
    from types import SimpleNamespace

    from asynctls_sglang.adapter import offload
    from asynctls_sglang.config import AsyncTLSConfig, ConfigError

    monkeypatch.setenv("ASYNCTLS_OFFLOAD_TIMING", "1")
    runner = SimpleNamespace(server_args=SimpleNamespace(disable_cuda_graph=False),
                             req_to_token_pool=SimpleNamespace(req_to_token=None),
                             token_to_kv_pool_allocator=None)
    pool = SimpleNamespace(asynctls_kv_lists=lambda: ([], []), head_num=2, head_dim=8, v_head_dim=8)
    with pytest.raises(ConfigError, match="--disable-cuda-graph"):
        offload.build_offload_runtime(runner, AsyncTLSConfig(offload=True), pool)
