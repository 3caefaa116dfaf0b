"""Logical KV ids for the offloading engine: SGLang allocates over the host pool, the device keeps
what is being written and read.

With ``offload`` on, SGLang's allocator hands out *logical* slot ids over ``host_pool_tokens``
(page = block): req_to_token and the radix tree hold logical ids, the host tier and the index are
indexed by them, and the scheduler counts its capacity in them. SGLang's device pool (sized by its
usual memory settings, ``--max-total-tokens``) holds device pages; ``device_page[logical page]``
maps a logical page to its device page (-1: host only). Every newly allocated logical page gets a
device page (it is about to be written); the backend unmaps the pages it no longer reads from the
device after a prefill (memory.offload_runtime: demote) and maps prefix pages back before a prefill
that reads them (load_back). Releasing a logical page releases its device page. A decode step
short of device pages first unmaps the complete blocks that running requests have decoded past
their windows (reclaim_decode): decode reads only windows from the device, and complete blocks
are on the host.
"""
from __future__ import annotations

import torch
from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator
from sglang.srt.utils.common import get_num_new_pages

from asynctls_sglang.config import AsyncTLSConfig, flag_name
from asynctls_sglang.memory.host_tier import HostMemoryError


#: With host_pool_tokens unset, the host pool is DEFAULT_HOST_RATIO x the KV the GPU holds (the
#: device pool plus the resident block buffers, in tokens), capped at DEFAULT_HOST_FRACTION of the
#: available host memory (what the process still needs besides stays free; an explicit size may
#: take up to 90%, memory.host_tier.check_host_fits).
DEFAULT_HOST_RATIO = 4
DEFAULT_HOST_FRACTION = 0.7


