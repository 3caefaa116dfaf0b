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


def test_waits_for_a_concurrent_conversion(tmp_path: str) -> None:
    """A second process blocks on the lock and reuses what the first one published."""
    import fcntl
    import threading

    from asynctls_sglang.models import smollm2

    target = os.path.join(tmp_path, smollm2.SMOLLM2_NAME)
    lock = open(os.path.join(tmp_path, f".{smollm2.SMOLLM2_NAME}.lock"), "a")
    fcntl.flock(lock, fcntl.LOCK_EX)  # "another process" is converting

    def publish_then_unlock() -> None:
        time.sleep(0.5)
        os.makedirs(target)
        open(os.path.join(target, smollm2._DONE_MARKER), "w").close()
        fcntl.flock(lock, fcntl.LOCK_UN)

    thread = threading.Thread(target=publish_then_unlock)
    thread.start()
    lines: list[str] = []
    try:
        assert ensure_smollm2(cache_dir=str(tmp_path), progress=lines.append) == target
    finally:
        thread.join()
        lock.close()
    assert any("waiting for another process" in line for line in lines)
    assert not any("converting SmolLM2" in line for line in lines)
