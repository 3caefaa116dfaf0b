"""Run SGLang's real engine in-process for the tests (one engine at a time, module-scoped)."""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
from typing import Iterator

BASE_ENGINE_ARGS = dict(skip_tokenizer_init=True, disable_cuda_graph=True, dtype="float32",
                        log_level="error", mem_fraction_static=0.5, max_running_requests=8,
                        device="cpu")


def sigquit_handler(signum, frame):  # module-level: a scheduler crash must fail the test, not kill pytest
    print("engine child process failed (SIGQUIT)", flush=True)


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
    try:
        yield eng
    finally:
        eng.shutdown()
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
