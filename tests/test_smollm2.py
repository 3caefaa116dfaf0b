"""The embedded SmolLM2 model: GGUF -> plain HF folder, converted once and cached.

The first run in a fresh cache converts (~30-40 s on 2 cores); later runs reuse the folder.
"""
from __future__ import annotations

import json
import os
import time

import pytest

from asynctls_sglang.models.smollm2 import ensure_smollm2

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def model_dir() -> str:
    return ensure_smollm2()


def test_config_is_plain_llama(model_dir: str) -> None:
    with open(os.path.join(model_dir, "config.json")) as handle:
        config = json.load(handle)
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_hidden_layers"] == 30
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    assert "quantization_config" not in config
    assert os.path.isfile(os.path.join(model_dir, "model.safetensors"))


def test_tokenizer_has_chat_template_and_im_end_eos(model_dir: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.chat_template
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>"


def test_second_call_reuses_the_cache(model_dir: str) -> None:
    lines: list[str] = []
    start = time.monotonic()
    assert ensure_smollm2(progress=lines.append) == model_dir
    assert time.monotonic() - start < 1.0
    assert lines == []
