"""Every launch recipe's flags are accepted by our launcher and by SGLang's argument parser."""
from __future__ import annotations

import glob
import os
import shlex

import pytest

RECIPES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "launch", "*.sh")))


def recipe_argv(path: str, model: str) -> list[str]:
    text = open(path).read().replace("\\\n", " ")
    line = next(l for l in text.splitlines() if "asynctls_sglang.launch_server" in l)
    argv = shlex.split(line.split("asynctls_sglang.launch_server", 1)[1].replace('"$@"', ""))
    return [model if a == "$MODEL" else a for a in argv]


CONFIGS = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "models")


@pytest.mark.parametrize("path", RECIPES, ids=[os.path.basename(p) for p in RECIPES])
def test_recipe_flags_parse(path):
    from asynctls_sglang.cli_config import config_from_argv
    from asynctls_sglang.launch_server import build_argv
    from asynctls_sglang.plugin import register

    register()
    from sglang.srt.server_args import prepare_server_args

    # the real architectures' configs (128k+ context); parsing reads no weights
    model = os.path.join(CONFIGS, "qwen3_8b" if "qwen" in os.path.basename(path) else "glm47_flash")
    argv = recipe_argv(path, model)
    cfg, rest = config_from_argv(argv)
    args = prepare_server_args(build_argv(rest, cfg, gpu=False))
    assert args.attention_backend == "asynctls" and args.page_size == cfg.block_size
    assert cfg.token_budget == 2048
