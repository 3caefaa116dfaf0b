"""readable_pair (and its top-k, readable_pair_topk) / device_loc / count_late / buffer_table: the offloading engine's per-layer table reads as one kernel each,
and decode_step_tables: its per-step tables in one launch (same contracts as OffloadRuntime's torch
code, memory.offload_runtime, bit-exact)."""
from __future__ import annotations

import torch

from asynctls_sglang.kernels.common.launch import cdiv, check, pow2
from asynctls_sglang.kernels.common.offload_tables_kernel import (buffer_table_kernel, count_late_kernel,
                                                                    decode_step_kernel, device_loc_kernel,
                                                                    readable_pair_kernel, readable_pair_topk_kernel)
from asynctls_sglang.kernels.common.topk import MAX_K, RESIDENT_MAX_N, resident_launch

_BLOCK = 256


def _check_tables(blk2slot: torch.Tensor, rows: torch.Tensor, window: torch.Tensor, bs: int, hk: int) -> None:
    check(blk2slot.dim() == 3 and blk2slot.shape[1] == hk and blk2slot.stride(2) == 1,
          f"blk2slot must be one layer's [rows, {hk}, MB + 1] with a unit last stride, got {tuple(blk2slot.shape)}")
    check(rows.shape == (bs,), f"rows must be [{bs}]")
    check(window.dim() == 2 and window.shape[0] == bs and window.stride(1) == 1, f"window must be [{bs}, Wn]")


def _score_parts(scores: torch.Tensor, blk2slot: torch.Tensor, rows: torch.Tensor,
                 window: torch.Tensor) -> torch.Tensor:
    """scores [bs, Hk, N] or partial rows [S, bs, Hk, N] -> [S, bs, Hk, N] (S = 1 for the former),
    checked with the tables they are read against."""
    parts = scores if scores.dim() == 4 else scores.unsqueeze(0)
    check(parts.dim() == 4 and parts.shape[0] >= 1 and parts.stride(3) == 1 and parts.dtype == torch.float32,
          "scores must be fp32 [bs, Hk, N] or [S, bs, Hk, N] with a unit last stride")
    _check_tables(blk2slot, rows, window, parts.shape[1], parts.shape[2])
    return parts


def readable_pair(scores: torch.Tensor, blk2slot: torch.Tensor, rows: torch.Tensor,
                  window: torch.Tensor) -> torch.Tensor:
    """scores [bs, Hk, N] fp32 block scores -> [2, bs, Hk, N]: [0] the scores, [1] the same with
    -inf where the block is not readable (resident: blk2slot[rows, h, block] >= 0, or a window
    block of the row). Block ids and N <= blk2slot.shape[2]. The pair lets one top-k launch rank
    the wanted and the readable blocks together. scores may also be [S, bs, Hk, N] partial rows
    (score_blocks(partials=True)): the scores are their sum over S, added in order here."""
    parts = _score_parts(scores, blk2slot, rows, window)
    n_s, bs, hk, n = parts.shape
    out = torch.empty((2, bs, hk, n), dtype=torch.float32, device=parts.device)
    if bs == 0 or n == 0:
        return out
    block = min(_BLOCK, pow2(n, 16))
    readable_pair_kernel[(bs, hk, cdiv(n, block))](
        parts, out, blk2slot, rows, window, n, window.shape[1], blk2slot.shape[2] - 1, n_s,
        parts.stride(0), parts.stride(1), parts.stride(2), out.stride(0), out.stride(1), out.stride(2),
        blk2slot.stride(0), blk2slot.stride(1), window.stride(0),
        BLOCK_N=block, BLOCK_W=pow2(window.shape[1], 2))
    return out


