"""MLA prefill in the MHA form (``mla_prefill="mha"``, the GPU default) through SGLang's real
engine on the CPU: per-head K/V expanded from the latent rows, over chunked prompts (each chunk
after the first attends a prefix expanded by the backend) and radix-cache hits. The index is built
from the latent rows either way, and calibrated from latent queries formed from the per-head ones,
so the tokens equal those of the absorbed form (fp32: up to near ties), with offload too."""
from __future__ import annotations

import pytest

from engine_helpers import asynctls_stats, assert_same_up_to_near_ties, engine, greedy, greedy_with_margins
from engine_helpers import random_prompts, two_turns
from mla_cases import CFG

pytestmark = pytest.mark.engine

PROMPTS = random_prompts([41, 221, 600], seed=3)  # 600 tokens: sparse decode, five chunks of 128
TURN1, QUESTION = random_prompts([300], seed=6)[0], [17, 23, 29, 31]
PARAMS = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}
CHUNKED = dict(chunked_prefill_size=128)
# fp32 on both sides: the two forms differ only in summation order
TOL = 1e-3


@pytest.fixture(scope="module", params=["deepseek_v2", "glm4_moe_lite"])
def model(tiny_model_dir, request):
    """DeepSeek-V2, and GLM-4.7-Flash's architecture (a q LoRA; the recipes' model)."""
    return tiny_model_dir(request.param)


@pytest.fixture(scope="module")
def absorbed(model):
    with engine(model, "asynctls", dict(CFG, mla_prefill="absorbed"), **CHUNKED) as eng:
        tokens = greedy_with_margins(eng, PROMPTS)
        together = batched(eng)
        return {"tokens": tokens, "batched": together, "turns": two_turns(eng, TURN1, QUESTION, PARAMS),
                "stats": asynctls_stats(eng)}


def batched(eng) -> list[list[int]]:
    """One prefill batch mixing requests with a radix prefix (the cached prompts, extended) and
    one without, after the cache holds PROMPTS."""
    fresh = random_prompts([90], seed=7)
    return greedy(eng, [p + [11, 12, 13] for p in PROMPTS] + fresh, batched=True)


def test_mha_prefill_matches_the_absorbed_form(model, absorbed):
    with engine(model, "asynctls", dict(CFG, mla_prefill="mha"), **CHUNKED) as eng:
        tokens = greedy(eng, PROMPTS)
        together = batched(eng)
        first, second, cached = two_turns(eng, TURN1, QUESTION, PARAMS)
        stats = asynctls_stats(eng)
    assert_same_up_to_near_ties(tokens, absorbed["tokens"], TOL)
    assert together == absorbed["batched"]
    assert (first, second) == absorbed["turns"][:2]
    assert cached >= len(TURN1) // CFG["block_size"] * CFG["block_size"]  # turn 2 reused turn 1's prefix
    mla = stats["mla_prefill"]
    assert mla["mode"] == "mha" and mla["mha_forwards"] > 0 and mla["absorbed_forwards"] == 0
    assert absorbed["stats"]["mla_prefill"]["mha_forwards"] == 0
    assert stats["calibrated_tokens_layer0"] == absorbed["stats"]["calibrated_tokens_layer0"]
    assert stats["attended_tokens_last"] == CFG["token_budget"]


def test_mha_prefill_with_offload(tiny_model_dir):
    """Offload (large cache, misses fetched before the attention): the seeds of the first decode
    step come from latent queries of the prompts' last rows; the tokens are offload off's."""
    model = tiny_model_dir("deepseek_v2")
    with engine(model, "asynctls", dict(CFG, mla_prefill="mha"), **CHUNKED) as eng:
        off = greedy(eng, PROMPTS), two_turns(eng, TURN1, QUESTION, PARAMS)[:2]
    exact = dict(CFG, mla_prefill="mha", offload=True, prefetch_depth=0, resident_blocks=64,
                 max_miss_blocks_per_step=64)
    with engine(model, "asynctls", exact, **CHUNKED) as eng:
        on = greedy(eng, PROMPTS), two_turns(eng, TURN1, QUESTION, PARAMS)[:2]
        stats = asynctls_stats(eng)
    assert on == off
    assert stats["mla_prefill"]["mha_forwards"] > 0 and stats["mla_prefill"]["absorbed_forwards"] == 0
    assert stats["offload"]["tokens_dropped"] == 0 and stats["offload"]["bytes_moved"] > 0
