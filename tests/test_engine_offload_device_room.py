"""Offload's device room (the device pool holds what a prefill reads and writes: its prefix,
loaded back from the host, and its new tokens, beside the windows of the running requests):
prefills are admitted by it, so a prefill batch never asks the device pool for more pages than it
has (SGLang would stop with "Prefill out of memory"), and a request that could never fit is
refused with SGLang's own input-length error instead of waiting forever or stopping the server
(tiny Qwen3 on the CPU engine)."""
from __future__ import annotations

import pytest

from engine_helpers import MARGINS, asynctls_stats, assert_same_up_to_near_ties, engine, random_prompts, with_margins

pytestmark = pytest.mark.engine

N = 1536  # device KV tokens = 96 pages of 16
CFG = dict(block_size=16, block_budget=16, token_budget=256, sink_tokens=4, local_window=16,
           dense_threshold=0, calibration_tokens=64, offload=True, host_pool_tokens=16384)


@pytest.fixture(scope="module")
def room_engine(tiny_model_dir):
    """The device pool of N tokens, 2048-token chunks: the engine of the first two tests (the second
    reads the counters it asserts as differences). They run before the module's other engines:
    SGLang's Engine.shutdown kills every child process of this process, this engine's too, and a
    request to it then waits forever."""
    with engine(tiny_model_dir("qwen3"), "asynctls", CFG, max_total_tokens=N, max_running_requests=16,
                chunked_prefill_size=2048) as eng:
        yield eng


def test_prefills_are_admitted_by_device_room_and_too_long_requests_are_refused(room_engine):
    eng = room_engine
    # six 700-token prompts: SGLang's budget (host pool, 2048-token chunks) would prefill three of
    # them in one batch, 132 new device pages, more than the device pool holds
    prompts = random_prompts([700] * 6, seed=3)
    params = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
    outs = eng.generate(input_ids=prompts, sampling_params=params, **MARGINS)
    assert [o["meta_info"]["finish_reason"]["type"] for o in outs] == ["length"] * len(prompts)
    assert all(len(o["output_ids"]) == 8 for o in outs)
    stats = asynctls_stats(eng)
    assert stats["max_decode_batch"] >= 2  # requests still decode together from the host pool
    # longer than the device pool can ever hold for one prefill: SGLang's input-length error
    with pytest.raises(ValueError, match=f"Input length \\({N + 200} tokens\\) exceeds the maximum allowed"):
        eng.generate(input_ids=random_prompts([N + 200], seed=4)[0], sampling_params=params)
    # and the server goes on
    again = eng.generate(input_ids=prompts[0], sampling_params=params)
    # alone now, in a batch of six before: the same tokens up to a near tie (fp32 rounding)
    assert_same_up_to_near_ties([again["output_ids"]], [with_margins(outs[0])], tol=5e-3)


def test_requests_sharing_a_prefix_are_admitted_together_and_load_it_once(room_engine):
    """Four requests on one cached 800-token prefix (50 pages of the 96-page device pool), sent at
    once: the batch loads the shared prefix back once, so the device-room gate counts it once and
    admits all four to one prefill. Counting it per request (4 x 52 pages) admitted one request
    per round, and every round loaded the prefix back again (it is demoted after each prefill):
    the requests queued behind each other (on the H200: 8 x 64k, the last first token after 7 s)."""
    eng = room_engine
    prefix = random_prompts([800], seed=8)[0]
    tails = random_prompts([16] * 4, seed=9)
    params = {"temperature": 0, "max_new_tokens": 4, "ignore_eos": True}
    eng.generate(input_ids=prefix, sampling_params=dict(params, max_new_tokens=1))
    first = asynctls_stats(eng)["offload"]
    outs = eng.generate(input_ids=[prefix + t for t in tails], sampling_params=params)
    stats = asynctls_stats(eng)["offload"]
    loaded = stats["prefix_blocks_loaded"] - first["prefix_blocks_loaded"]
    # the prefill phases are timed: one more prefill forward (the four together), its layers seeded
    phases, before = stats["prefill_phases"], first["prefill_phases"]
    layers = phases["seed"]["calls"] // phases["prefill"]["calls"]
    assert {n: phases[n]["calls"] - before[n]["calls"] for n in phases} == {
        "prefill": 1, "load_back": 1, "seed": layers, "write_through": 1, "demote": 1}
    assert all(phases[n]["host_s"] > before[n]["host_s"] for n in phases)
    assert phases["prefill"]["stream_s"] >= phases["load_back"]["stream_s"] + phases["demote"]["stream_s"]
    assert [len(o["output_ids"]) for o in outs] == [4] * 4
    assert [o["meta_info"]["cached_tokens"] for o in outs] == [800] * 4
    assert 0 < loaded <= 800 // 16  # once for the batch (less the pages still on the device)