def readable_pair_topk(scores: torch.Tensor, k: int, blk2slot: torch.Tensor, rows: torch.Tensor,
                       window: torch.Tensor) -> torch.Tensor:
    """select_blocks(readable_pair(scores, blk2slot, rows, window), k) in one launch: [2, bs, Hk, k]
    block ids in rank order, -1 unused ([0] the wanted blocks, [1] the best readable ones), bit for
    bit. Rows of at most topk.RESIDENT_MAX_N blocks (fits_readable_pair_topk)."""
    parts = _score_parts(scores, blk2slot, rows, window)
    n_s, bs, hk, n = parts.shape
    check(fits_readable_pair_topk(n, k), f"readable_pair_topk needs N <= {RESIDENT_MAX_N} and k in 1..{MAX_K}, "
                                         f"got N={n}, k={k}")
    out = torch.empty((2, bs, hk, k), dtype=torch.int64, device=parts.device)
    if bs == 0 or hk == 0:
        return out
    if n == 0:
        return out.fill_(-1)
    block_n = pow2(n, 128)
    readable_pair_topk_kernel[(2, bs, hk)](
        parts, out, blk2slot, rows, window, n, k, window.shape[1], blk2slot.shape[2] - 1, n_s,
        parts.stride(0), parts.stride(1), parts.stride(2), out.stride(0), out.stride(1), out.stride(2),
        blk2slot.stride(0), blk2slot.stride(1), window.stride(0),
        BLOCK_N=block_n, BLOCK_W=pow2(window.shape[1], 2), BLOCK_K=pow2(k, 16),
        **resident_launch(block_n, 2 * bs * hk, parts.device))
    return out


def fits_readable_pair_topk(n: int, k: int) -> bool:
    """Whether readable_pair_topk takes rows of n blocks and k of them (the row in registers)."""
    return n <= RESIDENT_MAX_N and 0 < k <= MAX_K


def device_loc(loc: torch.Tensor, page_map: torch.Tensor, block_size: int) -> torch.Tensor:
    """SGLang's logical write locations [n] (>= 0) -> the device pool's slots [n] int64 through the
    page map (logical page -> device page, -1 none: the padding page 0), in one launch
    (AsyncTLSPoolMixin._device_loc's torch form: seven small launches)."""
    check(loc.dim() == 1 and not loc.dtype.is_floating_point, "loc must be [n] integers")
    check(page_map.dim() == 1 and page_map.is_contiguous(), "page_map must be a contiguous [pages]")
    loc = loc.contiguous()
    out = torch.empty(loc.shape[0], dtype=torch.int64, device=loc.device)
    if loc.shape[0]:
        device_loc_kernel[(cdiv(loc.shape[0], _BLOCK),)](loc, page_map, out, loc.shape[0], B=block_size, BLOCK=_BLOCK)
    return out


def count_late(wanted: torch.Tensor, blk2slot: torch.Tensor, rows: torch.Tensor, window: torch.Tensor,
               dense: torch.Tensor, late: torch.Tensor) -> None:
    """late[()] += the wanted [bs, Hk, k] blocks (-1 unused) of rows not dense that are not
    readable (see readable_pair)."""
    bs, hk, kb = wanted.shape
    _check_tables(blk2slot, rows, window, bs, hk)
    check(wanted.stride(2) == 1 and wanted.dtype == torch.int64, "wanted must be int64 with a unit last stride")
    check(dense.shape == (bs,) and late.numel() == 1, "dense must be [bs], late one element")
    if bs == 0 or kb == 0:
        return
    count_late_kernel[(bs, hk)](
        wanted, blk2slot, rows, window, dense, late, window.shape[1], kb, blk2slot.shape[2] - 1,
        wanted.stride(0), wanted.stride(1), blk2slot.stride(0), blk2slot.stride(1), window.stride(0),
        BLOCK_W=pow2(window.shape[1], 2), BLOCK_KB=pow2(kb, 16))


