"""The real SmolLM2-135M-Instruct: budgets covering the context give the stock tokens."""
from __future__ import annotations

import pytest

from engine_helpers import asynctls_stats, engine, greedy

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]

CFG = dict(block_size=64, block_budget=8, token_budget=512, dense_threshold=0)


@pytest.fixture(scope="module")
def model():
    from asynctls_sglang.models.smollm2 import ensure_smollm2

    return ensure_smollm2()


@pytest.fixture(scope="module")
def prompts(model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    text = ("Alice keeps a notebook of the birds she sees. On Monday she saw three sparrows and a heron. "
            "On Tuesday she saw a kingfisher by the river and two crows on the fence. ") * 6
    out = []
    for question in ("How many sparrows did Alice see on Monday?", "Which bird did Alice see by the river?"):
        chat = tok.apply_chat_template([{"role": "user", "content": text + question}], add_generation_prompt=True,
                                       tokenize=False)
        out.append(list(tok(chat, add_special_tokens=False).input_ids))
    assert 200 < len(out[0]) < 400
    return out


def test_smollm2_covering_budget_is_token_identical(model, prompts):
    with engine(model, "torch_native", max_total_tokens=4096) as eng:
        stock = greedy(eng, prompts, 24)
    with engine(model, "asynctls", CFG, max_total_tokens=4096) as eng:
        ours = greedy(eng, prompts, 24)
        stats = asynctls_stats(eng)
    assert ours == stock
    assert stats["sparse_request_steps"] == 24 * len(prompts)  # the selection path really ran