def logical_tokens(cfg: AsyncTLSConfig, device_tokens: int, token_bytes: int | None = None,
                   available_bytes: int | None = None, resident_tokens: int = 0) -> int:
    """Logical (host pool) tokens for a device pool of device_tokens: host_pool_tokens, or
    DEFAULT_HOST_RATIO x (device pool + resident_tokens, the resident buffers' bytes in tokens)
    capped to what fits in DEFAULT_HOST_FRACTION of available_bytes (token_bytes: every layer's
    K/V of one token; no cap when either is None).
    An H200 host (123 GiB available) holds ~4 x 147k tokens of Qwen3-8B but not 4 x its 371k-token
    device pool: the uncapped default was refused at start-up (203.87 GiB). The resident buffers
    count: at 6 x 96k under a 220k-token KV cap (102k device pool + 118k resident), 4 x the pool
    alone held 4 of the 6 requests (H200, 2026-11-29)."""
    b = cfg.block_size
    if cfg.host_pool_tokens is not None:
        n = cfg.host_pool_tokens
    else:
        n = min(DEFAULT_HOST_RATIO * (device_tokens + resident_tokens), host_cap_tokens(token_bytes, available_bytes))
        if n < device_tokens:  # (only a host cap does this) offload would serve fewer tokens than the GPU alone
            raise HostMemoryError(
                f"asynctls offload: {DEFAULT_HOST_FRACTION:.0%} of the available host memory "
                f"({available_bytes / 2**30:.2f} GiB) holds {max(n, 0)} tokens of KV, fewer than the "
                f"device pool's {device_tokens}: free host memory, set {flag_name('host_pool_tokens')}, "
                "or serve without offload")
    return max(b, n // b * b)


def host_cap_tokens(token_bytes: int | None, available_bytes: int | None) -> float:
    """Tokens of K/V (token_bytes each, every layer) in DEFAULT_HOST_FRACTION of available_bytes;
    infinite when either is unknown."""
    if not token_bytes or available_bytes is None:
        return float("inf")
    return int(DEFAULT_HOST_FRACTION * available_bytes) // token_bytes


class DevicePageError(RuntimeError):
    """The device pool has no free page for a block that must be on the device."""


class OffloadPagedAllocator(PagedTokenToKVPoolAllocator):
    def __init__(self, size: int, page_size: int, dtype, device, kvcache, need_sort: bool, *,
                 device_tokens: int) -> None:
        self.device_pages_total = device_tokens // page_size
        logical_pages = size // page_size
        self.device_page = torch.full((logical_pages + 2,), -1, dtype=torch.int64, device=device)
        super().__init__(size, page_size, dtype, device, kvcache, need_sort)
        kvcache.asynctls_device_page = self.device_page

    # device pages ----------------------------------------------------------------------------------
    def clear(self) -> None:
        super().clear()
        # device page 0 is SGLang's padding page (dummy writes of padded rows land there)
        self.dev_free = torch.arange(1, self.device_pages_total + 1, dtype=torch.int64, device=self.device)
        self.device_page.fill_(-1)

    def device_available_pages(self) -> int:
        return len(self.dev_free)

    #: the decode batch being allocated for (set around ScheduleBatch.prepare_for_decode by
    #: patches.offload): (req_to_token, cache rows, committed lengths), host lists
    decoding: tuple | None = None
    #: the same for the last decode batch, kept after its allocation (OffloadRuntime.demote)
    last_decode: tuple | None = None
    #: the OffloadRuntime (adapter.offload.build_offload_runtime), which decides what to give back
    asynctls_runtime = None

    def reclaim_decode(self) -> int:
        """Device pages given back by the decode batch being allocated for (OffloadRuntime.reclaim:
        its complete blocks that left every window); 0 outside a decode allocation."""
        if self.decoding is None or self.asynctls_runtime is None:
            return 0
        return self.asynctls_runtime.reclaim(self, *self.decoding)

    def _map_page_starts(self, out: torch.Tensor, n_new: int) -> bool:
        """Give a device page to each logical page that starts in out (slot % B == 0); n_new: how
        many (from the host lengths, as SGLang counts them). No host sync."""
        if n_new == 0:
            return True
        if n_new > len(self.dev_free):
            self.reclaim_decode()
        if n_new > len(self.dev_free):
            return False
        b = self.page_size
        starts = out % b == 0
        order = (torch.cumsum(starts.long(), 0) - 1).clamp(0, n_new - 1)
        scratch = self.device_page.shape[0] - 1
        self.device_page.scatter_(0, torch.where(starts, out // b, scratch),
                                  torch.where(starts, self.dev_free[order], -1))
        self.device_page[scratch:].fill_(-1)
        self.dev_free = self.dev_free[n_new:]
        return True

    def map_pages(self, pages: torch.Tensor) -> torch.Tensor:
        """Device pages for logical pages [n] that have none (prefix load-back). Eager."""
        n = pages.numel()
        if n > len(self.dev_free):
            raise DevicePageError(
                f"asynctls offload: {n} prefix blocks must be loaded back to the device for a prefill, but "
                f"only {len(self.dev_free)} device pages are free; raise --max-total-tokens (the device pool "
                f"must hold the longest request being prefilled plus the windows of the running ones)")
        dev = self.dev_free[:n]
        self.dev_free = self.dev_free[n:]
        self.device_page[pages] = dev
        return dev

    def unmap_pages(self, pages: torch.Tensor) -> None:
        """Logical pages [n] (distinct) keep only their host copy: their device pages are free."""
        dev = self.device_page[pages]
        self.device_page[pages] = -1
        self.dev_free = torch.cat([dev[dev >= 0], self.dev_free])

    # SGLang's allocation API -----------------------------------------------------------------------
    def alloc(self, need_size: int):
        return self._mapped(super().alloc(need_size), need_size // self.page_size)

    def alloc_extend(self, prefix_lens, prefix_lens_cpu, seq_lens, seq_lens_cpu, last_loc, extend_num_tokens,
                     num_new_pages=None):
        out = super().alloc_extend(prefix_lens, prefix_lens_cpu, seq_lens, seq_lens_cpu, last_loc,
                                   extend_num_tokens, num_new_pages)
        return self._mapped(out, get_num_new_pages(seq_lens=seq_lens_cpu, page_size=self.page_size,
                                                   prefix_lens=prefix_lens_cpu))

    def alloc_decode(self, seq_lens, seq_lens_cpu, last_loc):
        out = super().alloc_decode(seq_lens, seq_lens_cpu, last_loc)
        return self._mapped(out, get_num_new_pages(seq_lens=seq_lens_cpu, page_size=self.page_size, decode=True))

    def _mapped(self, out: torch.Tensor | None, n_new: int) -> torch.Tensor | None:
        """out with a device page for each of its n_new new logical pages, or None (nothing kept)
        when SGLang's allocation failed or the device pool is short."""
        if out is None or self._map_page_starts(out, n_new):
            return out
        self._undo(out)
        return None

    def _undo(self, out: torch.Tensor) -> None:
        """Give back the logical pages that start in out (allocated by the failed call)."""
        starts = out[out % self.page_size == 0]
        super()._release_page_ids(starts // self.page_size)

    def _release_page_ids(self, *page_ids: torch.Tensor) -> None:
        # NOTE: the one place every logical page release ends (free, free_segment, free groups).
        for pages in page_ids:
            if pages.numel():
                self.unmap_pages(pages.long())
        super()._release_page_ids(*page_ids)

