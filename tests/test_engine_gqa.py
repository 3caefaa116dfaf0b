"""asynctls inside SGLang's real engine on a tiny Qwen3 (GQA 8/2, head dim 64)."""
from __future__ import annotations

import pytest

from engine_helpers import asynctls_stats, engine, flush_cache, greedy, random_prompts

pytestmark = pytest.mark.engine

# Covering budgets for the short prompts (<= 256 tokens incl. generated), sparse for the long one.
CFG = dict(block_size=16, block_budget=16, token_budget=256, sink_tokens=4, local_window=16,
           dense_threshold=0, calibration_tokens=64)
SHORT = random_prompts([37, 120, 230], seed=1)
LONG = random_prompts([700], seed=2)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return tiny_model_dir("qwen3")


@pytest.fixture(scope="module")
def stock_outputs(model):
    with engine(model, "torch_native") as eng:
        return greedy(eng, SHORT + LONG, 16)


@pytest.fixture(scope="module")
def asynctls_engine(model, stock_outputs):
    with engine(model, "asynctls", CFG) as eng:
        yield eng


def test_covering_budget_is_token_identical_to_stock(asynctls_engine, stock_outputs):
    before = asynctls_stats(asynctls_engine)["sparse_request_steps"]
    assert greedy(asynctls_engine, SHORT, 16) == stock_outputs[:len(SHORT)]
    stats = asynctls_stats(asynctls_engine)
    # the selection machinery ran (threshold 0) and chose every token
    assert stats["sparse_request_steps"] - before == 16 * len(SHORT)


def test_sparse_path_attends_exactly_the_budget(asynctls_engine, stock_outputs):
    eng = asynctls_engine
    out = greedy(eng, LONG, 16)
    stats = asynctls_stats(eng)
    assert len(out[0]) == 16 and all(0 <= t < 512 for t in out[0])
    assert stats["attended_tokens_last"] == CFG["token_budget"]
    # budget 256 of a 700-token context: attention really is restricted -> outputs may differ,
    # and at least the selection cannot have been a dense pass
    assert stats["attended_tokens_max"] == CFG["token_budget"]


def test_batch_mixing_short_and_long(asynctls_engine, stock_outputs):
    """A batch mixing rows below and above the budget runs both paths in one step."""
    before = asynctls_stats(asynctls_engine)
    outs = greedy(asynctls_engine, [SHORT[0], LONG[0], SHORT[1]], 16, batched=True)
    after = asynctls_stats(asynctls_engine)
    assert [len(o) for o in outs] == [16, 16, 16]
    assert after["sparse_request_steps"] - before["sparse_request_steps"] == 48
    assert after["attended_tokens_last"] == CFG["token_budget"]


def test_radix_reused_prefix_decodes_as_a_fresh_one(asynctls_engine):
    """A request whose 640-token prefix (KV and index) comes from the radix cache decodes the
    same tokens as when its whole prompt is prefilled afresh."""
    eng = asynctls_engine
    prefix = LONG[0][:640]
    a, b = prefix + [11, 12, 13], prefix + [21, 22, 23]
    params = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
    flush_cache(eng)
    eng.generate(input_ids=a, sampling_params=params)
    reused = eng.generate(input_ids=b, sampling_params=params)
    flush_cache(eng)
    fresh = eng.generate(input_ids=b, sampling_params=params)
    assert reused["meta_info"]["cached_tokens"] >= 512
    assert fresh["meta_info"]["cached_tokens"] == 0
    assert reused["output_ids"] == fresh["output_ids"]


def test_fixed_shape_path_matches_planned_path(model, monkeypatch):
    """The CUDA-graph decode path (fixed shapes, device-side dense/sparse choice) gives the same
    tokens as the eager plan, for a batch mixing dense and sparse rows."""
    cfg = {**CFG, "dense_threshold": 300}
    prompts = SHORT + LONG
    with engine(model, "asynctls", cfg) as eng:
        planned = greedy(eng, prompts, 12)
    monkeypatch.setenv("ASYNCTLS_FIXED_SHAPES", "1")
    with engine(model, "asynctls", cfg) as eng:
        fixed = greedy(eng, prompts, 12)
        stats = asynctls_stats(eng)
    assert fixed == planned
    assert stats["attended_tokens_max"] == CFG["token_budget"]


@pytest.mark.parametrize("cfg, args, flag", [
    ({**CFG, "token_budget": 99999}, {}, "--asynctls-token-budget"),
    (CFG, {"page_size": 32}, "--page-size"),
], ids=["impossible-budget", "page-size-mismatch"])
def test_plain_sglang_with_a_bad_config_refuses_to_start(model, cfg, args, flag):
    """sglang.Engine(attention_backend="asynctls") with a bad ASYNCTLS_CONFIG or page size stops
    before any scheduler starts, naming the flag; no engine comes up computing something else."""
    from asynctls_sglang.config import ConfigError

    with pytest.raises(ConfigError, match=flag):
        with engine(model, "asynctls", cfg, **args):
            pass
