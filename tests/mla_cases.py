"""Shared body of the MLA engine tests (DeepSeek-V2 and GLM-4.7-Flash architectures): the
latent 512 + 64 = 576-dim key is one KV "head" shared by all query heads (absorbed MLA)."""
from __future__ import annotations

from engine_helpers import asynctls_stats, engine, greedy, random_prompts

CFG = dict(block_size=16, block_budget=16, token_budget=256, sink_tokens=4, local_window=16,
           dense_threshold=0, calibration_tokens=64)
SHORT = random_prompts([41, 150, 221], seed=3)
LONG = random_prompts([600], seed=4)


def check_model(model_path: str) -> None:
    """Token identity with the stock torch_native backend while the budgets cover every context,
    then a sparse long request and the decode counters."""
    with engine(model_path, "torch_native") as eng:
        stock = greedy(eng, SHORT, 12)
    with engine(model_path, "asynctls", CFG) as eng:
        covering = greedy(eng, SHORT, 12)
        long_out = greedy(eng, LONG, 12)
        stats = asynctls_stats(eng)
    assert covering == stock, "budgets covering the context must give the stock backend's tokens"
    assert len(long_out[0]) == 12
    assert stats["index_channels"] == 128  # the paper's r for MLA
    assert stats["attended_tokens_last"] == CFG["token_budget"]
    assert stats["sparse_request_steps"] == 12 * (len(SHORT) + 1)
