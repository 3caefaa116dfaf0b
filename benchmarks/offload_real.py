"""The offloading engine on real selections: the embedded SmolLM2-135M-Instruct (trained weights)
on RULER prompts, offload off then on, same prompts, greedy.

Reports per configuration (token budget K : block budget k_b [: max_miss_blocks_per_step, the cap
on host->device copies per request, layer and KV head per step]): tokens equal to offload off, late
blocks (wanted but not resident in time), resident hit rate, and host->device bytes per decode
step against k_b x B (the bytes if no selected block stayed resident: what temporal locality
saves). Runs on the CPU (fp32) or a GPU (bf16, CUDA graphs). Prints a table, writes JSON + PNG.
Usage: python benchmarks/offload_real.py --data-cache DIR [--task niah_single_2 --samples 4
    --configs 512:128,512:32,512:32:1 --out-len 24 --out offload_real.json]
(DIR: a RULER data cache, e.g. one made by `python -m asynctls_sglang.eval.ruler --prepare-only`.)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse_configs(text: str) -> list[tuple[int, int, int | None]]:
    """"K:kb[:cap],..." -> [(K, kb, cap or None)]; a bad item stops with a message naming it."""
    out = []
    for item in text.split(","):
        parts = item.split(":")
        try:
            if len(parts) not in (2, 3):
                raise ValueError
            k, kb, *cap = (int(x) for x in parts)
        except ValueError:
            raise SystemExit(f"--configs: {item!r} is not K:kb or K:kb:cap (integers)") from None
        out.append((k, kb, cap[0] if cap else None))
    return out


def engine_kwargs(device: str, model: str, context: int, block_size: int) -> dict:
    kw = dict(model_path=model, attention_backend="asynctls", page_size=block_size, random_seed=0,
              context_length=context, max_running_requests=4, log_level="warning")
    if device == "cpu":
        kw.update(device="cpu", dtype="float32", disable_cuda_graph=True, chunked_prefill_size=8192,
                  mem_fraction_static=0.5, max_total_tokens=5 * context)
    else:
        kw.update(dtype="bfloat16", mem_fraction_static=0.3, cuda_graph_max_bs_decode=4)
    return kw


def run_engine(kw: dict, cfg: dict, prompts: list[str], out_len: int) -> tuple[list[list[int]], dict]:
    import sglang as sgl

    os.environ["ASYNCTLS_CONFIG"] = json.dumps(cfg)
    eng = sgl.Engine(**kw)
    try:
        params = {"temperature": 0.0, "max_new_tokens": out_len, "ignore_eos": True}
        # one prompt at a time: the same batch composition with offload on and off
        tokens = [eng.generate(prompt=p, sampling_params=params)["output_ids"] for p in prompts]
        stats = eng.get_server_info()["internal_states"][0]["asynctls"]
    finally:
        eng.shutdown()
    return tokens, stats


def block_bytes(model_cfg: dict, block_size: int, dtype_size: int) -> int:
    """K and V bytes of one block of one KV head in one layer (the unit the engine copies)."""
    head_dim = model_cfg.get("head_dim") or model_cfg["hidden_size"] // model_cfg["num_attention_heads"]
    return 2 * block_size * head_dim * dtype_size


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-cache", required=True)
    ap.add_argument("--task", default="niah_single_2")
    ap.add_argument("--samples", type=int, default=4, help="prompts (the first of the cached file)")
    ap.add_argument("--configs", default="512:128,512:32", help="token budget:block budget, comma list")
    ap.add_argument("--out-len", type=int, default=24)
    ap.add_argument("--context", type=int, default=8192,
                    help="the model context; the cached prompts are generated 30 tokens shorter")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--out", default="offload_real.json")
    args = ap.parse_args(argv)
    import torch

    from asynctls_sglang.config import AsyncTLSConfig
    from asynctls_sglang.eval.datagen import load_or_generate
    from asynctls_sglang.eval.prompts import chat_wrapper, render
    from asynctls_sglang.models.smollm2 import ensure_smollm2
    from asynctls_sglang.plugin import register

    register()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = ensure_smollm2()
    model_cfg = json.load(open(os.path.join(model, "config.json")))
    # the cached files are named by the generation length the harness asked for (context - 30)
    _, samples = load_or_generate(args.task, model, args.context - 30, 50, args.data_cache, print)
    wrapper = chat_wrapper(model)
    prompts = [render(s, "chat", wrapper) for s in samples[: args.samples]]
    layers, kv_heads = model_cfg["num_hidden_layers"], model_cfg["num_key_value_heads"]
    rows = []
    for k, kb, cap in parse_configs(args.configs):
        cfg = {"token_budget": k, "block_budget": kb, "dense_threshold": k}
        on_cfg = {**cfg, "offload": True, **({"max_miss_blocks_per_step": cap} if cap is not None else {})}
        on_cap = AsyncTLSConfig.from_json(json.dumps(on_cfg), source=f"--configs {k}:{kb}:{cap}")
        on_cap = on_cap.max_miss_blocks_per_step
        kw = engine_kwargs(device, model, args.context, 64)  # prompts leave room for the output (see --context)
        t0 = time.perf_counter()
        off, _ = run_engine(kw, cfg, prompts, args.out_len)
        on, stats = run_engine(kw, on_cfg, prompts, args.out_len)
        o = stats["offload"]
        equal = sum(a == b for x, y in zip(off, on) for a, b in zip(x, y))
        steps = max(o["decode_steps"], 1)
        no_locality = kb * block_bytes(model_cfg, 64, 4 if device == "cpu" else 2) * kv_heads * layers  # per request and step
        per_request_step = o["bytes_moved"] / max(1, o["decode_steps"])  # one request at a time
        row = {"token_budget": k, "block_budget": kb, "max_miss_blocks_per_step": on_cap,
               "device": device, "samples": len(prompts),
               "tokens_equal": equal, "tokens": sum(len(x) for x in off),
               "sequences_equal": sum(x == y for x, y in zip(off, on)),
               "blocks_late": o["blocks_late"], "blocks_needed": o["blocks_needed"],
               "blocks_overflow": o["blocks_overflow"],
               "late_fraction": o["blocks_late"] / max(1, o["blocks_needed"]), "hit_rate": o["hit_rate"],
               "bytes_per_step": per_request_step, "kb_x_B_bytes_per_step": no_locality,
               "fraction_of_kb_x_B": per_request_step / no_locality, "seed_blocks_moved": o["seed_blocks_moved"],
               "decode_steps": steps, "wall_s": round(time.perf_counter() - t0, 1)}
        print("[offload_real] " + json.dumps(row), flush=True)
        rows.append(row)
        json.dump({"task": args.task, "rows": rows}, open(args.out, "w"), indent=1)
    print(table(rows))
    plot(rows, os.path.splitext(args.out)[0] + ".png")
    return 0


def table(rows: list[dict]) -> str:
    out = ["| K : k_b : copy cap | tokens equal (offload on vs off) | late blocks | hit rate | bytes/step vs k_b x B |",
           "|---|---|---|---|---|"]
    for r in rows:
        cap = r.get("max_miss_blocks_per_step", "?")
        out.append(f"| {r['token_budget']} : {r['block_budget']} : {cap} | {r['tokens_equal']}/{r['tokens']} "
                   f"({r['sequences_equal']}/{r['samples']} sequences) | {r['late_fraction']:.2%} | "
                   f"{r['hit_rate']:.3f} | {r['fraction_of_kb_x_B']:.1%} |")
    return "\n".join(out)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"K={r['token_budget']}\nk_b={r['block_budget']}\ncap={r.get('max_miss_blocks_per_step', '?')}"
              for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [100 * r["fraction_of_kb_x_B"] for r in rows], 0.4, label="bytes moved, % of k_b x B")
    ax.bar([i + 0.2 for i in x], [100 * r["late_fraction"] for r in rows], 0.4, label="late blocks, % of needed")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("%")
    ax.set_title("Offload on real selections (SmolLM2, RULER 8k)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
