"""SGLang 0.5.17 on a CPU: ``support_triton(name)`` only checks the backend name (any name but
torch_native/intel_amx launches Triton index kernels, which cannot run without a GPU driver),
and ``allocation.get_last_loc`` hard-codes torch_native. On CPU, answer for asynctls as for
torch_native. GPU processes are left untouched."""
from __future__ import annotations

import importlib

from asynctls_sglang import BACKEND_NAME

_MODULES = ("sglang.srt.mem_cache.allocation", "sglang.srt.model_executor.forward_batch_info",
            "sglang.srt.layers.rotary_embedding.mrope")


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def apply() -> None:
    if not _on_cpu():
        return
    for name in _MODULES:
        module = importlib.import_module(name)
        original = module.support_triton
        if getattr(original, "_asynctls", False):
            continue

        def support_triton(backend, _original=original):
            return False if backend == BACKEND_NAME else _original(backend)

        support_triton._asynctls = True
        module.support_triton = support_triton
    alloc = importlib.import_module("sglang.srt.mem_cache.allocation")
    if not getattr(alloc.get_last_loc, "_asynctls", False):
        original_gll = alloc.get_last_loc

        def get_last_loc(req_to_token, req_pool_indices, prefix_lens):
            from sglang.srt.runtime_context import get_exec

            if get_exec().kernel.attention_backend == BACKEND_NAME:
                return alloc.get_last_loc_torch(req_to_token, req_pool_indices, prefix_lens)
            return original_gll(req_to_token, req_pool_indices, prefix_lens)

        get_last_loc._asynctls = True
        alloc.get_last_loc = get_last_loc
    apply_paged_allocator()


class _GridLaunch:
    """Stands in for a Triton kernel launched as ``kernel[grid](*args)``."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def __getitem__(self, grid):
        return self.fn


def _alloc_extend_torch(prefix_lens, seq_lens, last_loc, free_pages, out_indices, bs_upper, page_size):
    from sglang.srt.mem_cache.allocator.paged import alloc_extend_naive

    alloc_extend_naive(prefix_lens, seq_lens, last_loc, free_pages, out_indices, page_size,
                       out_indices.device)


def _alloc_decode_torch(seq_lens, last_loc, free_pages, out_indices, bs_upper, page_size):
    """Same rule as SGLang's alloc_decode_kernel: continue the last page, or take the next
    free page (in batch order) when the new token starts one."""
    import torch

    new_page = ((seq_lens - 1) % page_size == 0).to(torch.int64)
    order = torch.cumsum(new_page, 0) - new_page
    fresh = free_pages[order.clamp(max=max(free_pages.numel() - 1, 0))] * page_size
    out_indices.copy_(torch.where(new_page.bool(), fresh, last_loc + 1))


def apply_paged_allocator() -> None:
    """SGLang's paged allocator (needed: asynctls pages = blocks) launches Triton kernels to
    hand out slots; on a CPU run their plain-torch equivalents."""
    if not _on_cpu():
        return
    paged = importlib.import_module("sglang.srt.mem_cache.allocator.paged")
    if not isinstance(paged.alloc_extend_kernel, _GridLaunch):
        paged.alloc_extend_kernel = _GridLaunch(_alloc_extend_torch)
        paged.alloc_decode_kernel = _GridLaunch(_alloc_decode_torch)
