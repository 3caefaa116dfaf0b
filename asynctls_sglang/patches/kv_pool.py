"""Build the AsyncTLS KV pools (which keep the sparse index) when asynctls decodes, and
charge the index's bytes per token in SGLang's KV sizing so the device memory budget holds."""
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
    if uses_asynctls(self.server_args):
        from asynctls_sglang.adapter.pools import AsyncTLSMHAPool

        kwargs["mha_pool_class"] = AsyncTLSMHAPool
    return original(self, *args, **kwargs)


def _build_mla(original, self, *args, **kwargs):
    if not uses_asynctls(self.server_args):
        return original(self, *args, **kwargs)
    import sglang.srt.mem_cache.kv_cache_configurator as conf

    from asynctls_sglang.adapter.pools import AsyncTLSMLAPool

    # NOTE: _build_mla_kv_pool names MLATokenToKVPool directly; construction is single-threaded.
    with swapped_attr(conf, "MLATokenToKVPool", AsyncTLSMLAPool):
        return original(self, *args, **kwargs)


def _cell_size(original, self, kvc, num_layers):
    size = original(self, kvc, num_layers)
    if not uses_asynctls(kvc.server_args):
        return size
    from sglang.srt.runtime_context import get_parallel

    from asynctls_sglang.config import AsyncTLSConfig
    from asynctls_sglang.memory.index_store import SparseIndexStore

    mc = kvc.model_config
    if kvc.use_mla_backend:
        heads, dim, is_mla = 1, mc.kv_lora_rank + mc.qk_rope_head_dim, True
    else:
        heads, dim, is_mla = mc.get_num_kv_heads(get_parallel().attn_tp_size), mc.head_dim, False
    cfg = AsyncTLSConfig.from_env()
    extra = SparseIndexStore.bytes_per_token(
        cfg, kv_heads=heads, head_dim=dim, is_mla=is_mla,
        kv_dtype_size=torch._utils._element_size(kvc.kv_cache_dtype), num_layers=num_layers)
    if cfg.offload and cfg.host_pool_tokens is None:
        # the index is kept per logical token: 4 per device token (adapter.allocator.logical_tokens);
        # an explicit host_pool_tokens is a fixed amount, not charged here (docs/offload.md)
        extra *= 4
    return size + extra


def apply() -> None:
    HookRegistry.register(f"{_CONF}._build_mha_kv_pool", _build_mha, HookType.AROUND)
    HookRegistry.register(f"{_CONF}._build_mla_kv_pool", _build_mla, HookType.AROUND)
    HookRegistry.register("sglang.srt.model_executor.pool_configurator.DefaultPoolConfigurator._compute_cell_size",
                          _cell_size, HookType.AROUND)
