"""The offloading engine (offload=True) inside SGLang's real engine on the CPU: decode reads the
resident block cache fed from the host tier, and gives the same tokens as offload off when the
cache is large enough; stays well-formed and counts late blocks when it is small; radix-cache
prefixes, finished and aborted requests keep every request's KV its own."""
from __future__ import annotations

import pytest

from engine_helpers import asynctls_stats, engine, flush_cache, greedy, random_prompts
from engine_helpers import two_turns as chat_turns

pytestmark = pytest.mark.engine

# Budgets cover the short prompts (every block is selected at every step) and are sparse for LONG.
CFG = dict(block_size=16, block_budget=16, token_budget=256, sink_tokens=4, local_window=16,
           dense_threshold=0, calibration_tokens=64)
# Large cache, misses fetched before the attention: the selection is the one of offload off.
EXACT = dict(CFG, offload=True, prefetch_depth=0, resident_blocks=64, max_miss_blocks_per_step=64)
# The paper's pipeline (one step ahead) with the smallest cache the budgets allow (16 + 3 blocks).
SMALL = dict(CFG, offload=True, prefetch_depth=1, resident_blocks=19)
SHORT = random_prompts([37, 120, 230], seed=1)
LONG = random_prompts([700], seed=2)
TURN1 = random_prompts([520], seed=5)[0]
QUESTION = [17, 23, 29, 31]
PARAMS = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}


def two_turns(eng) -> tuple[list[int], list[int], int]:
    return chat_turns(eng, TURN1, QUESTION, PARAMS)


def offload_stats(eng) -> dict:
    return asynctls_stats(eng)["offload"]


# --- GQA (tiny Qwen3: 8 query / 2 KV heads, head dim 64) ------------------------------------------
@pytest.fixture(scope="module")
def qwen3(tiny_model_dir):
    return tiny_model_dir("qwen3")


@pytest.fixture(scope="module")
def reference(qwen3):
    """Offload off: the tokens every offload run is compared with."""
    with engine(qwen3, "asynctls", CFG) as eng:
        return {"short": greedy(eng, SHORT), "long": greedy(eng, LONG), "turns": two_turns(eng)[:2]}


@pytest.fixture(scope="module")
def exact_engine(qwen3, reference):
    with engine(qwen3, "asynctls", EXACT) as eng:
        yield eng


