"""Kernel micro-benchmark of the AsyncTLS decode path against full-attention decode kernels.

Grid: model (Qwen3-8B GQA: 32 q / 8 KV heads, d 128; GLM-4.7-Flash MLA: --mla-heads q heads,
latent 512 + rope 64) x context x batch x token budget, block budget and block size fixed
(paper: 128 blocks of 64). Per point it times, on one layer, every stage of a decode step

    summary (fold the new key into its block's min/max), index_write (its INT4 index key),
    summary_index (both in one launch, what the backend runs instead of the two),
    cand_score (candidates and token_score in one launch, what the backend runs instead),
    token_select (cand_score and token_topk through score_select_block_tokens: the two launches,
    or one fused kernel when --sweep token_select tries it),
    block_score, block_topk, candidates (the chosen blocks' token positions, one kernel),
    token_score, token_topk, attention (over the chosen tokens),
    step (all of the above as one CUDA graph, selection glue included: what the backend's
    CUDA-graph path runs per layer, the chosen positions put into the step's fixed-width
    positions; the block table and that tensor are per step, built once outside),

the previous selection kernels in the same run, for before/after in one call:
    block_topk_stream, token_topk_stream (the streaming top-k: one program per row, the row
    re-read by 5 passes; method="stream"), candidates_torch (torch_ops.candidate_positions,
    ~10 launches), token_score_loop (heads max by one reduction per query head instead of one
    tl.dot of all heads; method="loop"), summary_flags (the block summaries' owners found by page
    flags in three launches instead of one scan; method="flags"), step_legacy (step with those
    five instead, and the index keys in a launch of their own),

and, in the same run, the full-attention baselines: FlashInfer BatchDecodeWithPagedKVCacheWrapper
(use_tensor_cores=True; GQA) or BatchMLAPagedAttentionWrapper (MLA), and SGLang's Triton
decode_attention_fwd. Timing: median of CUDA-graph replays (eager where a callable cannot be
captured), L2 flushed before each replay. Each stage also reports the bytes it must move and
the fraction of the HBM floor (bytes / --hbm-tbs) it reaches.

    python benchmarks/kernel_bench.py --quick --out results/kbench.json        # ~1-2 min on an H200
    python benchmarks/kernel_bench.py --out results/kbench.json                # the full grid

flashinfer and sglang are imported lazily; a missing one skips its baseline.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asynctls_sglang.config import AsyncTLSConfig  # noqa: E402

STAGES = ("summary", "index_write", "block_score", "block_topk", "candidates", "token_score", "token_topk",
          "attention")
#: the stages the backend runs fused (timed beside their parts)
FUSED = ("summary_index", "cand_score", "token_select")
#: the previous selection kernels, timed beside their replacements
LEGACY = ("block_topk_stream", "candidates_torch", "token_score_loop", "token_topk_stream", "summary_flags")


@dataclass(frozen=True)
class Model:
    name: str
    hq: int
    hk: int
    d: int
    dv: int
    mla: bool


def models(mla_heads: int) -> dict[str, Model]:
    return {"qwen3-8b": Model("qwen3-8b", 32, 8, 128, 128, False),
            "glm-4.7-flash": Model("glm-4.7-flash", mla_heads, 1, 576, 512, True)}


# --- timing --------------------------------------------------------------------------------------
class Timer:
    """Median ms of `fn` over `reps` CUDA-graph replays (eager calls if capture fails), with the L2
    flushed before each one so no stage runs on data the previous one left in cache."""

    def __init__(self, reps: int, use_graphs: bool):
        self.reps, self.use_graphs = reps, use_graphs
        self.flush = torch.empty(512 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")

    def __call__(self, fn: Callable[[], object]) -> tuple[float, str]:
        run, mode = fn, "eager"
        if self.use_graphs:
            try:
                fn()  # compile / plan outside the capture
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    fn()
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    fn()
                run, mode = graph.replay, "graph"
            except Exception:  # noqa: BLE001 - some baselines cannot be captured: time them eagerly
                torch.cuda.synchronize()
                run, mode = fn, "eager"
        for _ in range(3):
            run()
        times = []
        for _ in range(self.reps):
            self.flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            times.append((start, end))
        torch.cuda.synchronize()
        ms = sorted(s.elapsed_time(e) for s, e in times)
        return ms[len(ms) // 2], mode


# --- one layer's state ---------------------------------------------------------------------------
class Layer:
    """A paged KV pool for `max_tokens` tokens of one layer, its AsyncTLS index (summaries filled
    by the Triton summary kernel, INT4 index keys), pages handed out in a random order."""

    def __init__(self, model: Model, cfg: AsyncTLSConfig, max_tokens: int, seed: int = 0):
        from asynctls_sglang.kernels import triton_ops
        from asynctls_sglang.memory.index_store import index_key_buffers
        from asynctls_sglang.ops.select import LayerIndex

        self.model, self.cfg = model, cfg
        b = cfg.block_size
        dev = torch.device("cuda")
        gen = torch.Generator(device=dev).manual_seed(seed)
        self.n_pages = -(-max_tokens // b) + 64
        slots = self.n_pages * b
        dt = torch.bfloat16
        self.k = torch.randn(slots, model.hk, model.d, device=dev, dtype=dt, generator=gen)
        self.v = self.k[..., :model.dv] if model.mla else torch.randn(slots, model.hk, model.dv, device=dev,
                                                                      dtype=dt, generator=gen)
        r = cfg.channels_for(model.d, model.mla)
        self.index = LayerIndex(
            torch.empty(self.n_pages, model.hk, model.d, device=dev, dtype=dt),
            torch.empty(self.n_pages, model.hk, model.d, device=dev, dtype=dt),
            *index_key_buffers(slots, model.hk, r, dev),  # the store's layout (head-major)
            torch.randperm(model.d, device=dev, generator=gen)[:r].sort().values.expand(model.hk, r).contiguous())
        self.flag = torch.zeros(self.n_pages, dtype=torch.int32, device=dev)
        self.page_order = torch.randperm(self.n_pages, device=dev, generator=gen)
        for start in range(0, slots, 1 << 20):  # the "prefill": every slot's summary and index key
            loc = torch.arange(start, min(start + (1 << 20), slots), device=dev)
            triton_ops.update_block_summaries(self.index.kmin, self.index.kmax, self.flag, loc, self.k[loc], b)
            triton_ops.write_index_keys(self.index.codes, self.index.scale_zero, loc, self.k[loc],
                                        self.index.channels)
        torch.cuda.synchronize()

    def batch(self, bs: int, ctx: int):
        """req_to_token [bs, ctx] over distinct random pages, seq_lens, and the new token's slots."""
        b = self.cfg.block_size
        per = -(-ctx // b)
        assert bs * per <= self.n_pages, "pool too small for this point"
        pages = self.page_order[:bs * per].view(bs, per)
        pos = torch.arange(ctx, device="cuda")
        req_to_token = (pages[:, pos // b] * b + pos % b).int()
        seq_lens = torch.full((bs,), ctx, dtype=torch.int64, device="cuda")
        rows = torch.arange(bs, device="cuda")
        new_loc = req_to_token[:, ctx - 1].long()
        return req_to_token, rows, seq_lens, new_loc


# --- bytes each stage must move ------------------------------------------------------------------
def stage_bytes(m: Model, cfg: AsyncTLSConfig, bs: int, ctx: int, budget: int) -> dict[str, float]:
    e = 2  # bf16
    r = cfg.channels_for(m.d, m.mla)
    nb = -(-ctx // cfg.block_size)
    n_cand = cfg.block_budget * cfg.block_size
    k_sel = budget - cfg.sink_tokens - cfg.local_window
    rows = bs * m.hk
    kv_row = m.d * e if m.mla else (m.d + m.dv) * e
    out = {
        "summary": rows * m.d * e * 5,  # new key, old min/max read, min/max written
        "index_write": rows * (r * e + r // 2 + 8),
        "block_score": rows * nb * (2 * m.d * e + 4) + bs * nb * 8 + bs * m.hq * m.d * e,
        "block_topk": rows * (nb * 4 + cfg.block_budget * 8),
        "token_score": rows * n_cand * (r // 2 + 8 + 4 + 8 + 1 + 4),
        "candidates": rows * (cfg.block_budget * 8 + n_cand * 9),
        "token_topk": rows * (n_cand * 12 + k_sel * 8),
        "attention": rows * budget * (kv_row + 12) + bs * m.hq * (m.d + m.dv) * e,
    }
    out["step"] = sum(out.values())
    out["summary_index"] = out["summary"] + out["index_write"]
    # block ids; per candidate: codes, scale/zero, req_to_token, pos written, score written
    out["cand_score"] = rows * (cfg.block_budget * 8 + n_cand * (r // 2 + 8 + 4 + 8 + 4))
    out["block_topk_stream"], out["token_topk_stream"] = out["block_topk"], out["token_topk"]
    out["candidates_torch"], out["token_score_loop"] = out["candidates"], out["token_score"]
    out["summary_flags"] = out["summary"]
    out["token_select"] = out["cand_score"] + out["token_topk"]
    out["step_legacy"] = out["step"]
    out["full_attention"] = bs * ctx * m.hk * kv_row
    return out


# --- baselines -----------------------------------------------------------------------------------
def flashinfer_decode(m: Model, layer: Layer, req_to_token, seq_lens, q, workspace):
    """FlashInfer full-attention decode over the same paged pool (page = block)."""
    import flashinfer

    b = layer.cfg.block_size
    bs, ctx = req_to_token.shape
    per = -(-ctx // b)
    indices = (req_to_token[:, ::b] // b).reshape(-1).int()
    indptr = torch.arange(bs + 1, device="cuda", dtype=torch.int32) * per
    last = torch.full((bs,), ctx - (per - 1) * b, dtype=torch.int32, device="cuda")
    sm_scale = 1.0 / math.sqrt(m.d if not m.mla else 192)
    if m.mla:
        from flashinfer.mla import BatchMLAPagedAttentionWrapper

        w = BatchMLAPagedAttentionWrapper(workspace)
        kv_len = seq_lens.int()
        qo_indptr = torch.arange(bs + 1, device="cuda", dtype=torch.int32)
        w.plan(qo_indptr, indptr, indices, kv_len, m.hq, m.dv, m.d - m.dv, b, False, sm_scale,
               q.dtype, layer.k.dtype)
        paged = layer.k.view(-1, b, m.d)
        ckv, kpe = paged[..., :m.dv], paged[..., m.dv:]
        q_nope, q_pe = q[..., :m.dv], q[..., m.dv:]
        return lambda: w.run(q_nope, q_pe, ckv, kpe)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", use_tensor_cores=True)
    w.plan(indptr, indices, last, m.hq, m.hk, m.d, b, pos_encoding_mode="NONE", sm_scale=sm_scale,
           q_data_type=q.dtype, kv_data_type=layer.k.dtype)
    kc, vc = layer.k.view(-1, b, m.hk, m.d), layer.v.view(-1, b, m.hk, m.dv)
    return lambda: w.run(q, (kc, vc))


def sglang_triton_decode(m: Model, layer: Layer, req_to_token, seq_lens, q, max_splits: int = 16):
    """SGLang's Triton decode kernel (page size 1: one index per token, as its triton backend)."""
    from sglang.kernels.ops.attention.decode_attention import decode_attention_fwd

    bs, ctx = req_to_token.shape
    indptr = torch.arange(bs + 1, device="cuda", dtype=torch.int32) * ctx
    indices = req_to_token.reshape(-1).long()
    logits = torch.empty(bs, m.hq, max_splits, m.dv, dtype=torch.float32, device="cuda")
    lse = torch.empty(bs, m.hq, max_splits, dtype=torch.float32, device="cuda")
    splits = torch.full((bs,), max_splits, dtype=torch.int32, device="cuda")
    try:  # the split heuristic of SGLang's triton backend, where this version has it
        from sglang.kernels.ops.attention.metadata import get_num_kv_splits_triton

        sms = torch.cuda.get_device_properties(0).multi_processor_count
        get_num_kv_splits_triton[(1,)](splits, seq_lens.int(), bs, 1, m.hq, m.hk, max_splits, sms,
                                       MAX_NUM_SEQ=max(256, 1 << (bs - 1).bit_length()))
    except Exception:  # noqa: BLE001
        splits.fill_(max_splits)
    o = torch.empty(bs, m.hq, m.dv, dtype=q.dtype, device="cuda")
    sm_scale = 1.0 / math.sqrt(m.d if not m.mla else 192)
    kw = {"has_mla": True} if m.mla else {}
    return lambda: decode_attention_fwd(q, layer.k, layer.v, o, indptr, indices, logits, lse, splits,
                                        max_splits, sm_scale, 1.0, 1.0, **kw)


# --- one grid point ------------------------------------------------------------------------------
SWEPT_STAGES = ("attention", "block_score", "block_topk", "cand_score", "token_topk", "token_select")


def sweep_module(stage: str, m: Model):
    """The kernel wrapper module whose LAUNCH / SWEEP --sweep varies for `stage`."""
    from asynctls_sglang.kernels.common import block_score, token_score, token_select, topk
    from asynctls_sglang.kernels.gqa import decode as gqa_decode
    from asynctls_sglang.kernels.mla import decode as mla_decode

    return {"attention": mla_decode if m.mla else gqa_decode, "block_score": block_score, "block_topk": topk,
            "cand_score": token_score, "token_topk": topk, "token_select": token_select}[stage]


def launch_label(overrides: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "default"


def run_point(m: Model, layer: Layer, bs: int, ctx: int, budget: int, timer: Timer, baselines: set[str],
              workspace, hbm: float, legacy_stages: bool = True, sweep: tuple[str, ...] = ()) -> dict:
    from types import SimpleNamespace

    from asynctls_sglang.kernels import triton_ops as ops
    from asynctls_sglang.ops import torch_ops
    from asynctls_sglang.ops.select import select_chosen, select_positions, step_positions

    cfg = layer.cfg.replace(token_budget=budget)
    b = cfg.block_size
    req_to_token, rows, seq_lens, new_loc = layer.batch(bs, ctx)
    mb = -(-ctx // b)
    q = torch.randn(bs, m.hq, m.d, device="cuda", dtype=torch.bfloat16)
    idx = layer.index
    k_new = layer.k[new_loc].clone()
    sm_scale = 1.0 / math.sqrt(m.d if not m.mla else 192)
    k_sel = cfg.selected_tokens

    # intermediate tensors of the selection, computed once so every stage is timed on its real input
    pages = ops.block_table(req_to_token, rows, mb, b)
    bscores = ops.score_blocks(q, idx.kmin, idx.kmax, pages, seq_lens, b, cfg.sink_tokens, cfg.local_window)
    blocks = ops.select_blocks(bscores, cfg.block_budget)
    pos, ok = ops.candidate_positions(blocks, seq_lens, b, cfg.sink_tokens, cfg.local_window)
    tscores = ops.score_tokens(q, idx.codes, idx.scale_zero, idx.channels, req_to_token, rows, pos, ok)
    chosen = ops.select_tokens(tscores, pos, k_sel)
    positions = select_positions(q, idx, req_to_token, rows, seq_lens, mb, cfg, ops=ops)
    att_out = torch.empty(bs, m.hq, m.dv, device="cuda", dtype=q.dtype)  # the layer's output, as the backend's
    blocks_out, chosen_out = torch.empty_like(blocks), torch.empty_like(chosen)
    cand_out = (torch.empty_like(pos), torch.empty_like(ok))
    cand_score_out = (torch.empty_like(tscores), torch.empty_like(pos))
    # the triton ops with the previous selection kernels (streaming top-k, torch candidates,
    # per-head token scores)
    legacy = SimpleNamespace(**{name: getattr(ops, name) for name in ops.__all__})
    legacy.select_blocks = lambda s, k, **kw: ops.select_blocks(s, k, method="stream", **kw)
    legacy.select_tokens = lambda s, p, k, **kw: ops.select_tokens(s, p, k, method="stream", **kw)
    legacy.candidate_positions = torch_ops.candidate_positions
    legacy.score_tokens = lambda *args, **kw: ops.score_tokens(*args, method="loop", **kw)

    def legacy_block_tokens(q_, codes, sz, channels, r2t, req_rows, blk, lens, bsize, sink, local, heads="max"):
        pos_, ok_ = legacy.candidate_positions(blk, lens, bsize, sink, local)
        return legacy.score_tokens(q_, codes, sz, channels, r2t, req_rows, pos_, ok_, heads=heads), pos_
    legacy.score_block_tokens = legacy_block_tokens
    legacy.score_select_block_tokens = None  # select.chosen_in_blocks: the two legacy ops above

    def attention():
        ops.sparse_decode_attention(q, layer.k, layer.v, req_to_token, rows, positions, sm_scale, out=att_out,
                                    out_dtype=att_out.dtype)

    # the backend's per-step tensors (adapter.backend._graph_positions) at its default dense width
    # (config.dense_len: max(K, DENSE_FLOOR)); no row is dense at these lengths
    from asynctls_sglang.config import DENSE_FLOOR

    sp = step_positions(seq_lens, torch.zeros(bs, dtype=torch.bool, device="cuda"), positions.shape[1],
                        max(cfg.token_budget, DENSE_FLOOR), cfg, ops)

    def step():
        # as memory.index_store.on_write: one launch for both
        ops.update_block_summaries(idx.kmin, idx.kmax, layer.flag, new_loc, k_new, b,
                                   index=(idx.codes, idx.scale_zero, idx.channels))
        p = sp.put(select_chosen(q, idx, req_to_token, rows, seq_lens, mb, cfg, ops=ops, pages=pages))
        ops.sparse_decode_attention(q, layer.k, layer.v, req_to_token, rows, p, sm_scale, out=att_out,
                                    counts=sp.counts, active=cfg.token_budget, out_dtype=att_out.dtype)

    def step_legacy():  # the path before sessions 6-8 (select_positions builds the block table per layer)
        ops.update_block_summaries(idx.kmin, idx.kmax, layer.flag, new_loc, k_new, b, method="flags")
        ops.write_index_keys(idx.codes, idx.scale_zero, new_loc, k_new, idx.channels)
        p = select_positions(q, idx, req_to_token, rows, seq_lens, mb, cfg, ops=legacy)
        ops.sparse_decode_attention(q, layer.k, layer.v, req_to_token, rows, p, sm_scale, out=att_out,
                                    out_dtype=att_out.dtype)

    fns = {
        "summary": lambda: ops.update_block_summaries(idx.kmin, idx.kmax, layer.flag, new_loc, k_new, b),
        "index_write": lambda: ops.write_index_keys(idx.codes, idx.scale_zero, new_loc, k_new, idx.channels),
        "block_score": lambda: ops.score_blocks(q, idx.kmin, idx.kmax, pages, seq_lens, b, cfg.sink_tokens,
                                                cfg.local_window, out=bscores),
        "block_topk": lambda: ops.select_blocks(bscores, cfg.block_budget, out=blocks_out),
        "candidates": lambda: ops.candidate_positions(blocks, seq_lens, b, cfg.sink_tokens, cfg.local_window,
                                                      out=cand_out),
        "token_score": lambda: ops.score_tokens(q, idx.codes, idx.scale_zero, idx.channels, req_to_token, rows,
                                                pos, ok, out=tscores),
        "token_topk": lambda: ops.select_tokens(tscores, pos, k_sel, out=chosen_out),
        "attention": attention,
        "step": step,
        "block_topk_stream": lambda: ops.select_blocks(bscores, cfg.block_budget, out=blocks_out, method="stream"),
        "candidates_torch": lambda: torch_ops.candidate_positions(blocks, seq_lens, b, cfg.sink_tokens,
                                                                  cfg.local_window),
        "token_score_loop": lambda: ops.score_tokens(q, idx.codes, idx.scale_zero, idx.channels, req_to_token,
                                                     rows, pos, ok, out=tscores, method="loop"),
        "token_topk_stream": lambda: ops.select_tokens(tscores, pos, k_sel, out=chosen_out, method="stream"),
        "summary_flags": lambda: ops.update_block_summaries(idx.kmin, idx.kmax, layer.flag, new_loc, k_new, b,
                                                            method="flags"),
        "step_legacy": step_legacy,
        "cand_score": lambda: ops.score_block_tokens(q, idx.codes, idx.scale_zero, idx.channels, req_to_token, rows,
                                                     blocks, seq_lens, b, cfg.sink_tokens, cfg.local_window,
                                                     out=cand_score_out),
        # level 2 whole (token_select.LAUNCH: the two kernels above, or one fused)
        "token_select": lambda: ops.score_select_block_tokens(q, idx.codes, idx.scale_zero, idx.channels, req_to_token,
                                                              rows, blocks, seq_lens, b, cfg.sink_tokens,
                                                              cfg.local_window, k_sel, out=chosen_out),
        "summary_index": lambda: ops.update_block_summaries(idx.kmin, idx.kmax, layer.flag, new_loc, k_new, b,
                                                            index=(idx.codes, idx.scale_zero, idx.channels)),
    }
    if "fi" in baselines:
        try:
            fns["flashinfer"] = flashinfer_decode(m, layer, req_to_token, seq_lens, q, workspace)
        except Exception as exc:  # noqa: BLE001
            print(f"[kbench] flashinfer unavailable: {exc!r}"[:300], flush=True)
    if "tr" in baselines:
        try:
            fns["sglang_triton"] = sglang_triton_decode(m, layer, req_to_token, seq_lens, q)
        except Exception as exc:  # noqa: BLE001
            print(f"[kbench] sglang triton unavailable: {exc!r}"[:300], flush=True)

    if not legacy_stages:
        for name in (*LEGACY, "step_legacy"):
            del fns[name]
    nbytes = stage_bytes(m, cfg, bs, ctx, budget)
    row: dict = {"model": m.name, "ctx": ctx, "bs": bs, "budget": budget, "ms": {}, "mode": {},
                 "bytes": nbytes, "hbm_frac": {}}
    for name, fn in fns.items():
        try:
            ms, mode = timer(fn)
        except Exception as exc:  # noqa: BLE001
            row.setdefault("errors", {})[name] = repr(exc)[:300]
            continue
        row["ms"][name], row["mode"][name] = round(ms, 5), mode
        key = name if name in nbytes else "full_attention"
        row["hbm_frac"][name] = round(nbytes[key] / hbm / (ms * 1e-3), 3)
    from asynctls_sglang.kernels.common.launch import launch_overrides

    for stage in sweep:  # the stage under each alternative launch configuration (the first: the default)
        module = sweep_module(stage, m)
        for overrides in ({}, *module.SWEEP):
            try:
                with launch_overrides(module.LAUNCH, overrides):
                    ms, _ = timer(fns[stage])
            except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory: report, go on
                row.setdefault("errors", {})[f"{stage}[{launch_label(overrides)}]"] = repr(exc)[:300]
                continue
            row.setdefault("sweep", {}).setdefault(stage, {})[launch_label(overrides)] = round(ms, 5)
    if "flashinfer" in row["ms"] and "step" in row["ms"]:
        row["speedup_vs_flashinfer"] = round(row["ms"]["flashinfer"] / row["ms"]["step"], 2)
        if "step_legacy" in row["ms"]:
            row["speedup_legacy_vs_flashinfer"] = round(row["ms"]["flashinfer"] / row["ms"]["step_legacy"], 2)
        row["attention_speedup_vs_flashinfer"] = round(row["ms"]["flashinfer"] / row["ms"]["attention"], 2)
    return row


# --- report --------------------------------------------------------------------------------------
def print_table(rows: list[dict]) -> None:
    cols = list(STAGES) + list(FUSED) + ["step", "flashinfer", "sglang_triton"] + list(LEGACY) + ["step_legacy"]
    short = {"summary": "summ", "index_write": "idxw", "block_score": "bscore", "block_topk": "btopk",
             "candidates": "cand", "token_score": "tscore", "token_topk": "ttopk", "attention": "attn",
             "step": "STEP", "flashinfer": "FI", "sglang_triton": "SGL-tr", "block_topk_stream": "btopk-old",
             "candidates_torch": "cand-old", "token_score_loop": "tscore-old", "token_topk_stream": "ttopk-old",
             "summary_flags": "summ-old", "step_legacy": "STEP-old", "summary_index": "summ+idx",
             "cand_score": "cand+tscore", "token_select": "tsel"}
    print("\nmicroseconds per layer call (median); speedup = FlashInfer full / AsyncTLS step; "
          "hbm = step bytes / (HBM floor x time)")
    print("| model | ctx | bs | K | " + " | ".join(short[c] for c in cols) + " | speedup | hbm |")
    print("|" + "---|" * (len(cols) + 6))
    for r in rows:
        cells = [f"{r['ms'][c] * 1e3:.1f}" if c in r["ms"] else "-" for c in cols]
        print(f"| {r['model']} | {r['ctx']} | {r['bs']} | {r['budget']} | " + " | ".join(cells)
              + f" | {r.get('speedup_vs_flashinfer', '-')} | {r['hbm_frac'].get('step', '-')} |")


def print_sweep(rows: list[dict]) -> None:
    """One table per swept stage: us per call under each launch configuration, the best marked."""
    stages = list(dict.fromkeys(st for r in rows for st in r.get("sweep", {})))
    for stage in stages:
        labels = list(dict.fromkeys(lab for r in rows for lab in r.get("sweep", {}).get(stage, {})))
        print(f"\n{stage}: microseconds per call under each launch configuration (* = fastest)")
        print("| model | ctx | bs | K | " + " | ".join(labels) + " |")
        print("|---|---|---|---|" + "---|" * len(labels))
        for r in rows:
            times = r.get("sweep", {}).get(stage, {})
            if not times:
                continue
            best = min(times.values())
            cells = [("-" if lab not in times else f"{times[lab] * 1e3:.1f}" + ("*" if times[lab] == best else ""))
                     for lab in labels]
            print(f"| {r['model']} | {r['ctx']} | {r['bs']} | {r['budget']} | " + " | ".join(cells) + " |")


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        series: dict = {}
        for r in rows:
            if r["model"] == name and "speedup_vs_flashinfer" in r:
                series.setdefault((r["bs"], r["budget"]), []).append((r["ctx"], r["speedup_vs_flashinfer"]))
        for (bs, budget), pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] // 1024 for p in pts], [p[1] for p in pts], marker="o", label=f"bs {bs}, K {budget}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(f"{name}: AsyncTLS step vs FlashInfer full decode")
        ax.set_xlabel("context (k tokens)")
        ax.set_ylabel("speedup (x)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"[kbench] plot -> {path}")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="qwen3-8b,glm-4.7-flash")
    ap.add_argument("--ctx", default="32768,65536,131072")
    ap.add_argument("--bs", default="1,8,32")
    ap.add_argument("--budgets", default="2048,512", help="token budgets K (sink and local included)")
    ap.add_argument("--block-budget", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--mla-heads", type=int, default=20, help="query heads of the MLA model (GLM-4.7-Flash: 20)")
    ap.add_argument("--baselines", default="fi,tr", help="comma list of fi (FlashInfer), tr (SGLang triton)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--no-graph", action="store_true", help="time eager calls instead of CUDA graph replays")
    ap.add_argument("--no-legacy", action="store_true",
                    help="skip the previous selection kernels (block/token_topk_stream, candidates_torch, "
                         "token_score_loop, summary_flags, step_legacy)")
    ap.add_argument("--hbm-tbs", type=float, default=4.2, help="HBM bandwidth floor in TB/s (H200: 4.2)")
    ap.add_argument("--quick", action="store_true", help="a short grid: 32k/128k, bs 1/8, K 2048, 10 reps")
    ap.add_argument("--sweep", default="",
                    help="comma list of stages (attention, block_score, block_topk, cand_score, token_topk, "
                         "token_select) also "
                         "timed under each alternative launch configuration of their kernel (its SWEEP) at every point")
    ap.add_argument("--out", default=None, help="JSON results path (a PNG plot is written beside it)")
    a = ap.parse_args(argv)
    if a.quick:
        a.ctx, a.bs, a.budgets, a.reps = "32768,131072", "1,8", "2048", 10
    unknown = {x for x in a.sweep.split(",") if x} - set(SWEPT_STAGES)
    if unknown:
        ap.error(f"--sweep takes {', '.join(SWEPT_STAGES)}; got {', '.join(sorted(unknown))}")
    return a


def main(argv=None) -> None:
    a = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("kernel_bench needs a CUDA GPU")
    ctxs = [int(x) for x in a.ctx.split(",")]
    bss = [int(x) for x in a.bs.split(",")]
    budgets = [int(x) for x in a.budgets.split(",")]
    baselines = set(a.baselines.split(",")) if a.baselines else set()
    all_models = models(a.mla_heads)
    sweep = tuple(x for x in a.sweep.split(",") if x)
    timer = Timer(a.reps, not a.no_graph)
    workspace = torch.zeros(512 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    result = {"device": torch.cuda.get_device_name(), "args": vars(a), "rows": []}
    t0 = time.time()
    for name in a.models.split(","):
        m = all_models[name]
        cfg = AsyncTLSConfig(block_size=a.block_size, block_budget=a.block_budget, token_budget=max(budgets),
                             dense_threshold=0)
        layer = Layer(m, cfg, max(ctxs) * max(bss))
        print(f"[kbench] {name}: pool of {max(ctxs) * max(bss)} tokens ready at {time.time() - t0:.0f}s", flush=True)
        for ctx in ctxs:
            for bs in bss:
                for budget in budgets:
                    row = run_point(m, layer, bs, ctx, budget, timer, baselines, workspace, a.hbm_tbs * 1e12,
                                    not a.no_legacy, sweep)
                    result["rows"].append(row)
                    print("[kbench] " + json.dumps({k: row[k] for k in ("model", "ctx", "bs", "budget", "ms")}),
                          flush=True)
                    if a.out:
                        with open(a.out, "w") as f:
                            json.dump(result, f, indent=1)
        del layer
        torch.cuda.empty_cache()
    print_table(result["rows"])
    print_sweep(result["rows"])
    if a.out:
        plot(result["rows"], os.path.splitext(a.out)[0] + ".png")
    print(f"[kbench] done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
