"""Every launch recipe's flags are accepted by our launcher and by SGLang's argument parser."""
from __future__ import annotations

import glob
import os
import shlex
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "launch", "*.sh")))


def recipe_argv(path: str, model: str) -> list[str]:
    """The launcher arguments of a recipe; one that execs another recipe with more flags gets that
    recipe's arguments followed by its own (later flags win)."""
    text = open(path).read().replace("\\\n", " ")
    line = next((l for l in text.splitlines() if "asynctls_sglang.launch_server" in l), None)
    if line is None:
        line = next(l for l in text.splitlines() if l.startswith('exec bash "$(dirname "$0")/'))
        base, extra = line.split('"$(dirname "$0")/', 1)[1].split('"', 1)
        return recipe_argv(os.path.join(os.path.dirname(path), base), model) + shlex.split(extra.replace('"$@"', ""))
    argv = shlex.split(line.split("asynctls_sglang.launch_server", 1)[1].replace('"$@"', ""))
    return [model if a == "$MODEL" else a for a in argv]


def last_value(argv: list[str], flag: str) -> str:
    """The value of the last occurrence of flag (the one argparse keeps)."""
    return argv[len(argv) - argv[::-1].index(flag)]


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
    if "offload" in os.path.basename(path):  # the offload flags after the base recipe's win
        assert cfg.offload and args.max_running_requests == int(last_value(argv, "--max-running-requests"))


OFFLOAD = [p for p in RECIPES if "offload" in os.path.basename(p)]
H200_GPU_BYTES = 143_771_000_000  # what torch reports for the lent H200
H200_HOST_BYTES = 125 * 2**30  # its host memory (free -g)


@pytest.mark.parametrize("path", OFFLOAD, ids=[os.path.basename(p) for p in OFFLOAD])
def test_offload_recipes_fit_the_h200_box(path):
    """The offload recipes' host pool fits in the start-up check's 90% of the lent H200 box's host
    memory (less the ~10 GB SGLang's processes take), and their resident buffers for the running
    requests they allow take at most a third of the GPU's memory (the KV pool keeps the rest)."""
    import json

    from asynctls_sglang.cli_config import config_from_argv
    from asynctls_sglang.memory.offload_runtime import resident_row_bytes

    assert OFFLOAD, "no offload recipe"
    qwen = "qwen" in os.path.basename(path)
    model = os.path.join(CONFIGS, "qwen3_8b" if qwen else "glm47_flash")
    mc = json.load(open(os.path.join(model, "config.json")))
    argv = recipe_argv(path, model)
    cfg, rest = config_from_argv(argv)
    assert cfg.offload and cfg.host_pool_tokens and cfg.host_pool_tokens % cfg.block_size == 0
    if qwen:
        heads, dim, v_dim = mc["num_key_value_heads"], mc["head_dim"], mc["head_dim"]
    else:
        heads, dim, v_dim = 1, mc["kv_lora_rank"] + mc["qk_rope_head_dim"], None
    layers = mc["num_hidden_layers"]
    host = cfg.host_pool_tokens * layers * heads * (dim + (v_dim or 0)) * 2
    assert host <= 0.9 * (H200_HOST_BYTES - 10e9), f"host pool {host / 1e9:.1f} GB"
    running = int(last_value(rest, "--max-running-requests"))
    row = resident_row_bytes(cfg, num_layers=layers, kv_heads=heads, head_dim=dim, v_head_dim=v_dim,
                             dtype_size=2, max_blocks=131072 // cfg.block_size)
    assert (running + 1) * row <= H200_GPU_BYTES / 3, f"resident buffers {(running + 1) * row / 1e9:.1f} GB"


def test_recipe_smoke_stops_its_server_when_terminated(tmp_path):
    """A `timeout` that SIGTERMs benchmarks/recipe_smoke.py must not leave the recipe's server (its
    own session) running: one left holding 121 GiB of the H200 made the next recipe run out of
    memory. Here the 'server' is a sleep in its own session; smoke() waits for its /health."""
    import signal
    import subprocess
    import sys
    import time

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    fake = tmp_path / "launch"
    fake.mkdir()
    pid_file = tmp_path / "server.pid"
    (fake / "qwen3_8b_h200.sh").write_text(f"echo $$ > {pid_file}; exec sleep 300\n")
    code = (f"import sys; sys.argv[0] = 'recipe_smoke'; sys.path.insert(0, {os.path.join(root, 'benchmarks')!r})\n"
            "import recipe_smoke as r\n"
            f"r.ROOT = {str(tmp_path)!r}\n"
            f"sys.exit(r.main(['--recipes', 'qwen3_8b_h200.sh', '--out', {str(tmp_path / 'out.json')!r}]))\n")
    smoke = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pid_file.exists(), smoke.communicate(timeout=30)[0]
    server = int(pid_file.read_text())
    smoke.send_signal(signal.SIGTERM)
    smoke.wait(60)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        try:
            os.kill(server, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(server, signal.SIGKILL)
        pytest.fail("the recipe's server outlived recipe_smoke")


def test_recipe_smoke_prompt_decodes_sparse_under_each_recipe(monkeypatch):
    """The smoke's prompt must pass the recipe's batch rule for one request, or its decode is dense
    and the attended-tokens check fails (session 17: the GLM recipe on FlashInfer's MLA base, whose
    bound is 38912 x 3 tokens, got 57344). With offload the rule is off: the default length stays."""
    import asynctls_sglang.adapter.backend as backend
    from asynctls_sglang.config import DENSE_BATCH_PER_REQUEST, DENSE_BATCH_PER_REQUEST_MLA

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import recipe_smoke

    monkeypatch.setattr(backend, "has_flashinfer", lambda: True)  # as on the H200
    want = {"qwen3_8b_h200.sh": max(57344, DENSE_BATCH_PER_REQUEST * 3 + 4096),
            "glm47_flash_h200.sh": DENSE_BATCH_PER_REQUEST_MLA["flashinfer"] * 3 + 4096,
            "qwen3_8b_h200_offload.sh": 57344, "glm47_flash_h200_offload.sh": 57344}
    for recipe, config in recipe_smoke.RECIPES.items():
        assert recipe_smoke.sparse_prompt_tokens(recipe, config, 57344) == want[recipe], recipe
    assert want["glm47_flash_h200.sh"] + 32 <= 131072  # within the recipe's --context-length
