"""Start each launch recipe on the GPU with random weights and check that it serves sparse decode.

For every recipe in launch/: `MODEL=benchmarks/models/<config> bash launch/<recipe>.sh
--load-format dummy --skip-tokenizer-init --port P`, wait for /health, send one /generate of
`--prompt-tokens` random ids, or more where the recipe's batch rule needs it (longer than the token
budget and than the rule's bound for one request: sparse_prompt_tokens, so decode is sparse), check the reply
has the asked number of tokens and that /get_server_info reports the budget as attended tokens
per step, then stop the server. Prints a table, writes JSON.

    python benchmarks/recipe_smoke.py --out recipes.json          (GPU; ~2-4 min per recipe)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from asynctls_sglang.eval.client import get_json, is_healthy  # noqa: E402
from asynctls_sglang.eval.server import _signal_group, free_port, stop_on_sigterm  # noqa: E402

RECIPES = {"qwen3_8b_h200.sh": "qwen3_8b", "glm47_flash_h200.sh": "glm47_flash",
           "qwen3_8b_h200_offload.sh": "qwen3_8b", "glm47_flash_h200_offload.sh": "glm47_flash"}


def post(url: str, body: dict, timeout_s: float = 600.0) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def sparse_prompt_tokens(recipe: str, config: str, at_least: int) -> int:
    """A prompt long enough that one request decodes sparse under the recipe: past the batch rule's
    bound for one request (config.dense_batch_len), which for an MLA model without offload is set
    by its dense base (FlashInfer's MLA decode for the DeepSeek/GLM latent shape: 116736 tokens;
    session 17's GLM recipe run sent 57344 and decoded densely), and never shorter than at_least."""
    from asynctls_sglang.adapter.backend import dense_base_name
    from asynctls_sglang.config import AsyncTLSConfig

    model = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", config, "config.json")))
    cfg = AsyncTLSConfig(offload="offload" in recipe)
    mla = bool(model.get("kv_lora_rank"))
    base = dense_base_name(cfg, "cuda", True, (model["kv_lora_rank"], model["qk_rope_head_dim"])) if mla else None
    return max(at_least, cfg.dense_batch_len(1, base) + 4096)


def smoke(recipe: str, config: str, prompt_tokens: int, new_tokens: int, timeout_s: float,
          log_dir: str) -> dict:
    import signal
    import subprocess

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MODEL": os.path.join(ROOT, "benchmarks", "models", config),
           "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN": "1"}
    command = ["bash", os.path.join(ROOT, "launch", recipe), "--load-format", "dummy",
               "--skip-tokenizer-init", "--host", "127.0.0.1", "--port", str(port)]
    row: dict = {"recipe": recipe, "config": config, "ok": False}
    log_path = os.path.join(log_dir, f"{recipe}.log")
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        while not is_healthy(url):
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"no /health after {timeout_s:.0f} s")
            time.sleep(2)
        row["ready_s"] = round(time.monotonic() - t0, 1)
        vocab = json.load(open(os.path.join(ROOT, "benchmarks", "models", config, "config.json")))["vocab_size"]
        rng = random.Random(0)
        ids = [rng.randrange(100, vocab - 100) for _ in range(prompt_tokens)]
        t1 = time.monotonic()
        reply = post(f"{url}/generate", {"input_ids": ids, "sampling_params": {
            "max_new_tokens": new_tokens, "ignore_eos": True, "temperature": 0.0}})
        row["request_s"] = round(time.monotonic() - t1, 2)
        row["output_tokens"] = len(reply.get("output_ids", []))
        stats = get_json(f"{url}/get_server_info")["internal_states"][0].get("asynctls", {})
        row["attended_tokens_last"] = stats.get("attended_tokens_last")
        config_json = stats.get("config") or "{}"
        row["token_budget"] = (json.loads(config_json) if isinstance(config_json, str)
                               else config_json).get("token_budget")
        row["ok"] = (row["output_tokens"] == new_tokens and row["attended_tokens_last"] is not None
                     and row["attended_tokens_last"] == row["token_budget"])
    except Exception as error:  # report it in the table, keep the other recipes
        row["error"] = f"{type(error).__name__}: {error}"
        with open(log_path) as handle:
            row["log_tail"] = handle.read()[-3000:]
    finally:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--prompt-tokens", type=int, default=57344)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=420.0, help="seconds to wait for /health")
    ap.add_argument("--out", default="recipes.json")
    args = ap.parse_args(argv)
    # NOTE: the device stage's `timeout` sends SIGTERM; killed outright, this process left the
    # recipe's server (its own session) holding 121 GiB of the GPU for the next call (H200,
    # 2026-11-29). Unwinding runs smoke()'s finally, which stops it.
    stop_on_sigterm()
    log_dir = os.path.dirname(os.path.abspath(args.out))
    rows = []
    for recipe in args.recipes.split(","):
        prompt = sparse_prompt_tokens(recipe, RECIPES[recipe], args.prompt_tokens)
        rows.append(smoke(recipe, RECIPES[recipe], prompt, args.new_tokens, args.timeout, log_dir))
        rows[-1]["prompt_tokens"] = prompt
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "log_tail"}), flush=True)
        json.dump(rows, open(args.out, "w"), indent=1)
    print("| recipe | ready s | request s | output tokens | attended/step | budget | ok |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r.get('ready_s')} | {r.get('request_s')} | {r.get('output_tokens')} | "
              f"{r.get('attended_tokens_last')} | {r.get('token_budget')} | {r['ok']} |")
    for r in rows:
        if not r["ok"] and "log_tail" in r:
            print(f"--- {r['recipe']}: {r.get('error')}\n{r['log_tail'][-1500:]}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
