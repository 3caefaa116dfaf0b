"""Build the AsyncTLS KV pools (which keep the sparse index) when asynctls decodes, and
charge the index's bytes per token in SGLang's KV sizing so the device memory budget holds.
With offload, the resident block buffers (a fixed amount per running request) are charged too:
taken off the profiled KV budget (_profile_available_bytes) before SGLang sizes its pool,
max_running_requests clamped to the rows charged (memory.offload_runtime.plan_resident_rows; a
clear start-up error when they cannot fit); and so is the index of the logical tokens the device
pool's per-token charge does not cover (resident_index_bytes, fixed_index_bytes)."""
from __future__ import annotations

import torch
from sglang.srt.plugins.hook_registry import HookRegistry, HookType

from asynctls_sglang import BACKEND_NAME
from asynctls_sglang.utils import swapped_attr

_CONF = "sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator"


def uses_asynctls(server_args) -> bool:
    names = (getattr(server_args, "attention_backend", None),
             getattr(server_args, "decode_attention_backend", None))
    return BACKEND_NAME in names


def _build_mha(original, self, *args, **kwargs):
    if not uses_asynctls(self.server_args):
        return original(self, *args, **kwargs)
    from asynctls_sglang.adapter.pools import AsyncTLSMHAPool

    kwargs["mha_pool_class"] = AsyncTLSMHAPool
    with swapped_attr(AsyncTLSMHAPool, "asynctls_resident_tokens", _RESIDENT_TOKENS.pop(id(self), 0)):
        return original(self, *args, **kwargs)


def _build_mla(original, self, *args, **kwargs):
    if not uses_asynctls(self.server_args):
        return original(self, *args, **kwargs)
    import sglang.srt.mem_cache.kv_cache_configurator as conf

    from asynctls_sglang.adapter.pools import AsyncTLSMLAPool

    # NOTE: _build_mla_kv_pool names MLATokenToKVPool directly; construction is single-threaded.
    with swapped_attr(conf, "MLATokenToKVPool", AsyncTLSMLAPool), \
            swapped_attr(AsyncTLSMLAPool, "asynctls_resident_tokens", _RESIDENT_TOKENS.pop(id(self), 0)):
        return original(self, *args, **kwargs)


def _kv_shape(kvc) -> tuple[int, int, int | None]:
    """(KV heads, key dim, value dim) of one layer's cache; MLA: one latent "head" whose first
    channels are V (value dim None)."""
    from sglang.srt.runtime_context import get_parallel

    mc = kvc.model_config
    if kvc.use_mla_backend:
        return 1, mc.kv_lora_rank + mc.qk_rope_head_dim, None
    heads = mc.get_num_kv_heads(get_parallel().attn_tp_size)
    return heads, mc.head_dim, getattr(mc, "v_head_dim", None) or mc.head_dim


def _index_bytes(cfg, kvc, num_layers: int) -> int:
    """Device bytes of the sparse index per token (every layer) for kvc's model."""
    from asynctls_sglang.memory.index_store import SparseIndexStore

    heads, dim, _ = _kv_shape(kvc)
    return SparseIndexStore.bytes_per_token(cfg, kv_heads=heads, head_dim=dim, is_mla=kvc.use_mla_backend,
                                            kv_dtype_size=torch._utils._element_size(kvc.kv_cache_dtype),
                                            num_layers=num_layers)


def _cell_size(original, self, kvc, num_layers):
    size = original(self, kvc, num_layers)
    if not uses_asynctls(kvc.server_args):
        return size
    from asynctls_sglang.config import AsyncTLSConfig

    cfg = AsyncTLSConfig.from_env()
    if cfg.offload and cfg.host_pool_tokens is not None:
        # the index covers the fixed host pool, whatever the device pool: charged whole (_profile)
        return size
    extra = _index_bytes(cfg, kvc, num_layers)
    if cfg.offload:
        # the index is kept per logical token: at most DEFAULT_HOST_RATIO per device token
        # (adapter.allocator.logical_tokens; fewer when the host caps it: then overcharged)
        from asynctls_sglang.adapter.allocator import DEFAULT_HOST_RATIO

        extra *= DEFAULT_HOST_RATIO
    return size + extra


_RESIDENT_ROWS: dict[int, int] = {}  # id(configurator) -> running requests charged (single-threaded start-up)
_RESIDENT_TOKENS: dict[int, int] = {}  # id(configurator) -> the resident buffers' bytes in K/V tokens