def test_gqa_large_cache_is_token_identical(exact_engine, reference):
    eng = exact_engine
    assert greedy(eng, SHORT) == reference["short"]
    assert greedy(eng, LONG) == reference["long"]
    stats = offload_stats(eng)
    assert stats["tokens_dropped"] == 0 and stats["blocks_late"] == 0 and stats["blocks_overflow"] == 0
    assert stats["blocks_written_through"] >= sum(len(p) // 16 for p in SHORT + LONG)
    assert stats["bytes_moved"] > 0 and stats["bytes_per_step"] > 0 and 0 < stats["hit_rate"] <= 1
    assert stats["seed_blocks_moved"] > 0  # prefills seeded the cache for their first decode step
    assert asynctls_stats(eng)["attended_tokens_last"] == CFG["token_budget"]


def test_default_host_pool_counts_the_resident_buffers(exact_engine):
    """No host_pool_tokens: 4 x (device pool + the resident buffers' bytes in K/V tokens); 4 x
    the device pool alone left the resident share of the GPU's KV memory uncounted."""
    stats = offload_stats(exact_engine)
    token_bytes = 2 * 2 * (64 + 64) * 4  # tiny Qwen3: 2 layers, 2 KV heads, K and V of 64, fp32
    resident_tokens = stats["resident_bytes"] // token_bytes  # buffers only: the charge also has tables
    assert stats["host_pool_tokens"] >= 4 * (stats["device_pool_tokens"] + resident_tokens) - 16
    assert stats["host_pool_tokens"] > 4 * stats["device_pool_tokens"]


def test_gqa_multi_turn_reuses_the_offloaded_prefix(exact_engine, reference):
    first, second, cached = two_turns(exact_engine)
    assert cached >= 512  # turn 2 prefilled only its new tokens
    assert (first, second) == reference["turns"]


def test_gqa_finish_and_abort_free_the_rows(exact_engine, reference):
    """A request aborted mid-decode and finished requests leave no resident blocks behind, and
    the requests that take their rows next see only their own KV."""
    eng = exact_engine
    stream = eng.generate(input_ids=LONG[0], sampling_params={**PARAMS, "max_new_tokens": 400},
                          rid="to-abort", stream=True)
    for _, _ in zip(range(3), stream):
        pass
    eng.tokenizer_manager.abort_request(rid="to-abort")
    for _ in stream:
        pass
    assert greedy(eng, SHORT[::-1]) == reference["short"][::-1]
    assert offload_stats(eng)["rows_in_use"] == 0


def test_gqa_seed_brings_the_whole_first_selection(qwen3, reference):
    """One step may copy only 2 blocks per request and head, yet after a prefill every block of
    the first selection is resident (seeded in rounds): with covering budgets (every block wanted
    at every step) nothing is late and the tokens are those of offload off."""
    with engine(qwen3, "asynctls", dict(CFG, offload=True, prefetch_depth=1, resident_blocks=64,
                                        max_miss_blocks_per_step=2)) as eng:
        out = greedy(eng, SHORT)
        stats = offload_stats(eng)
    assert stats["blocks_late"] == 0 and stats["seed_blocks_moved"] > 2 * 2 * len(SHORT)
    assert out == reference["short"]


def _small_run(qwen3) -> list[tuple[list[list[int]], dict]]:
    """The smallest cache on a fresh engine: SHORT, then LONG, then SHORT reversed with LONG; each
    phase's tokens and the engine's stats after it."""
    with engine(qwen3, "asynctls", SMALL) as eng:
        return [(greedy(eng, prompts), asynctls_stats(eng)) for prompts in (SHORT, LONG, SHORT[::-1] + LONG)]


@pytest.fixture(scope="module")
def small_runs(qwen3):
    """The same run inline, then with ASYNCTLS_DEFER_COPIES=1: every plan and copy of the copy
    stream runs only when the compute side waits for it, the latest a GPU's copy stream could run
    (decode plans run there since session 14)."""
    inline = _small_run(qwen3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASYNCTLS_DEFER_COPIES", "1")
        deferred = _small_run(qwen3)
    return inline, deferred


def test_gqa_small_cache_pipeline(small_runs, reference):
    (short, before), (long, after), _ = small_runs[0]
    assert short == reference["short"]  # covering budgets: every wanted block was in time
    stats = after["offload"]
    assert len(long[0]) == 12 and all(0 <= t < 512 for t in long[0])
    assert stats["blocks_late"] > before["offload"]["blocks_late"]  # the selection drifted: late blocks replaced
    assert stats["blocks_evicted"] > 0 and stats["tokens_dropped"] == 0
    assert after["attended_tokens_last"] == CFG["token_budget"]


def test_gqa_pipeline_with_the_copy_stream_at_its_latest(small_runs):
    """The copy stream at its latest gives the same tokens and counts as the inline run: no read
    of the resident cache or its tables misses its wait, across request ends and rows taken again
    (the smallest cache: misses, evictions and late blocks at every step of LONG)."""
    keys = ("blocks_late", "blocks_moved", "blocks_evicted", "blocks_missed", "seed_blocks_moved",
            "tokens_dropped", "rows_in_use")

    def summary(phases):
        return [out for out, _ in phases], {k: phases[-1][1]["offload"][k] for k in keys}

    inline, deferred = map(summary, small_runs)
    assert inline[1]["blocks_late"] > 0 and inline[1]["blocks_evicted"] > 0
    assert deferred == inline


def test_gqa_fixed_shape_path_with_dense_rows(qwen3, reference, monkeypatch):
    """The CUDA-graph decode path (fixed shapes, device-side dense/sparse choice; here eager on
    the CPU) with offload: rows under the dense threshold attend all their blocks from the
    resident cache, the long row its selection; both give offload off's tokens."""
    monkeypatch.setenv("ASYNCTLS_FIXED_SHAPES", "1")
    with engine(qwen3, "asynctls", dict(EXACT, dense_threshold=300)) as eng:
        assert greedy(eng, SHORT + LONG) == reference["short"] + reference["long"]
        stats = asynctls_stats(eng)
    assert stats["offload"]["tokens_dropped"] == 0 and stats["attended_tokens_max"] == CFG["token_budget"]


def test_resident_cache_too_small_refuses_to_start(qwen3):
    from asynctls_sglang.config import ConfigError

    with pytest.raises(ConfigError, match="--asynctls-resident-blocks"):
        with engine(qwen3, "asynctls", dict(CFG, offload=True, resident_blocks=8)):
            pass


def test_host_pool_larger_than_ram_is_refused_before_allocating():
    """What the pool runs first at start-up with offload on (adapter.pools): a host pool that cannot
    fit stops the scheduler with the setting to lower. (Through the engine, the scheduler's
    start-up failure can leave SGLang's detokenizer process behind for minutes, so not here.)"""
    from asynctls_sglang.memory.host_tier import HostMemoryError, check_host_fits

    with pytest.raises(HostMemoryError, match="--asynctls-host-pool-tokens"):
        check_host_fits(2**40, 2, 16, 16384, pinned=False)
    check_host_fits(8192, 2, 16, 16384, pinned=False)


# --- MLA (tiny DeepSeek-V2: latent 512 + rope 64) -------------------------------------------------
MLA_PROMPTS = random_prompts([41, 150, 221, 600], seed=3)


@pytest.fixture(scope="module")
def mla(tiny_model_dir):
    return tiny_model_dir("deepseek_v2")


@pytest.fixture(scope="module")
def mla_reference(mla):
    """Offload off: the tokens both MLA tests compare with (each prompt set on an empty cache)."""
    with engine(mla, "asynctls", CFG) as eng:
        prompts, turns = greedy(eng, MLA_PROMPTS), two_turns(eng)[:2]
        flush_cache(eng)
        return {"prompts": prompts, "turns": turns, "short": greedy(eng, SHORT)}


def test_mla_large_cache_is_token_identical(mla, mla_reference):
    with engine(mla, "asynctls", EXACT) as eng:
        on = greedy(eng, MLA_PROMPTS), two_turns(eng)[:2]
        stats = offload_stats(eng)
    assert on == (mla_reference["prompts"], mla_reference["turns"])
    assert stats["tokens_dropped"] == 0 and stats["blocks_late"] == 0 and stats["bytes_moved"] > 0


def test_mla_pipeline_fixed_shapes(mla, mla_reference, monkeypatch):
    """The engines of tests/gpu/test_engine_offload_gpu.py[deepseek_v2] on the CPU: MLA with the
    pipelined engine (depth 1, default cache) on the fixed-shape decode path (the CUDA-graph path,
    run eagerly here), then the same prompts again in one batch (radix prefixes loaded back for
    the prefill). Covering budgets for the short prompts: the tokens of offload off."""
    monkeypatch.setenv("ASYNCTLS_FIXED_SHAPES", "1")

    def run():
        with engine(mla, "asynctls", dict(CFG, offload=True)) as eng:
            piped = greedy(eng, SHORT)
            batched = greedy(eng, SHORT + LONG, batched=True)
            return piped, batched, offload_stats(eng)

    piped, batched, stats = run()
    assert piped == mla_reference["short"]
    assert all(len(o) == PARAMS["max_new_tokens"] for o in batched)
    assert stats["prefix_blocks_loaded"] > 0 and stats["tokens_dropped"] == 0 and stats["bytes_moved"] > 0
    # the copy stream at its latest (ASYNCTLS_DEFER_COPIES): the same, with a batch whose rows
    # change as its requests end (the plans of a step must keep that step's rows)
    monkeypatch.setenv("ASYNCTLS_DEFER_COPIES", "1")
    late_piped, late_batched, late = run()
    keys = ("blocks_late", "blocks_moved", "blocks_evicted", "seed_blocks_moved", "tokens_dropped", "rows_in_use")
    assert (late_piped, late_batched) == (piped, batched)
    assert {k: late[k] for k in keys} == {k: stats[k] for k in keys}