def buffer_table(positions: torch.Tensor, blk2slot: torch.Tensor, rows: torch.Tensor, window: torch.Tensor,
                 win_src: torch.Tensor, dropped: torch.Tensor, *, block_size: int, capacity: int,
                 chosen: torch.Tensor | None = None, start: int = 0,
                 dense: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [bs, Hk, K] (-1 unused) -> (table [bs, Hk*K] int32, columns [bs, Hk, K] int64):
    see OffloadRuntime.buffer_table; dropped[()] += positions left out. win_src [bs * WN]: the
    window blocks' device pool pages (a window position's entry is -(page * B + p % B) - 1, read
    in place from the pool). chosen [bs, Hk, Kc] with dense [bs] bool: columns [start, start + Kc)
    of the rows not dense read chosen instead."""
    bs, hk, k = positions.shape
    _check_tables(blk2slot, rows, window, bs, hk)
    check(positions.stride(2) == 1, "positions need a unit last stride")
    check(block_size & (block_size - 1) == 0, "block_size must be a power of two")
    if chosen is not None:
        check(chosen.dim() == 3 and chosen.shape[:2] == (bs, hk) and chosen.stride(2) == 1
              and 0 <= start and start + chosen.shape[2] <= k, f"chosen must be [{bs}, {hk}, Kc] within K = {k}")
        check(dense is not None and dense.shape == (bs,), "chosen needs dense [bs]")
    check(win_src.is_contiguous() and win_src.numel() == bs * window.shape[1] and not win_src.dtype.is_floating_point,
          f"win_src must be [bs * WN] = [{bs * window.shape[1]}] contiguous integers")
    table = torch.empty(bs, hk * k, dtype=torch.int32, device=positions.device)
    columns = torch.empty(bs, hk, k, dtype=torch.int64, device=positions.device)
    if bs == 0 or k == 0:
        return table, columns
    block = min(_BLOCK, pow2(k, 16))
    has_chosen = chosen is not None
    if not has_chosen:
        chosen, dense = positions, rows  # unused (HAS_CHOSEN=False)
    buffer_table_kernel[(bs, hk, cdiv(k, block))](
        positions, table, columns, blk2slot, rows, window, dropped, chosen, dense, win_src,
        k, window.shape[1], blk2slot.shape[2] - 1, capacity, start, chosen.shape[2],
        positions.stride(0), positions.stride(1), table.stride(0), columns.stride(0), columns.stride(1),
        blk2slot.stride(0), blk2slot.stride(1), window.stride(0), chosen.stride(0), chosen.stride(1),
        B=block_size, BLOCK_K=block, BLOCK_W=pow2(window.shape[1], 2), HAS_CHOSEN=has_chosen)
    return table, columns


def decode_step_tables(req_to_token: torch.Tensor, rows: torch.Tensor, lens: torch.Tensor,
                       device_page: torch.Tensor | None, *, max_blocks: int, dense_blocks: int, block_size: int,
                       sink_tokens: int, local_window: int, dense_len: int, width: int = 0,
                       token_budget: int = 0) -> dict[str, torch.Tensor]:
    """OffloadRuntime.decode_step's tables in one launch: rows, lens [bs] int64; pages [bs, max_blocks]
    (block_table); host_done [bs]; window [bs, Wn] (forced_blocks of one head); win_src [bs * Wn];
    need_fixed [bs, Nl + dense_blocks] (one head's row: the caller
    expands it over the heads); dense [bs] bool; req [bs] arange. Wn = ceil(sink / B) + Nl,
    Nl = ceil(local / B) + 1 (0 without a local window). width > 0: also positions [bs, width] and
    counts [bs], select.step_positions of one head (token_budget: a sparse row's count)."""
    b = block_size
    bs = rows.shape[0]
    n_sink, n_local = -(-sink_tokens // b), (-(-local_window // b) + 1 if local_window else 0)
    wn = n_sink + n_local
    check(req_to_token.dim() == 2 and req_to_token.stride(1) == 1, "req_to_token must be [rows, ctx], unit last stride")
    check(rows.shape == (bs,) and lens.shape == (bs,), "rows and lens must be [bs]")
    check(b & (b - 1) == 0, f"block_size must be a power of two, got {b}")
    dev = lens.device
    i64 = lambda *shape: torch.empty(shape, dtype=torch.int64, device=dev)  # noqa: E731
    out = dict(rows=i64(bs), lens=i64(bs), pages=i64(bs, max_blocks), host_done=i64(bs), window=i64(bs, wn),
               win_src=i64(bs * wn),
               need_fixed=i64(bs, n_local + dense_blocks), dense=torch.empty(bs, dtype=torch.bool, device=dev),
               req=i64(bs))
    if width > 0:
        check(width >= sink_tokens + local_window, f"width {width} < sink + local window")
        out.update(positions=i64(bs, width), counts=i64(bs))
    if bs == 0:
        return out
    decode_step_kernel[(bs,)](
        req_to_token, rows, lens, device_page if device_page is not None else rows, out["rows"], out["lens"],
        out["pages"], out["host_done"], out["window"], out["win_src"],
        out["need_fixed"], out["dense"], out["req"], out.get("positions", rows), out.get("counts", rows),
        max_blocks, req_to_token.shape[1], dense_blocks, local_window, dense_len, sink_tokens,
        width, token_budget, req_to_token.stride(0),
        B=b, N_SINK=n_sink, N_LOCAL=n_local, BLOCK_MB=min(_BLOCK * 4, pow2(max(max_blocks, width, 1), 16)),
        BLOCK_F=pow2(max(wn, n_local + dense_blocks, 1), 16), HAS_MAP=device_page is not None, HAS_POS=width > 0)
    return out
