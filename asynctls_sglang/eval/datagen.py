"""RULER samples for one (task, context length, sample count, tokenizer), generated once and cached.

RULER's prepare.py shells out to `python synthetic/<kind>.py --template "..."` through a shell
(quotes inside templates break it, and it needs `python` on PATH). This module assembles the
same arguments and runs the script directly with this interpreter, via _run_generator.

A separator (SPLIT) is placed between the task prompt and its answer prefix, so one generated
file serves both prompt formats: "base" joins them (RULER's base template), "chat" puts the
task in a user turn of the tokenizer's chat template and starts the assistant turn with the
answer prefix.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import NamedTuple

from asynctls_sglang.eval.tasks import RulerTask

SPLIT = "\x1e"  # ASCII record separator: no RULER template or haystack contains it
RANDOM_SEED = 42  # RULER's seed for chunk 0
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                    "merges.txt", "special_tokens_map.json", "chat_template.jinja")


class Sample(NamedTuple):
    index: int
    task_prompt: str  # the task text (context, question)
    answer_prefix: str  # what the answer starts with; the model continues from here
    references: list[str]
    length: int  # RULER's count: prompt tokens + tokens_to_generate


def load_or_generate(
    task: RulerTask,
    tokenizer_path: str,
    max_seq_length: int,
    num_samples: int,
    cache_root: str,
    progress: Callable[[str], None] = print,
) -> list[Sample]:
    """Samples whose prompt plus generation fits in `max_seq_length` tokens (RULER's rule)."""
    key = _cache_key(task, tokenizer_path, max_seq_length, num_samples)
    path = os.path.join(cache_root, f"{task.name}-{max_seq_length}-{num_samples}-{key}.jsonl")
    if not os.path.isfile(path):
        start = time.monotonic()
        progress(f"[data] generating {task.name}: {num_samples} samples at {max_seq_length} tokens")
        _generate(task, tokenizer_path, max_seq_length, num_samples, path)
        progress(f"[data] {task.name} generated in {time.monotonic() - start:.1f} s -> {path}")
    with open(path, encoding="utf-8") as handle:
        return [_parse(json.loads(line)) for line in handle if line.strip()]


def _parse(record: dict[str, object]) -> Sample:
    text = str(record["input"])
    task_prompt, _, answer_prefix = text.partition(SPLIT)
    outputs = record["outputs"]
    assert isinstance(outputs, list)
    return Sample(int(str(record["index"])), task_prompt, answer_prefix,
                  [str(o) for o in outputs], int(str(record["length"])))


def _generate(task: RulerTask, tokenizer_path: str, max_seq_length: int, num_samples: int,
              path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as work:
        command = [
            sys.executable, "-m", "asynctls_sglang.eval._run_generator", task.script,
            "--save_dir", work, "--save_name", task.name, "--subset", "validation",
            "--tokenizer_path", tokenizer_path, "--tokenizer_type", "hf",
            "--max_seq_length", str(max_seq_length),
            "--tokens_to_generate", str(task.tokens_to_generate),
            "--num_samples", str(num_samples), "--random_seed", str(RANDOM_SEED),
            "--template", task.template + SPLIT + task.answer_prefix,
        ]
        for name, value in task.script_args:
            command += [f"--{name}", value]
        env = dict(os.environ)
        # Anything the scripts start by name must be this interpreter, not another `python`.
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        produced = os.path.join(work, task.name, "validation.jsonl")
        if result.returncode != 0 or not os.path.isfile(produced):
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
            raise RuntimeError(f"RULER generator for {task.name} failed (rc={result.returncode}):\n{tail}")
        os.replace(produced, path)  # atomic: a cached file is always complete


def _cache_key(task: RulerTask, tokenizer_path: str, max_seq_length: int, num_samples: int) -> str:
    digest = hashlib.sha256()
    digest.update(repr((task, max_seq_length, num_samples, RANDOM_SEED, SPLIT)).encode())
    digest.update(_ruler_version().encode())
    for name in _TOKENIZER_FILES:
        file = os.path.join(tokenizer_path, name)
        if os.path.isfile(file):
            with open(file, "rb") as handle:
                digest.update(name.encode() + hashlib.sha256(handle.read()).digest())
    return digest.hexdigest()[:12]


def _ruler_version() -> str:
    try:
        return version("nvidia-long-context-eval")
    except PackageNotFoundError:
        return "unknown"
