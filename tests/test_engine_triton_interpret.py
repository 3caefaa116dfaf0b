"""The backend's GPU code path without a GPU: SGLang's engine on the CPU with ASYNCTLS_OPS=triton
(every decode op a Triton kernel, run by Triton's interpreter) and ASYNCTLS_FIXED_SHAPES=1 (the
CUDA-graph path's fixed-shape selection), against the same engine on the torch ops.

The kernel tests check each kernel alone; this checks how the backend calls them (arguments,
strides, dtypes, per-step tensors shared across layers) at a sparse budget. Slow under the
interpreter (~2-3 min), so one prompt and few tokens.
"""
from __future__ import annotations

import os

import pytest

from engine_helpers import asynctls_stats, engine, greedy, random_prompts

pytestmark = pytest.mark.engine

CFG = dict(block_size=16, block_budget=12, token_budget=96, sink_tokens=4, local_window=16,
           dense_threshold=0, calibration_tokens=64)
PROMPTS = random_prompts([420], seed=7)


def _run(model: str, ops: str, cfg: dict = CFG, **engine_args) -> tuple[list[list[int]], dict]:
    saved = {k: os.environ.get(k) for k in ("ASYNCTLS_OPS", "ASYNCTLS_FIXED_SHAPES", "TRITON_INTERPRET")}
    os.environ.update(ASYNCTLS_OPS=ops, ASYNCTLS_FIXED_SHAPES="1", TRITON_INTERPRET="1")
    try:
        with engine(model, "asynctls", cfg, **engine_args) as eng:
            return greedy(eng, PROMPTS, 6), asynctls_stats(eng)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_triton_kernels_in_the_engine_match_the_torch_ops(tiny_model_dir):
    model = tiny_model_dir("qwen3")
    # a small pool: the calibration's re-quantisation interprets a kernel over every slot (258 s
    # of 2 CPU cores with SGLang's 8192, most of this module's time)
    want, want_stats = _run(model, "torch", max_total_tokens=512)
    got, got_stats = _run(model, "triton", max_total_tokens=512)
    assert want_stats["ops"] == "torch_ops" and got_stats["ops"] == "triton_ops"
    assert got_stats["attended_tokens_last"] == want_stats["attended_tokens_last"] == CFG["token_budget"]
    # Same selections up to fp32 summation order in the scores: identical greedy tokens here.
    assert got == want


def test_mla_offload_decode_on_the_kernels_matches_the_torch_ops(tiny_model_dir):
    """The same for an MLA model with offload at depth 1 (the paper's pipeline): the block scores
    reach readable_pair as their channel slices (five for the 576-wide latent keys), the attention
    writes in the model's dtype, and the offload engine's step tables, table reads and residency
    plans run as kernels (ASYNCTLS_OPS=triton), all against the torch forms of the first run."""
    model = tiny_model_dir("deepseek_v2")
    # small pools: the calibration's re-quantisation interprets a kernel over every host slot
    cfg = dict(CFG, offload=True, prefetch_depth=1, resident_blocks=64, max_miss_blocks_per_step=64,
               host_pool_tokens=1024)
    want, want_stats = _run(model, "torch", cfg, max_total_tokens=512)
    got, got_stats = _run(model, "triton", cfg, max_total_tokens=512)
    assert got_stats["ops"] == "triton_ops" and got_stats["offload"]["blocks_moved"] > 0
    # the offload engine's step tables, table reads and plans ran as kernels too (torch in the first run)
    assert (got_stats["offload"]["table_ops"], want_stats["offload"]["table_ops"]) == ("triton", "torch")
    assert got_stats["attended_tokens_last"] == want_stats["attended_tokens_last"]
    assert got == want