def _profile(original, self, *args, **kwargs):
    """The KV budget SGLang sizes its pool (and its request count) from, less the resident buffers."""
    from asynctls_sglang.config import AsyncTLSConfig

    available = original(self, *args, **kwargs)
    if not uses_asynctls(self.server_args) or not AsyncTLSConfig.from_env().offload:
        return available
    import logging
    import math

    from sglang.srt.runtime_context import get_schedule

    from asynctls_sglang.memory.host_tier import available_host_bytes
    from asynctls_sglang.memory.offload_runtime import plan_resident_rows, resident_row_bytes

    cfg = AsyncTLSConfig.from_env()
    mc = self.model_config
    heads, dim, v_dim = _kv_shape(self)
    dtype_size = torch._utils._element_size(self.kv_cache_dtype)
    layers = self.layer_info.num_effective_layers
    row = resident_row_bytes(cfg, num_layers=layers, kv_heads=heads, head_dim=dim, v_head_dim=v_dim,
                             dtype_size=dtype_size, max_blocks=math.ceil((mc.context_len + 8) / cfg.block_size))
    requested = get_schedule().max_running_requests
    if requested is not None:
        requested //= self.ps.attn_dp_size
    n, cost = plan_resident_rows(available, row, requested)
    token_bytes = layers * heads * (dim + (v_dim or 0)) * dtype_size
    resident_tokens = cost // token_bytes
    index_bytes = _index_bytes(cfg, self, layers)
    if cfg.host_pool_tokens is not None:  # the whole index is this fixed size (_cell_size charges none)
        cost += fixed_index_bytes(cfg.host_pool_tokens + cfg.block_size, index_bytes, available - cost)
    else:
        cost += resident_index_bytes(resident_tokens, token_bytes=token_bytes, index_bytes=index_bytes,
                                     budget=available - cost, max_total_tokens=get_schedule().max_total_tokens,
                                     host_bytes=available_host_bytes())
    _RESIDENT_ROWS[id(self)] = n
    _RESIDENT_TOKENS[id(self)] = resident_tokens
    logging.getLogger(__name__).info(
        "asynctls offload: %.3f GiB of the KV budget charged for the resident buffers of %d running requests "
        "(%d tokens' worth of KV, counted in the default host pool) and the index beyond the device pool's",
        cost / 2**30, n, resident_tokens)
    return available - cost


def resident_index_bytes(resident_tokens: int, *, token_bytes: int, index_bytes: int, budget: int,
                         max_total_tokens: int | None, host_bytes: int | None) -> int:
    """GPU bytes to charge for the index of the logical tokens the default host pool adds for the
    resident buffers: it is DEFAULT_HOST_RATIO x (device pool P + resident_tokens R), capped by
    the host (adapter.allocator.logical_tokens), and _cell_size charges the index of
    DEFAULT_HOST_RATIO x P already, so the extra is at most min(4R, max(0, cap - 4P)) tokens.
    P is not known yet (SGLang sizes it from what this leaves); its least value is the budget less
    the largest charge over the full per-token cost (K/V + 4 index entries), or --max-total-tokens
    when that is lower. token_bytes / index_bytes: K/V and index bytes of one token (every
    layer); budget: the KV budget left after the resident buffers. Raises ConfigError when the
    charge leaves no KV pool."""
    from asynctls_sglang.adapter.allocator import DEFAULT_HOST_RATIO, host_cap_tokens
    from asynctls_sglang.config import ConfigError, flag_name

    ratio, cap = DEFAULT_HOST_RATIO, host_cap_tokens(token_bytes, host_bytes)
    most = min(ratio * resident_tokens, cap) * index_bytes
    least_pool = (budget - most) // (token_bytes + ratio * index_bytes)
    if max_total_tokens is not None:
        least_pool = min(least_pool, max_total_tokens)
    need = int(min(ratio * resident_tokens, max(0, cap - ratio * max(least_pool, 0))) * index_bytes)
    if need >= budget:
        raise ConfigError(f"asynctls offload: the index of the default host pool needs {need / 2**30:.2f} GiB "
                          f"of GPU memory for the resident buffers' share, but only {budget / 2**30:.2f} GiB "
                          f"are left for the KV cache; set {flag_name('host_pool_tokens')} or lower "
                          "--max-running-requests")
    return need


def fixed_index_bytes(logical_tokens: int, index_bytes: int, budget: int) -> int:
    """GPU bytes of the index over an explicit host_pool_tokens (kept per logical token on the
    device: index_bytes each, every layer), charged from the KV budget; ConfigError when it
    leaves no KV pool."""
    from asynctls_sglang.config import ConfigError, flag_name

    need = logical_tokens * index_bytes
    if need >= budget:
        raise ConfigError(f"asynctls offload: the index of a {logical_tokens}-token host pool needs "
                          f"{need / 2**30:.2f} GiB of GPU memory, but only {budget / 2**30:.2f} GiB are left for "
                          f"the KV cache; lower {flag_name('host_pool_tokens')} or raise --mem-fraction-static")
    return need


def _resolve_pool(original, self, *args, **kwargs):
    config = original(self, *args, **kwargs)
    rows = _RESIDENT_ROWS.pop(id(self), None)
    if rows is not None and config.max_running_requests is not None:
        config.max_running_requests = min(config.max_running_requests, rows)  # the rows charged
    return config


def apply() -> None:
    HookRegistry.register(f"{_CONF}._build_mha_kv_pool", _build_mha, HookType.AROUND)
    HookRegistry.register(f"{_CONF}._build_mla_kv_pool", _build_mla, HookType.AROUND)
    HookRegistry.register("sglang.srt.model_executor.pool_configurator.DefaultPoolConfigurator._compute_cell_size",
                          _cell_size, HookType.AROUND)
    HookRegistry.register(f"{_CONF}._profile_available_bytes", _profile, HookType.AROUND)
    HookRegistry.register(f"{_CONF}._resolve_memory_pool_config", _resolve_pool, HookType.AROUND)
