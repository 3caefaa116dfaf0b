"""KV pools that keep the AsyncTLS index (block summaries, INT4 index keys) as K/V are written.

Every write path of SGLang's MHA and MLA pools ends in ``set_kv_buffer`` or
``set_mla_kv_buffer``; both are wrapped here, so prefill, decode and the DeepSeek MHA prefill
path (which writes the latent cache itself) all keep the index current.
"""
from __future__ import annotations

import logging

import torch
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, MLATokenToKVPool, unwrap_write_loc

from asynctls_sglang.adapter.allocator import logical_tokens
from asynctls_sglang.config import AsyncTLSConfig, flag_name
from asynctls_sglang.memory.host_tier import available_host_bytes, check_host_fits
from asynctls_sglang.memory.index_store import SparseIndexStore
from asynctls_sglang.ops.dispatch import ops_for_device, uses_kernels


class AsyncTLSPoolMixin:
    """Adds ``asynctls_index`` (a SparseIndexStore) to a SGLang KV pool."""

    asynctls_index: SparseIndexStore
    _SUPPORTED = (torch.float32, torch.float16, torch.bfloat16)
    #: the resident block buffers' bytes in tokens of K/V, set around construction by
    #: patches.kv_pool (the default host pool counts them as KV the GPU holds)
    asynctls_resident_tokens = 0

    def _init_asynctls(self, *, kv_heads: int, head_dim: int, is_mla: bool) -> None:
        cfg = AsyncTLSConfig.from_env()
        if self.dtype not in self._SUPPORTED:
            raise ValueError(f"asynctls: KV cache dtype {self.dtype} is not supported (use "
                             f"--kv-cache-dtype auto: bf16/fp16/fp32)")
        if self.page_size != cfg.block_size:
            raise ValueError(f"asynctls needs SGLang's page size equal to the block size: "
                             f"--page-size {self.page_size} vs --asynctls-block-size {cfg.block_size}")
        device = torch.device(self.device)
        # With offload, SGLang's slot ids are logical (over the host pool) and the index follows
        # them; this pool's buffers are the device pages (adapter.allocator).
        slots = self.size
        if cfg.offload:  # before the index (sized by logical slots) is allocated
            channels = head_dim + (0 if is_mla else self.v_head_dim)
            block_bytes = self.page_size * kv_heads * channels * self.dtype.itemsize
            slots = logical_tokens(cfg, self.size, block_bytes * self.layer_num // self.page_size,
                                   available_host_bytes(), self.asynctls_resident_tokens)
            check_host_fits(slots, self.layer_num, self.page_size, block_bytes, device.type == "cuda")
            if cfg.host_pool_tokens is None:
                logging.getLogger(__name__).info(
                    "asynctls offload: host pool of %d tokens (%.2f GiB; %s to choose)", slots,
                    slots // self.page_size * block_bytes * self.layer_num / 2**30, flag_name("host_pool_tokens"))
        # the offload allocator hands out exactly these logical ids (patches.offload)
        self.asynctls_logical_tokens = slots
        self.asynctls_device_page: torch.Tensor | None = None  # set by OffloadPagedAllocator
        self._device_loc_cache: tuple | None = None  # (SGLang's locations, device slots): _device_loc
        self.asynctls_index = SparseIndexStore(
            cfg, num_layers=self.layer_num, num_slots=slots + self.page_size, kv_heads=kv_heads,
            head_dim=head_dim, is_mla=is_mla, dtype=self.dtype, device=device, ops=ops_for_device(device))
        # the decode ops are the Triton kernels (a GPU, or ASYNCTLS_OPS=triton under the interpreter)
        self.asynctls_kernels = uses_kernels(self.asynctls_index.ops)

    def _device_loc(self, loc_info, layer_id: int):
        """SGLang's (logical, with offload) write locations -> this pool's slots. Identity unless
        the offload allocator registered its page map; a logical page without a device page
        writes to the padding page 0 (never read; the backend maps every page it writes).

        NOTE: computed at the first layer of a forward and reused by the others for the same
        locations (the page map only changes between forwards): seven small kernels per layer
        otherwise, on every decode step. Inside a captured graph the first layer's kernels are
        replayed and the later layers read their output."""
        dp = self.asynctls_device_page
        if dp is None:
            return loc_info
        cached = self._device_loc_cache
        if layer_id != self.start_layer and cached is not None and cached[0] is loc_info:
            return cached[1]
        loc, _, _ = unwrap_write_loc(loc_info)
        b = self.page_size
        if self.asynctls_kernels:  # one launch for the seven below
            from asynctls_sglang.kernels.common.offload_tables import device_loc

            out = device_loc(loc, dp, b)
        else:
            loc = loc.long()
            page = dp[loc // b]
            out = torch.where(page >= 0, page * b + loc % b, loc % b)
        self._device_loc_cache = (loc_info, out)
        return out

    def asynctls_write_slots(self, loc, layer_id: int) -> torch.Tensor:
        """This pool's slots of SGLang's write locations (the rows a forward just wrote)."""
        return self._device_loc(loc, layer_id)

    def _layer_slot(self, layer_id: int) -> int:
        return layer_id - self.start_layer

    def move_kv_cache(self, tgt_loc, src_loc):
        # Deliberate: speculative decoding (the only caller) is refused at start-up
        # (patches.validate_config); the index would not follow a KV move.
        raise NotImplementedError("asynctls does not support KV moves (speculative decoding)")


class AsyncTLSMHAPool(AsyncTLSPoolMixin, MHATokenToKVPool):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_asynctls(kv_heads=self.head_num, head_dim=self.head_dim, is_mla=False)

    def asynctls_kv_lists(self) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Per-layer device K and V buffers [slots, Hk, D] (the offloading engine reads them)."""
        return self.k_buffer, self.v_buffer

    def set_kv_buffer(self, layer, loc_info, cache_k, cache_v, k_scale=None, v_scale=None,
                      layer_id_override=None, dcp_kv_mask=None):
        layer_id = layer_id_override if layer_id_override is not None else layer.layer_id
        super().set_kv_buffer(layer, self._device_loc(loc_info, layer_id), cache_k, cache_v, k_scale, v_scale,
                              layer_id_override, dcp_kv_mask)
        loc, _, _ = unwrap_write_loc(loc_info)
        self.asynctls_index.on_write(self._layer_slot(layer_id), loc, cache_k)


class AsyncTLSMLAPool(AsyncTLSPoolMixin, MLATokenToKVPool):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_asynctls(kv_heads=1, head_dim=self.kv_lora_rank + self.qk_rope_head_dim, is_mla=True)

    def asynctls_kv_lists(self) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Per-layer latent buffers [slots, 1, 576], and None: V is their first channels."""
        return self.kv_buffer, None

    def set_kv_buffer(self, layer, loc_info, cache_k, cache_v, *args, **kwargs):
        super().set_kv_buffer(layer, self._device_loc(loc_info, layer.layer_id), cache_k, cache_v, *args, **kwargs)
        loc, _, _ = unwrap_write_loc(loc_info)
        self.asynctls_index.on_write(self._layer_slot(layer.layer_id), loc, cache_k)

    def set_mla_kv_buffer(self, layer, loc, cache_k_nope, cache_k_rope):
        super().set_mla_kv_buffer(layer, self._device_loc(loc, layer.layer_id), cache_k_nope, cache_k_rope)
        k = torch.cat([cache_k_nope.reshape(loc.shape[0], 1, -1), cache_k_rope.reshape(loc.shape[0], 1, -1)], -1)
        self.asynctls_index.on_write(self._layer_slot(layer.layer_id), loc, k)
