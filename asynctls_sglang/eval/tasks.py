"""RULER task definitions, read from the `nvidia-long-context-eval` package (no copies here).

A task is its generator script (synthetic/<kind>.py) with the arguments from synthetic.yaml,
and the prompt template, answer prefix and generation length of its kind (data/synthetic/
constants.py). Scoring follows RULER's eval/synthetic/constants.py: QA tasks use
string_match_part, every other kind string_match_all.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

#: RULER's 13 tasks minus cwe (slow to generate, near zero for small models) and the QA pair.
DEFAULT_TASKS = (
    "niah_single_1", "niah_single_2", "niah_single_3",
    "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
    "niah_multivalue", "vt", "fwe",
)
_PART_MATCH_KINDS = frozenset({"qa"})


@dataclass(frozen=True)
class RulerTask:
    name: str  # e.g. "niah_single_1"
    kind: str  # generator script name: "niah", "variable_tracking", ...
    script_args: tuple[tuple[str, str], ...]  # the task's arguments from synthetic.yaml
    template: str  # with {context} and {query} (and task-specific) placeholders
    answer_prefix: str  # appended after the template; the model continues from it
    tokens_to_generate: int

    @property
    def metric(self) -> str:
        return "string_match_part" if self.kind in _PART_MATCH_KINDS else "string_match_all"

    @property
    def script(self) -> str:
        return os.path.join(ruler_package_dir(), "data", "synthetic", f"{self.kind}.py")


def ruler_available() -> bool:
    return importlib.util.find_spec("long_context_eval") is not None


def ruler_package_dir() -> str:
    spec = importlib.util.find_spec("long_context_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "RULER's generator is missing. Install it with: "
            "pip install nvidia-long-context-eval==26.3 nltk wonderwords"
        )
    return list(spec.submodule_search_locations)[0]


@lru_cache(maxsize=None)
def _task_configs() -> dict[str, Any]:
    import yaml

    with open(os.path.join(ruler_package_dir(), "synthetic.yaml")) as handle:
        return dict(yaml.safe_load(handle))


def ruler_task(name: str) -> RulerTask:
    from long_context_eval.data.synthetic.constants import TASKS

    configs = _task_configs()
    if name not in configs:
        raise ValueError(f"unknown RULER task {name!r}; known: {', '.join(configs)}")
    config = configs[name]
    kind_config = TASKS[config["task"]]
    return RulerTask(
        name=name,
        kind=config["task"],
        script_args=tuple((str(k), str(v)) for k, v in config.get("args", {}).items()),
        template=kind_config["template"],
        answer_prefix=kind_config.get("answer_prefix", ""),
        tokens_to_generate=int(kind_config["tokens_to_generate"]),
    )