def test_every_request_row_decodes_when_long_prompts_arrive_together(tiny_model_dir):
    """Six 1100-token prompts (72% of the device pool each, five chunks) arrive at once with
    max_running_requests 6, as in the fixed-memory runs: all six decode together. Two SGLang
    scheduling rules held the last ones back (patches/offload.py): a request refused for device
    room marked the running batch full until a request finished, and a chunked request's row was
    counted twice, so the sixth row stayed unused (the same prompts reached 4 with neither fix or
    with only the second, 5 with only the first)."""
    model = tiny_model_dir("qwen3")
    prompts = random_prompts([1100] * 6, seed=3)
    params = {"temperature": 0, "max_new_tokens": 96, "ignore_eos": True}
    with engine(model, "asynctls", CFG, max_total_tokens=N, max_running_requests=6, chunked_prefill_size=256,
                disable_radix_cache=True) as eng:
        outs = eng.generate(input_ids=prompts, sampling_params=params)
        stats = asynctls_stats(eng)
    assert all(len(o["output_ids"]) == 96 for o in outs)
    assert stats["max_decode_batch"] == len(prompts)


@pytest.mark.parametrize("kind", ["qwen3", "deepseek_v2"])
def test_long_generations_give_back_the_device_pages_they_decoded_past(tiny_model_dir, kind):
    """Eight requests generating 160 tokens each (2080 tokens of KV, 1.35x the device pool) decode
    together: a decode step short of device pages unmaps the complete blocks the requests have
    decoded past their windows (their KV is on the host). Before, SGLang stopped with "Decode out
    of memory". With the resident cache large enough and fetched before attention, the tokens
    equal offload off on an unconstrained pool (GQA and MLA)."""
    model = tiny_model_dir(kind)
    prompts = random_prompts([100] * 8, seed=5)
    params = {"temperature": 0, "max_new_tokens": 160, "ignore_eos": True}
    exact = dict(prefetch_depth=0, resident_blocks=64, max_miss_blocks_per_step=64)
    with engine(model, "asynctls", dict(CFG, **exact), max_total_tokens=N, max_running_requests=16,
                chunked_prefill_size=2048) as eng:
        outs = [o["output_ids"] for o in eng.generate(input_ids=prompts, sampling_params=params)]
        stats = asynctls_stats(eng)
    assert stats["max_decode_batch"] == len(prompts)
    assert stats["offload"]["blocks_demoted"] >= len(prompts) * ((160 - 16) // 16) // 2  # pages given back
    off = dict(CFG, offload=False)
    with engine(model, "asynctls", off, max_total_tokens=4 * N, max_running_requests=16,
                chunked_prefill_size=2048) as eng:
        ref = [o["output_ids"] for o in eng.generate(input_ids=prompts, sampling_params=params)]
    assert outs == ref


def test_a_chunked_prefill_seeds_the_resident_cache_once(tiny_model_dir):
    """Only a prefill's last chunk seeds the resident cache (an earlier chunk's seed would be
    cleared by the next chunk): the same prompt prefilled in 3 chunks or in one moves the same
    seed blocks, and the chunked one answers as offload off does with the same chunks."""
    model = tiny_model_dir("qwen3")
    prompt = random_prompts([700], seed=6)[0]
    params = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
    exact = dict(CFG, prefetch_depth=0, resident_blocks=64, max_miss_blocks_per_step=64)
    runs = []
    for cfg, chunk in ((exact, 2048), (exact, 256), (dict(CFG, offload=False), 256)):
        with engine(model, "asynctls", cfg, max_total_tokens=N, max_running_requests=4,
                    chunked_prefill_size=chunk) as eng:
            out = eng.generate(input_ids=prompt, sampling_params=params)["output_ids"]
            runs.append((out, asynctls_stats(eng).get("offload")))
    (_, one), (chunked_out, chunked), (ref_out, _) = runs
    assert chunked["seed_blocks_moved"] == one["seed_blocks_moved"] > 0
    # only the last of the 3 chunk forwards seeds (the earlier ones do not even score a selection)
    seeds = {name: run["prefill_phases"]["seed"]["calls"] for name, run in (("one", one), ("chunked", chunked))}
    assert chunked["prefill_phases"]["prefill"]["calls"] == 3
    assert seeds["chunked"] == seeds["one"] > 0, seeds
    assert chunked["prefix_blocks_loaded"] > 0  # the later chunks did read their prefix back
    assert chunked_out == ref_out


def _generate_within(eng, prompts, params, seconds: float) -> list:
    """eng.generate on another thread: its outputs, or a failure after `seconds` (a scheduler that
    stopped leaves the call waiting forever)."""
    import threading

    got: dict = {}
    worker = threading.Thread(target=lambda: got.update(outs=eng.generate(input_ids=prompts, sampling_params=params)),
                              daemon=True)
    worker.start()
    worker.join(seconds)
    assert "outs" in got, f"the requests did not finish within {seconds} s (the scheduler stopped or made no progress)"
    return got["outs"]


def test_long_chunked_prompts_under_a_kv_cap_all_finish_as_offload_off(tiny_model_dir):
    """Six prompts of 1536 tokens, prefilled in chunks of 256, each about a whole device pool (100
    pages) long, sent at once (the H200's 6 x 96k fixed-memory run, scaled down, MLA): every chunk
    spares the window at its end, and the next chunk must give it back. Before, one window per
    chunk stayed mapped until the request ended, the device-room gate shrank the chunks to one
    page, and a prefix load-back found no free page: the scheduler stopped and the requests waited
    forever. Now all finish, with offload off's tokens (the resident cache large enough)."""
    model = tiny_model_dir("deepseek_v2")
    prompts = random_prompts([1536] * 6, seed=12)
    params = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
    exact = dict(CFG, host_pool_tokens=16 * 2048, prefetch_depth=0, resident_blocks=128,
                 max_miss_blocks_per_step=128)
    runs = []
    for cfg, pool in ((exact, 1600), (dict(CFG, offload=False), 6 * 1600)):
        with engine(model, "asynctls", cfg, max_total_tokens=pool, max_running_requests=8,
                    chunked_prefill_size=256, context_length=4096) as eng:
            outs = _generate_within(eng, prompts, params, 150)
            runs.append(([o["output_ids"] for o in outs], asynctls_stats(eng).get("offload")))
    (outs, stats), (ref, _) = runs
    assert [len(o) for o in outs] == [8] * 6
    assert stats["prefix_blocks_loaded"] > 0 and stats["blocks_demoted"] > 0  # it did run under the cap
    assert outs == ref


def test_a_chunked_prompt_beside_long_generations_waits_for_room_instead_of_stopping_the_server(tiny_model_dir):
    """Four requests generate 500 tokens each while a 1400-token prompt is prefilled in 256-token
    chunks on a 96-page device pool: the decoded pages fill the pool, and a chunk's prefix no
    longer fits beside them. Before, the device-room gate still shrank the chunk to one page and
    the prefix load-back found one page too few inside the forward ("64 prefix blocks must be
    loaded back ... only 63 device pages are free"): the scheduler stopped, every request
    waiting. Now the gate first takes back the pages the running requests decoded past (their
    KV is on the host), and if that is not enough the chunk sits out the round."""
    model = tiny_model_dir("qwen3")
    prompts = random_prompts([100] * 4 + [1400], seed=23)
    params = [{"temperature": 0, "max_new_tokens": n, "ignore_eos": True} for n in [500] * 4 + [8]]
    with engine(model, "asynctls", CFG, max_total_tokens=N, max_running_requests=16,
                chunked_prefill_size=256, context_length=4096) as eng:
        outs = _generate_within(eng, prompts, params, 150)
        stats = asynctls_stats(eng)["offload"]
    assert [len(o["output_ids"]) for o in outs] == [500] * 4 + [8]
    assert stats["prefix_blocks_loaded"] > 0  # the long prompt's chunks read their prefix back
