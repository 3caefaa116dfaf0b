"""Plain-torch batched AsyncTLS ops (no per-request loops, no host syncs, fixed shapes)."""
from __future__ import annotations

import torch

from asynctls_sglang.reference.index_keys import quantize_index_keys
from asynctls_sglang.reference.topk import topk_indices

NEG_INF = float("-inf")


# --- written as keys are written -----------------------------------------------------------------
def update_block_summaries(kmin: torch.Tensor, kmax: torch.Tensor, page_flag: torch.Tensor,
                           loc: torch.Tensor, k: torch.Tensor, block_size: int, *,
                           index: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> None:
    """Fold newly written keys into their blocks' per-channel min/max, in place.

    kmin, kmax: [pages, Hk, D]; page_flag: [pages] int32 scratch; loc: [T] int64 KV slots;
    k: [T, Hk, D]. A write at offset 0 of a page starts that page afresh (a page's first token
    always lands at offset 0: pages are filled in order), so stale summaries of a reused page
    never leak. Several tokens of one page in one call (prefill) are reduced together.
    index: (codes, scale_zero, channels): also write_index_keys of the same keys (the Triton op
    does both in one launch). Not checked at run time: loc in range, Hk/D matching the tables.
    """
    if index is not None:
        write_index_keys(*index[:2], loc, k, index[2])
    page = loc // block_size
    first = (loc % block_size == 0).to(page_flag.dtype)
    page_flag.index_fill_(0, page, 0)
    page_flag.scatter_reduce_(0, page, first, "amax")
    reset = page_flag[page].bool()[:, None, None]  # [T, 1, 1]
    k = k.to(kmin.dtype)
    new_min = torch.where(reset, k, torch.minimum(kmin[page], k))
    new_max = torch.where(reset, k, torch.maximum(kmax[page], k))
    idx = page[:, None, None].expand_as(k)
    kmin.scatter_reduce_(0, idx, new_min, "amin", include_self=False)
    kmax.scatter_reduce_(0, idx, new_max, "amax", include_self=False)


def write_index_keys(codes: torch.Tensor, scale_zero: torch.Tensor, loc: torch.Tensor,
                     k: torch.Tensor, channels: torch.Tensor) -> None:
    """Quantise the r calibrated channels of each key to INT4 and store them at its slot.

    codes: [slots, Hk, r // 2] uint8; scale_zero: [slots, Hk, 2] fp32; loc: [T]; k: [T, Hk, D];
    channels: [Hk, r] int64. Same numbers as reference.quantize_index_keys.
    """
    c, sz = quantize_index_keys(k, channels)
    codes[loc] = c
    scale_zero[loc] = sz.to(scale_zero.dtype)


# --- level 1: blocks -----------------------------------------------------------------------------
def block_table(req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, max_blocks: int,
                block_size: int) -> torch.Tensor:
    """[bs, MB] page id of each logical block (garbage past the request's length)."""
    starts = torch.arange(max_blocks, device=req_to_token.device) * block_size
    starts = starts.clamp(max=req_to_token.shape[1] - 1)
    return (req_to_token[req_pool_indices.long()][:, starts] // block_size).long()


def score_blocks(q: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor, pages: torch.Tensor,
                 seq_lens: torch.Tensor, block_size: int, sink_tokens: int,
                 local_window: int, *, partials: bool = False) -> torch.Tensor:
    """Block upper bounds as a product of [sum_g q+ | sum_g q-] with [max | min].

    q: [bs, Hq, D]; kmin, kmax: [pages, Hk, D]; pages: [bs, MB]; seq_lens: [bs].
    -> [bs, Hk, MB] fp32; -inf for blocks past the length or wholly inside sink/local ranges.
    ``partials``: [S, bs, Hk, MB] slices whose sum over S (in order) is the scores, for a consumer
    that adds them itself (the Triton op splits wide keys into S channel slices; here S = 1).
    """
    bs, hq, d = q.shape
    hk = kmin.shape[1]
    mb = pages.shape[1]
    qg = q.float().view(bs, hk, hq // hk, d)
    lhs = torch.cat([qg.clamp(min=0).sum(2), qg.clamp(max=0).sum(2)], dim=-1)  # [bs, Hk, 2D]
    rhs = torch.cat([kmax[pages], kmin[pages]], dim=-1).float()  # [bs, MB, Hk, 2D]
    scores = torch.einsum("bhc,bmhc->bhm", lhs, rhs)
    first = torch.arange(mb, device=q.device) * block_size  # [MB]
    lens = seq_lens.long().unsqueeze(1)  # [bs, 1]
    last = torch.minimum(first + block_size, lens) - 1
    dead = (first >= lens) | (last < sink_tokens) | (first >= lens - local_window)
    scores = scores.masked_fill(dead.unsqueeze(1), NEG_INF)
    return scores.unsqueeze(0) if partials else scores


def select_blocks(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k blocks per (request, KV head): [bs, Hk, MB] -> [bs, Hk, k] ids, -1 unused.
    Tie-break: higher score, then lower block id."""
    return topk_indices(scores, k)


# --- level 2: tokens -----------------------------------------------------------------------------
def candidate_positions(blocks: torch.Tensor, seq_lens: torch.Tensor, block_size: int,
                        sink_tokens: int, local_window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token positions of the chosen blocks and whether each is a candidate (not sink/local).
    blocks: [bs, Hk, k_b] -> (pos [bs, Hk, k_b * B] int64, ok bool of the same shape)."""
    bs, hk, kb = blocks.shape
    offs = torch.arange(block_size, device=blocks.device)
    pos = (blocks.clamp(min=0).unsqueeze(-1) * block_size + offs).view(bs, hk, kb * block_size)
    lens = seq_lens.long().view(bs, 1, 1)
    ok = (blocks >= 0).repeat_interleave(block_size, dim=2)
    ok &= (pos >= sink_tokens) & (pos < lens - local_window)
    return pos, ok


def score_block_tokens(q: torch.Tensor, codes: torch.Tensor, scale_zero: torch.Tensor,
                       channels: torch.Tensor, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                       blocks: torch.Tensor, seq_lens: torch.Tensor, block_size: int, sink_tokens: int,
                       local_window: int, heads: str = "max") -> tuple[torch.Tensor, torch.Tensor]:
    """candidate_positions of the chosen blocks, then score_tokens of them -> (scores, pos)
    [bs, Hk, k_b * B] (the Triton op does both in one launch)."""
    pos, ok = candidate_positions(blocks, seq_lens, block_size, sink_tokens, local_window)
    return score_tokens(q, codes, scale_zero, channels, req_to_token, req_pool_indices, pos, ok, heads), pos


def score_tokens(q: torch.Tensor, codes: torch.Tensor, scale_zero: torch.Tensor,
                 channels: torch.Tensor, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                 pos: torch.Tensor, ok: torch.Tensor, heads: str = "max") -> torch.Tensor:
    """INT4 index-key scores of candidate positions, combined over the group's query heads
    (heads "max" or "mean", see AsyncTLSConfig.token_heads).

    q: [bs, Hq, D]; codes [slots, Hk, r//2]; scale_zero [slots, Hk, 2]; channels [Hk, r];
    pos/ok: [bs, Hk, N] -> [bs, Hk, N] fp32, -inf where not ok.
    """
    bs, hq, d = q.shape
    hk, r = channels.shape
    g = hq // hk
    qh = q.float().view(bs, hk, g, d)
    qsub = torch.gather(qh, 3, channels.view(1, hk, 1, r).expand(bs, -1, g, -1))  # [bs, Hk, G, r]
    rows = req_pool_indices.long().view(bs, 1, 1)
    slots = req_to_token[rows, pos.clamp(max=req_to_token.shape[1] - 1)].long()  # [bs, Hk, N]
    head_ids = torch.arange(hk, device=q.device).view(1, hk, 1)
    c = codes[slots, head_ids]  # [bs, Hk, N, r//2]
    sz = scale_zero[slots, head_ids].float()  # [bs, Hk, N, 2]
    vals = torch.stack([(c & 0xF).float(), (c >> 4).float()], dim=-1).flatten(-2)  # [bs,Hk,N,r]
    dot = torch.einsum("bhnr,bhgr->bhgn", vals, qsub)
    scores = dot * sz[..., 0].unsqueeze(2) + sz[..., 1].unsqueeze(2) * qsub.sum(-1, keepdim=True)
    scores = scores.amax(2) if heads == "max" else scores.mean(2)
    return scores.masked_fill(~ok, NEG_INF)


def forced_positions(seq_lens: torch.Tensor, hk: int, sink_tokens: int,
                     local_window: int) -> torch.Tensor:
    """[bs, Hk, sink + local]: positions 0..sink-1 and the last `local` ones, -1 where absent
    or repeated (a local position inside the sink range)."""
    dev = seq_lens.device
    lens = seq_lens.long().unsqueeze(1)
    sink = torch.arange(sink_tokens, device=dev).unsqueeze(0).expand(lens.shape[0], -1)
    sink = torch.where(sink < lens, sink, -1)
    local = lens - local_window + torch.arange(local_window, device=dev).unsqueeze(0)
    local = torch.where(local >= sink_tokens, local, -1)
    return torch.cat([sink, local], dim=1).unsqueeze(1).expand(-1, hk, -1)


def select_tokens(scores: torch.Tensor, pos: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k candidates by score -> their positions [bs, Hk, k], -1 unused.
    Tie-break: higher score, then the earlier candidate slot (lower block rank, then offset)."""
    rank = topk_indices(scores, k)
    return torch.where(rank >= 0, torch.gather(pos, 2, rank.clamp(min=0)), -1)


def truncate_candidates(pos: torch.Tensor, ok: torch.Tensor, k: int) -> torch.Tensor:
    """Block-only (Quest) selection: the first k candidates in block-rank order, -1 unused."""
    chosen = torch.where(ok, pos, -1)
    n = chosen.shape[2]
    if n < k:
        chosen = torch.cat([chosen, chosen.new_full((*chosen.shape[:2], k - n), -1)], dim=2)
    # keep valid entries in order: stable sort on "is invalid"
    order = torch.sort((chosen < 0).to(torch.int8), dim=2, stable=True).indices
    return torch.gather(chosen, 2, order)[:, :, :k]


# --- attention over the chosen tokens ------------------------------------------------------------
def sparse_decode_attention(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor,
                            req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                            positions: torch.Tensor, sm_scale: float,
                            logit_cap: float = 0.0, *, counts: torch.Tensor | None = None,
                            active: int | None = None, out_dtype: torch.dtype = torch.float32,
                            pool: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Exact attention of each group over its KV head's positions, read in place from the pool.

    q: [bs, Hq, D]; k_buffer [slots, Hk, D]; v_buffer [slots, Hk, Dv] (MLA: a view of the
    latent buffer); positions [bs, Hk, K] int64 (-1 unused); counts [bs] (optional): row b reads
    only its first counts[b] columns. ``active`` only sizes the GPU kernel's splits. -> [bs, Hq, Dv]
    in out_dtype (fp32 accumulation; a narrower out_dtype is the fp32 result rounded).
    pool: (k_pool, v_pool) like the buffers (MLA: the latent rows and their view): a negative slot
    s (req_to_token's entry) reads row -s - 1 of the pool instead of the buffers.
    """
    bs, hq, d = q.shape
    hk = positions.shape[1]
    rows = req_pool_indices.long().view(bs, 1, 1)
    valid = positions >= 0
    if counts is not None:
        columns = torch.arange(positions.shape[2], device=positions.device)
        valid = valid & (columns.view(1, 1, -1) < counts.long().view(bs, 1, 1))
    slots = req_to_token[rows, positions.clamp(min=0)].long()  # [bs, Hk, K]
    heads = torch.arange(hk, device=q.device).view(1, hk, 1)
    if pool is None:
        ks = k_buffer[slots, heads].float()  # [bs, Hk, K, D]
        vs = v_buffer[slots, heads].float()  # [bs, Hk, K, Dv]
    else:
        in_pool = (slots < 0).unsqueeze(-1)
        own, other = slots.clamp(min=0), (-slots - 1).clamp(min=0)
        ks = torch.where(in_pool, pool[0][other, heads].float(), k_buffer[own, heads].float())
        vs = torch.where(in_pool, pool[1][other, heads].float(), v_buffer[own, heads].float())
    qg = q.float().view(bs, hk, hq // hk, d)
    logits = torch.einsum("bhgd,bhkd->bhgk", qg, ks) * sm_scale
    if logit_cap > 0:
        logits = logit_cap * torch.tanh(logits / logit_cap)
    logits = logits.masked_fill(~valid.unsqueeze(2), NEG_INF)
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhgk,bhkv->bhgv", probs, vs).reshape(bs, hq, -1).to(out_dtype)


def dense_positions(seq_lens: torch.Tensor, hk: int, max_len: int) -> torch.Tensor:
    """[bs, Hk, max_len]: every position of each request, -1 past its length."""
    pos = torch.arange(max_len, device=seq_lens.device).unsqueeze(0)
    pos = torch.where(pos < seq_lens.long().unsqueeze(1), pos, -1)
    return pos.unsqueeze(1).expand(-1, hk, -1)
