"""The batch rule for dense decode (config.dense_batch_tokens) inside SGLang's engine (tiny Qwen3,
CPU, eager decode): a batch whose lengths add up to at most dense_batch_tokens x (n + 2) decodes
whole on the stock kernel, a longer one sparsely; the per-request threshold still holds alone."""
from __future__ import annotations

import pytest

from engine_helpers import asynctls_stats, engine, greedy, random_prompts

pytestmark = pytest.mark.engine

# bound: 100 x (n + 2) tokens -> 300 for one request, 400 for two
CFG = dict(block_size=16, block_budget=16, token_budget=64, sink_tokens=4, local_window=16,
           dense_threshold=32, dense_batch_tokens=100, calibration_tokens=64)
NEW = 12  # tokens per request: at least NEW - 1 decode steps each


def _steps(eng) -> tuple[int, int]:
    s = asynctls_stats(eng)
    return s["dense_decode_steps"], s["sparse_decode_steps"]


def test_batches_under_the_bound_decode_densely_and_longer_ones_sparsely(tiny_model_dir):
    model = tiny_model_dir("qwen3")
    with engine(model, "asynctls", CFG) as eng:
        seen = [_steps(eng)]
        for prompts, batched in [(random_prompts([250], seed=1), False),  # 250..262 <= 300: dense
                                 (random_prompts([400], seed=2), False),  # > 300: sparse
                                 (random_prompts([120, 150], seed=3), True),  # sum <= 400: dense
                                 (random_prompts([120, 300], seed=4), True)]:  # sum > 400: sparse
            out = greedy(eng, prompts, NEW, batched=batched)
            assert all(len(o) == NEW for o in out)
            seen.append(_steps(eng))
        attended = asynctls_stats(eng)["attended_tokens_last"]
    steps = [(d1 - d0, s1 - s0) for (d0, s0), (d1, s1) in zip(seen, seen[1:])]
    dense, sparse = [(n, 0) for n, _ in steps], [(0, n) for _, n in steps]
    assert [steps[0], steps[1], steps[2], steps[3]] == [dense[0], sparse[1], dense[2], sparse[3]], steps
    assert all(sum(step) >= NEW - 1 for step in steps), steps
    assert attended == 64
