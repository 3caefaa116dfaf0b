"""Run SGLang's real engine in-process for the tests (one engine at a time, module-scoped)."""
from __future__ import annotations

import contextlib
import json
import os
import random
from typing import Iterator

#: sleep_on_idle: as launch_server's CPU defaults (an idle scheduler otherwise polls its sockets at
#: 100% of a core; measured). It did not shorten test_engine_offload.py here (206 s with, 200 s without)
BASE_ENGINE_ARGS = dict(skip_tokenizer_init=True, disable_cuda_graph=True, dtype="float32",
                        log_level="error", mem_fraction_static=0.5, max_running_requests=8,
                        device="cpu", sleep_on_idle=True)
#: SGLang's engine on a GPU for the tests: decode CUDA graphs (what the tests are about), no prefill
#: graphs (their piecewise capture compiled for 152 s on a fresh H200 before the first test could
#: run, and cut the call: docs/results.md, session 7).
GPU_ENGINE_ARGS = dict(device="cuda", dtype="bfloat16", disable_cuda_graph=False, cuda_graph_max_bs_decode=8,
                       cuda_graph_backend_prefill="disabled", mem_fraction_static=0.3)


def sigquit_handler(signum, frame):  # module-level: a scheduler crash must fail the test, not kill pytest
    print("engine child process failed (SIGQUIT)", flush=True)


#: engines started by engine() and not yet shut down
_LIVE: list = []


def _killed_by_another_shutdown(*args, **kwargs):
    raise RuntimeError("this engine's scheduler is gone: SGLang's Engine.shutdown kills every child process of "
                       "this process, so an engine shared by tests (a module fixture) serves only the tests that "
                       "run before another engine of the module starts and stops")


@contextlib.contextmanager
def engine(model_path: str, backend: str, asynctls: dict | None = None, **kwargs) -> Iterator[object]:
    """An sglang.Engine with ``backend``; ``asynctls`` fields go to ASYNCTLS_CONFIG."""
    import sglang as sgl

    from asynctls_sglang.plugin import register

    register()
    saved = os.environ.get("ASYNCTLS_CONFIG")
    os.environ["ASYNCTLS_CONFIG"] = json.dumps(asynctls or {})
    args = {**BASE_ENGINE_ARGS, "max_total_tokens": 8192, **kwargs}
    if backend == "asynctls":
        args.setdefault("page_size", (asynctls or {}).get("block_size", 64))
    eng = sgl.Engine(model_path=model_path, attention_backend=backend,
                     custom_sigquit_handler=sigquit_handler, **args)
    _LIVE.append(eng)
    try:
        yield eng
    finally:
        _LIVE.remove(eng)
        eng.shutdown()
        for other in _LIVE:  # its scheduler was killed too: a request to it would wait forever
            other.generate = _killed_by_another_shutdown
        if saved is None:
            os.environ.pop("ASYNCTLS_CONFIG", None)
        else:
            os.environ["ASYNCTLS_CONFIG"] = saved


def random_prompts(lengths, vocab: int = 500, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


def greedy(eng, prompts, max_new_tokens: int = 12, batched: bool = False) -> list[list[int]]:
    """Greedy continuations. One request at a time unless ``batched``: batch composition
    changes fp32 rounding in the dense layers, which can flip near-tied argmaxes of a random
    model, so token-identity comparisons run requests alone."""
    params = {"temperature": 0, "max_new_tokens": max_new_tokens, "ignore_eos": True}
    if batched:
        return [o["output_ids"] for o in eng.generate(input_ids=prompts, sampling_params=params)]
    return [eng.generate(input_ids=p, sampling_params=params)["output_ids"] for p in prompts]


def greedy_with_margins(eng, prompts, max_new_tokens: int = 12,
                        batched: bool = False) -> list[tuple[list[int], list[tuple]]]:
    """Greedy continuations, each with its per-step top-2 (logprob, id); one request at a time
    unless ``batched``."""
    params = {"temperature": 0, "max_new_tokens": max_new_tokens, "ignore_eos": True}
    kw = dict(sampling_params=params, **MARGINS)
    outs = eng.generate(input_ids=prompts, **kw) if batched else [eng.generate(input_ids=p, **kw) for p in prompts]
    return [with_margins(o) for o in outs]


#: generate() arguments that return what with_margins reads
MARGINS = dict(return_logprob=True, top_logprobs_num=2)


def with_margins(out: dict) -> tuple[list[int], list[tuple]]:
    """One generate() output (asked with MARGINS) -> (its tokens, per step its top-2 (logprob, id))."""
    return out["output_ids"], [tuple((lp, tok) for lp, tok, *_ in step[:2])
                               for step in out["meta_info"]["output_top_logprobs"]]


def assert_same_up_to_near_ties(ours: list[list[int]], stock: list[tuple[list[int], list[tuple]]],
                                tol: float) -> int:
    """bf16 on a GPU: two attention kernels round differently, so a greedy argmax may flip where
    the stock run's top two logprobs are within ``tol``; anywhere else a different token is a
    wrong answer. Each sequence must equal the stock one up to its first difference, which must
    be such a near tie with our token one of the stock's top two (its runner-up; or, at an exact
    tie, either: the listed order of equal logprobs need not be the order argmax chose) and the
    stock's token the other (the sequences part there, so nothing after it is compared).
    Returns the number of tokens compared equal."""
    equal = 0
    for i, (seq, (ref, top2)) in enumerate(zip(ours, stock)):
        diff = next((t for t, (a, b) in enumerate(zip(seq, ref)) if a != b), None)
        if diff is None:
            equal += len(ref)
            continue
        (lp1, tok1), (lp2, tok2) = top2[diff]
        print(f"sequence {i}: first difference at token {diff}: stock {tok1} ({lp1:.4f}) vs ours "
              f"{seq[diff]}, stock runner-up {tok2} ({lp2:.4f}), margin {lp1 - lp2:.4f}")
        assert {seq[diff], ref[diff]} == {tok1, tok2} and lp1 - lp2 < tol, \
            f"sequence {i} departs from the stock backend at token {diff} without a near tie"
        equal += diff
    return equal


def asynctls_stats(eng) -> dict:
    return eng.get_server_info()["internal_states"][0]["asynctls"]


def flush_cache(eng, attempts: int = 40) -> None:
    """Empty the radix cache; SGLang refuses while a finished request is still being retired."""
    import time

    for _ in range(attempts):
        if getattr(eng.flush_cache(), "success", True):
            return
        time.sleep(0.25)
    raise RuntimeError("the radix cache could not be flushed")


def two_turns(eng, turn1: list[int], question: list[int], params: dict) -> tuple[list[int], list[int], int]:
    """A two-turn chat on an empty radix cache: turn 1, then turn 2 = turn 1 + its answer + a
    question; (answer 1, answer 2, tokens turn 2 found cached)."""
    flush_cache(eng)
    first = eng.generate(input_ids=turn1, sampling_params=params)
    second = eng.generate(input_ids=turn1 + first["output_ids"] + question, sampling_params=params)
    return first["output_ids"], second["output_ids"], second["meta_info"]["cached_tokens"]
