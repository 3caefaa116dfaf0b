"""Capacity with offload: SGLang's device KV pool limited to N tokens (--max-total-tokens) serves
concurrent requests totalling more than 4N tokens of context, their KV in the host pool (logical
ids), while offload off must queue them (tiny Qwen3 on the CPU engine)."""
from __future__ import annotations

import pytest

from engine_helpers import asynctls_stats, assert_same_up_to_near_ties, engine, greedy_with_margins, random_prompts

pytestmark = pytest.mark.engine

N = 1536  # device KV tokens
PROMPTS = random_prompts([520] * 12, seed=7)  # 6240 prompt tokens >= 4N
NEW = 24
CFG = dict(block_size=16, block_budget=16, token_budget=256, sink_tokens=4, local_window=16,
           dense_threshold=0, calibration_tokens=64)
ENGINE = dict(max_total_tokens=N, max_running_requests=16, chunked_prefill_size=544)


# Offload off decodes these 2 at a time, offload on 12 at a time: the batch shape changes the fp32
# rounding of the dense layers (which GEMM kernel the CPU picks), so a near-tied argmax of the
# random model may flip on another CPU; a flip anywhere else is a wrong answer.
TOL = 5e-3


def serve_all(model, cfg, margins: bool = False) -> tuple[list, dict]:
    with engine(model, "asynctls", cfg, **ENGINE) as eng:
        outs = greedy_with_margins(eng, PROMPTS, NEW, batched=True)
        return (outs if margins else [seq for seq, _ in outs]), asynctls_stats(eng)


def test_offload_serves_more_than_4x_the_device_pool(tiny_model_dir):
    model = tiny_model_dir("qwen3")
    assert sum(map(len, PROMPTS)) >= 4 * N
    off_out, off = serve_all(model, CFG, margins=True)
    # misses fetched before the attention, cache large enough: the same selection as offload off
    on_out, on = serve_all(model, dict(CFG, offload=True, host_pool_tokens=8192, prefetch_depth=0,
                                       resident_blocks=64, max_miss_blocks_per_step=64))
    equal = assert_same_up_to_near_ties(on_out, off_out, TOL)
    assert equal >= 0.75 * len(PROMPTS) * NEW, equal
    # offload off: the device pool holds 2 of these requests at a time; the rest wait
    assert off["max_decode_batch"] <= 2
    # offload on: all 12 (> 4N tokens of context) decode together from the host pool
    assert on["max_decode_batch"] == len(PROMPTS)
    stats = on["offload"]
    assert stats["blocks_demoted"] >= len(PROMPTS) * (520 // 16 - 4)  # prompt blocks left the device
    assert stats["prefix_blocks_loaded"] > 0  # chunked prefills read their demoted prefix back
    assert stats["tokens_dropped"] == 0 and stats["blocks_late"] == 0 and stats["bytes_moved"] > 0


def test_capacity_run_with_the_copy_stream_at_its_latest(tiny_model_dir, monkeypatch):
    """The same 12 requests with the paper's pipeline (depth 1): chunked prefills, demotion,
    load-back, seeds and a decode batch whose rows change as requests end. With the copy stream
    at its latest (ASYNCTLS_DEFER_COPIES: its plans and copies run only when the compute side
    waits for them) the tokens and counts are those of the inline run: no read misses its wait."""
    model = tiny_model_dir("qwen3")
    cfg = dict(CFG, offload=True, host_pool_tokens=8192, prefetch_depth=1, resident_blocks=64,
               max_miss_blocks_per_step=64)
    keys = ("blocks_late", "blocks_moved", "blocks_evicted", "seed_blocks_moved", "tokens_dropped",
            "rows_in_use", "prefix_blocks_loaded", "blocks_demoted")
    inline_out, inline = serve_all(model, cfg)
    monkeypatch.setenv("ASYNCTLS_DEFER_COPIES", "1")
    late_out, late = serve_all(model, cfg)
    assert inline["max_decode_batch"] == len(PROMPTS) and inline["offload"]["blocks_late"] > 0
    assert late_out == inline_out
    assert {k: late["offload"][k] for k in keys} == {k: inline["offload"][k] for k in keys}
