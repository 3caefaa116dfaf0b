"""Prompt formats: how a RULER sample becomes the raw text sent to /v1/completions.

"base" is RULER's base template: task prompt then answer prefix, as one text.
"chat" wraps the task prompt in a user turn of the tokenizer's chat template and starts the
assistant turn with the answer prefix (RULER's chat templates do the same for other models).
"""
from __future__ import annotations

from typing import NamedTuple

from asynctls_sglang.eval.datagen import Sample

PROMPT_FORMATS = ("base", "chat")
_CONTENT = "\x00CONTENT\x00"


class ChatWrapper(NamedTuple):
    head: str  # everything before the user message
    tail: str  # from the end of the user message to the start of the assistant's text
    overhead_tokens: int  # tokens head + tail add to a prompt


def chat_wrapper(tokenizer_path: str) -> ChatWrapper:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if not tokenizer.chat_template:
        raise ValueError(f"{tokenizer_path} has no chat template: use --prompt-format base")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": _CONTENT}], tokenize=False, add_generation_prompt=True
    )
    assert isinstance(text, str)
    head, tail = text.split(_CONTENT)
    overhead = len(tokenizer(head + tail, add_special_tokens=False)["input_ids"])
    return ChatWrapper(head, tail, overhead)


def render(sample: Sample, prompt_format: str, wrapper: ChatWrapper | None = None) -> str:
    if prompt_format == "base":
        return sample.task_prompt + sample.answer_prefix
    if prompt_format == "chat":
        if wrapper is None:
            raise ValueError("the chat format needs a ChatWrapper")
        return wrapper.head + sample.task_prompt.strip() + wrapper.tail + sample.answer_prefix.lstrip()
    raise ValueError(f"unknown prompt format {prompt_format!r}; known: {PROMPT_FORMATS}")
