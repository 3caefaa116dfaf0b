"""The whole AsyncTLS decode selection for a batch, composed from the batched ops."""
from __future__ import annotations

from typing import NamedTuple

import torch

from asynctls_sglang.config import AsyncTLSConfig
from asynctls_sglang.ops import torch_ops


class LayerIndex(NamedTuple):
    """The per-layer index state that the KV pool keeps next to K/V (see memory.index_store)."""

    kmin: torch.Tensor  # [pages, Hk, D] key dtype
    kmax: torch.Tensor  # [pages, Hk, D]
    codes: torch.Tensor  # [slots, Hk, r // 2] uint8
    scale_zero: torch.Tensor  # [slots, Hk, 2] fp32
    channels: torch.Tensor  # [Hk, r] int64


def select_positions(q: torch.Tensor, index: LayerIndex, req_to_token: torch.Tensor,
                     req_pool_indices: torch.Tensor, seq_lens: torch.Tensor, max_blocks: int,
                     cfg: AsyncTLSConfig, ops=torch_ops, *, pages: torch.Tensor | None = None,
                     forced: torch.Tensor | None = None) -> torch.Tensor:
    """q: [bs, Hq, D] -> positions [bs, Hk, token_budget] (sink, local, then chosen; -1 unused).

    ``max_blocks`` bounds the block table (ceil(longest request / B) eagerly; the model's
    context length / B under CUDA graphs, so shapes stay fixed). ``ops`` is torch_ops or a
    module with the same functions (the Triton kernels). ``pages`` (the block table) and
    ``forced`` (sink + local positions) are the same for every layer of a step: a caller may
    compute them once (ops.block_table / ops.forced_positions) and pass them in.
    """
    chosen = select_chosen(q, index, req_to_token, req_pool_indices, seq_lens, max_blocks, cfg, ops, pages=pages)
    return with_forced(chosen, seq_lens, cfg, ops, forced)


def select_chosen(q: torch.Tensor, index: LayerIndex, req_to_token: torch.Tensor,
                  req_pool_indices: torch.Tensor, seq_lens: torch.Tensor, max_blocks: int,
                  cfg: AsyncTLSConfig, ops=torch_ops, *, pages: torch.Tensor | None = None) -> torch.Tensor:
    """select_positions without the forced columns: the chosen positions [bs, Hk, selected_tokens]
    (-1 unused), for a caller that keeps the forced ones in place (step_positions / put_chosen)."""
    if pages is None:
        pages = ops.block_table(req_to_token, req_pool_indices, max_blocks, cfg.block_size)
    scores = block_scores(q, index, seq_lens, cfg, ops, pages)
    blocks = ops.select_blocks(scores, cfg.selected_blocks)
    return chosen_in_blocks(q, index, req_to_token, req_pool_indices, seq_lens, blocks, cfg, ops)


def block_scores(q: torch.Tensor, index: LayerIndex, seq_lens: torch.Tensor, cfg: AsyncTLSConfig,
                 ops, pages: torch.Tensor) -> torch.Tensor:
    """Level 1 scores [bs, Hk, MB] (-inf past the length and inside the sink/local ranges)."""
    return ops.score_blocks(q, index.kmin, index.kmax, pages, seq_lens, cfg.block_size, cfg.sink_tokens,
                            cfg.local_window)


def positions_in_blocks(q: torch.Tensor, index: LayerIndex, req_to_token: torch.Tensor,
                        req_pool_indices: torch.Tensor, seq_lens: torch.Tensor, blocks: torch.Tensor,
                        cfg: AsyncTLSConfig, ops=torch_ops, *,
                        forced: torch.Tensor | None = None) -> torch.Tensor:
    """Level 2 inside the chosen blocks [bs, Hk, k_b] (-1 unused) -> positions [bs, Hk, token_budget]
    (sink, local, then chosen; -1 unused). Split from select_positions so that the offloading
    engine can choose the blocks among the resident ones (see memory.offload_runtime)."""
    chosen = chosen_in_blocks(q, index, req_to_token, req_pool_indices, seq_lens, blocks, cfg, ops)
    return with_forced(chosen, seq_lens, cfg, ops, forced)


def chosen_in_blocks(q: torch.Tensor, index: LayerIndex, req_to_token: torch.Tensor,
                     req_pool_indices: torch.Tensor, seq_lens: torch.Tensor, blocks: torch.Tensor,
                     cfg: AsyncTLSConfig, ops=torch_ops) -> torch.Tensor:
    """positions_in_blocks without the forced columns: [bs, Hk, selected_tokens], -1 unused."""
    b = cfg.block_size
    if cfg.selection == "quest":
        pos, ok = ops.candidate_positions(blocks, seq_lens, b, cfg.sink_tokens, cfg.local_window)
        return ops.truncate_candidates(pos, ok, cfg.selected_tokens)
    # candidates and their scores: one launch on the Triton ops
    tok, pos = ops.score_block_tokens(q, index.codes, index.scale_zero, index.channels, req_to_token,
                                      req_pool_indices, blocks, seq_lens, b, cfg.sink_tokens,
                                      cfg.local_window, heads=cfg.token_heads)
    return ops.select_tokens(tok, pos, cfg.selected_tokens)


def with_forced(chosen: torch.Tensor, seq_lens: torch.Tensor, cfg: AsyncTLSConfig, ops=torch_ops,
                forced: torch.Tensor | None = None) -> torch.Tensor:
    """[forced (sink + local) | chosen] along the position axis."""
    if forced is None:
        forced = ops.forced_positions(seq_lens, chosen.shape[1], cfg.sink_tokens, cfg.local_window)
    return torch.cat([forced, chosen], dim=2)


def step_positions(forced: torch.Tensor, dense: torch.Tensor, is_dense: torch.Tensor) -> torch.Tensor:
    """Once per decode step, the fixed-width positions every layer's attention reads: dense rows
    (is_dense [bs, 1, 1]) their own (dense [bs, Hk, W]); the others the forced positions, then
    -1 where each layer's chosen ones go (put_chosen) and past them.

    NOTE: per layer this replaces a cat, a pad to W and a where over [bs, Hk, W] (W = the dense
    width, 8192 by default against 2048 attended) with one where over the chosen columns."""
    sparse = torch.full_like(dense, -1)
    sparse[:, :, :forced.shape[2]] = forced
    return torch.where(is_dense, dense, sparse)


def put_chosen(positions: torch.Tensor, dense: torch.Tensor, is_dense: torch.Tensor, chosen: torch.Tensor,
               start: int) -> torch.Tensor:
    """A layer's chosen positions [bs, Hk, k] into columns [start, start + k) of step_positions'
    tensor, in place, for the rows that are not dense (dense rows keep theirs). One launch."""
    cols = slice(start, start + chosen.shape[2])
    torch.where(is_dense, dense[:, :, cols], chosen, out=positions[:, :, cols])
    return positions
