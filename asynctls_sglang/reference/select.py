from __future__ import annotations

from typing import NamedTuple

import torch

from asynctls_sglang.config import AsyncTLSConfig
from asynctls_sglang.reference.index_keys import quantize_index_keys, token_scores
from asynctls_sglang.reference.scoring import block_scores
from asynctls_sglang.reference.summaries import block_summaries
from asynctls_sglang.reference.topk import topk_indices


class Selection(NamedTuple):
    blocks: torch.Tensor  # [Hk, k_b] logical block ids, -1 unused
    positions: torch.Tensor  # [Hk, token_budget] token positions, -1 unused


def forced_positions(seq_len: int, cfg: AsyncTLSConfig) -> torch.Tensor:
    """Sink tokens then the local window, without repeats: [sink + local] int64, -1 unused."""
    sink = torch.arange(cfg.sink_tokens)
    local = torch.arange(seq_len - cfg.local_window, seq_len)
    sink = torch.where(sink < seq_len, sink, -1)
    local = torch.where(local >= cfg.sink_tokens, local, -1)
    return torch.cat([sink, local])


def select_tokens(q: torch.Tensor, keys: torch.Tensor, channels: torch.Tensor,
                  cfg: AsyncTLSConfig) -> Selection:
    """The two-level AsyncTLS selection for one request at one decode step.

    q: [Hq, D] (the step's queries); keys: [T, Hk, D] (every key so far, the new one last);
    channels: [Hk, r]. Sink tokens and the local window are always kept. Among the others:
      level 1: blocks ranked by the summed Quest bound (block_scores); blocks wholly inside the
               sink or local range are not candidates; the top block_budget are kept
               (selection "quest": the top token_budget // block_size, all tokens attended);
      level 2: tokens of the kept blocks ranked by the INT4 index-key score (token_scores);
               the top token_budget - sink - local are kept.
    Tie-break everywhere: higher score, then lower index. Positions come out as: sink, local,
    then chosen tokens in rank order; -1 pads unused slots.
    """
    t, hk, _ = keys.shape
    b = cfg.block_size
    nb = -(-t // b)
    kmin, kmax = block_summaries(keys, b)
    scores = block_scores(q, kmin, kmax)  # [Hk, NB]
    first = torch.arange(nb) * b
    last = torch.clamp(first + b, max=t) - 1
    covered = (last < cfg.sink_tokens) | (first >= t - cfg.local_window)
    scores = scores.masked_fill(covered.unsqueeze(0), float("-inf"))
    forced = forced_positions(t, cfg).unsqueeze(0).expand(hk, -1)
    n_blocks = cfg.quest_blocks if cfg.selection == "quest" else cfg.block_budget
    blocks = topk_indices(scores, n_blocks)  # [Hk, k]
    cand = (blocks.clamp(min=0).unsqueeze(-1) * b + torch.arange(b)).flatten(1)  # [Hk, k*B]
    ok = (blocks >= 0).repeat_interleave(b, dim=1) & (cand < t)
    ok &= (cand >= cfg.sink_tokens) & (cand < t - cfg.local_window)
    n_pick = cfg.selected_tokens
    if cfg.selection == "quest":
        # every token of the chosen blocks, in block-rank order, up to the same token count
        rows = [cand[h][ok[h]][:n_pick] for h in range(hk)]
        chosen = torch.full((hk, n_pick), -1, dtype=torch.long)
        for h, row in enumerate(rows):
            chosen[h, :row.numel()] = row
    else:
        codes, sz = quantize_index_keys(keys, channels)
        tok = token_scores(q, codes, sz, channels, cfg.token_heads)  # [Hk, T]
        cand_scores = torch.gather(tok, 1, cand.clamp(max=t - 1))
        cand_scores = cand_scores.masked_fill(~ok, float("-inf"))
        rank = topk_indices(cand_scores, n_pick)
        chosen = torch.where(rank >= 0, torch.gather(cand, 1, rank.clamp(min=0)), -1)
    return Selection(blocks, torch.cat([forced, chosen], dim=1))
