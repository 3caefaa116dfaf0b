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
    (-1 unused), for a caller that keeps the forced ones in place (StepPositions.put)."""
    if pages is None:
        pages = ops.block_table(req_to_token, req_pool_indices, max_blocks, cfg.block_size)
    scores = block_scores(q, index, seq_lens, cfg, ops, pages)
    blocks = ops.select_blocks(scores, cfg.selected_blocks)
    return chosen_in_blocks(q, index, req_to_token, req_pool_indices, seq_lens, blocks, cfg, ops)


def block_scores(q: torch.Tensor, index: LayerIndex, seq_lens: torch.Tensor, cfg: AsyncTLSConfig,
                 ops, pages: torch.Tensor, partials: bool = False) -> torch.Tensor:
    """Level 1 scores [bs, Hk, MB] (-inf past the length and inside the sink/local ranges);
    ``partials``: [S, bs, Hk, MB] slices that add up to them (ops.score_blocks)."""
    return ops.score_blocks(q, index.kmin, index.kmax, pages, seq_lens, cfg.block_size, cfg.sink_tokens,
                            cfg.local_window, partials=partials)


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
    args = (q, index.codes, index.scale_zero, index.channels, req_to_token, req_pool_indices, blocks, seq_lens, b,
            cfg.sink_tokens, cfg.local_window)
    fused = getattr(ops, "score_select_block_tokens", None)
    if fused is not None:  # the Triton ops: scoring and top-k, in one launch when their LAUNCH says so
        return fused(*args, cfg.selected_tokens, heads=cfg.token_heads)
    # candidates and their scores (one launch on the Triton ops), then the top-k
    tok, pos = ops.score_block_tokens(*args, heads=cfg.token_heads)
    return ops.select_tokens(tok, pos, cfg.selected_tokens)


def with_forced(chosen: torch.Tensor, seq_lens: torch.Tensor, cfg: AsyncTLSConfig, ops=torch_ops,
                forced: torch.Tensor | None = None) -> torch.Tensor:
    """[forced (sink + local) | chosen] along the position axis."""
    if forced is None:
        forced = ops.forced_positions(seq_lens, chosen.shape[1], cfg.sink_tokens, cfg.local_window)
    return torch.cat([forced, chosen], dim=2)


class StepPositions(NamedTuple):
    """The fixed-width positions every layer's attention reads in a decode step (CUDA-graph and
    offload paths), built once per step (step_positions); each layer puts its chosen ones."""

    positions: torch.Tensor  # [bs, Hk, W]: dense rows their own; the others forced, chosen, -1
    dense: torch.Tensor  # [bs, Hk, W] every position of a dense row (-1 past its length)
    is_dense: torch.Tensor  # [bs, 1, 1] bool
    counts: torch.Tensor  # [bs] the columns each row reads: its length when dense, else token_budget
    start: int  # the first chosen column (after the forced ones)

    def put(self, chosen: torch.Tensor) -> torch.Tensor:
        """A layer's chosen positions [bs, Hk, k] into columns [start, start + k), in place, for
        the rows that are not dense (dense rows keep theirs). One launch. Returns positions."""
        cols = slice(self.start, self.start + chosen.shape[2])
        torch.where(self.is_dense, self.dense[:, :, cols], chosen, out=self.positions[:, :, cols])
        return self.positions


def step_positions(seq_lens: torch.Tensor, is_dense: torch.Tensor, hk: int, width: int, cfg: AsyncTLSConfig,
                   ops=torch_ops) -> StepPositions:
    """Once per decode step: StepPositions of width W = width for rows of seq_lens, is_dense [bs].

    NOTE: per layer this replaces a cat, a pad to W and a where over [bs, Hk, W] (W = the dense
    width, 8192 by default against 2048 attended) with one where over the chosen columns."""
    forced = ops.forced_positions(seq_lens, hk, cfg.sink_tokens, cfg.local_window)
    dense = ops.dense_positions(seq_lens, hk, width)
    sparse = torch.full_like(dense, -1)
    sparse[:, :, :forced.shape[2]] = forced
    d3 = is_dense.view(-1, 1, 1)
    return StepPositions(torch.where(d3, dense, sparse), dense, d3, torch.where(is_dense, seq_lens, cfg.token_budget),
                         forced.shape[2])
