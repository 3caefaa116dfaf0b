"""update_block_summaries: fold newly written keys into their pages' min/max, in place."""
from __future__ import annotations

import torch

from asynctls_sglang.kernels.common.index_keys import index_key_args
from asynctls_sglang.kernels.common.launch import FLOATS, cdiv, check, pow2
from asynctls_sglang.kernels.common.summary_kernel import (
    page_claim_kernel,
    page_owner_kernel,
    summary_fold_kernel,
)


#: Calls of at most this many tokens find each page's owner by a scan of `loc` (one launch);
#: longer ones by page flags (three launches; the scan is quadratic in T). Decode steps are short.
SCAN_MAX_T = 256
METHODS = ("auto", "scan", "flags")


def update_block_summaries(kmin: torch.Tensor, kmax: torch.Tensor, page_flag: torch.Tensor,
                           loc: torch.Tensor, k: torch.Tensor, block_size: int, *,
                           index: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                           method: str = "auto") -> None:
    """Same contract as torch_ops.update_block_summaries.

    kmin, kmax: [pages, Hk, D] float (same strides, unit stride on D); page_flag: [pages] int32
    scratch (the flags method leaves owner token indices in it); loc: [T] int64 distinct KV slots;
    k: [T, Hk, D] float, unit stride on D. A page written at offset 0 in this call is reset (its
    old summary is ignored); several tokens of one page are reduced together. Results are
    bit-exact with the torch op. Not checked at run time: loc values in range.
    ``method``: "scan" (one launch), "flags" (three), "auto" (scan up to SCAN_MAX_T tokens).
    ``index``: (codes, scale_zero, channels): also write the keys' INT4 index keys, as
    write_index_keys does, in the same launch as the fold (bit-exact with it).
    """
    t, hk, d = k.shape
    pages = kmin.shape[0]
    check(kmin.shape == kmax.shape == (pages, hk, d), f"kmin/kmax must be [pages, {hk}, {d}], got "
          f"{tuple(kmin.shape)} and {tuple(kmax.shape)}")
    check(kmin.stride() == kmax.stride() and kmin.stride(2) == 1, "kmin/kmax: same strides, unit D stride")
    check(kmin.dtype == kmax.dtype and kmin.dtype in FLOATS and k.dtype in FLOATS, "float tables and keys")
    check(k.stride(2) == 1, "k must have unit stride on D")
    check(page_flag.shape == (pages,) and page_flag.dtype == torch.int32, "page_flag must be [pages] int32")
    check(loc.shape == (t,) and loc.dtype in (torch.int64, torch.int32), "loc must be [T] int64/int32")
    check(block_size & (block_size - 1) == 0, "block_size must be a power of two")
    check(method in METHODS, f"method must be one of {METHODS}, got {method!r}")
    if index is not None:
        codes, scale_zero, channels = index
        index_strides, index_consts = index_key_args(codes, scale_zero, loc, k, channels)
    else:  # unused by the kernel (INDEX=False)
        codes, scale_zero, channels, index_strides, index_consts = k, k, k, (0,) * 5, {}
    if t == 0:
        return
    scan = method == "scan" or (method == "auto" and t <= SCAN_MAX_T)
    if not scan:
        block_t = min(pow2(t, 16), 1024)
        page_claim_kernel[(cdiv(t, block_t),)](loc, page_flag, t, B=block_size, BLOCK_T=block_t)
        page_owner_kernel[(cdiv(t, block_t),)](loc, page_flag, t, B=block_size, BLOCK_T=block_t)
    block_d = min(pow2(d, 16), 128)
    summary_fold_kernel[(t, hk, cdiv(d, block_d))](
        kmin, kmax, page_flag, loc, k, t,
        k.stride(0), k.stride(1), kmin.stride(0), kmin.stride(1), codes, scale_zero, channels, *index_strides,
        B=block_size, D=d, BLOCK_T=min(pow2(t, 16), 64), BLOCK_D=block_d, SCAN_OWNER=scan,
        INDEX=index is not None, **index_consts)
