"""The MLA prefill's attention in the MHA form (adapter.mla_prefill) per kernel, on a GPU.

One prefill chunk of E rows over a prefix of P rows (one request), bf16, with the real per-head
dims of DeepSeek-V2-Lite (16 heads, q/k 128 + 64, v 128) and GLM-4.7-Flash (20 heads, q/k
192 + 64, v 256). Kernels: `sdpa` (torch's scaled_dot_product_attention, flash attention, V
zero-padded to the q/k dim where narrower), `triton` (SGLang's Triton extend kernel) and
`flashinfer` (FlashInfer's ragged prefill, the kernel of SGLang's FlashInfer MLA backend and the
GPU default since session 13). Reports ms per layer (median of --reps, CUDA events), TFLOP/s of the causal
attention (2 * H * E * (P + (E + 1) / 2) * (Dqk + Dv)) and the fraction of the H200's dense bf16
peak (989 TFLOP/s): attention at these lengths is compute-bound. Prints a table, writes JSON and
a PNG.

    python benchmarks/mla_prefill_bench.py --out mla_prefill.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import types

import torch

from asynctls_sglang.adapter.mla_prefill import MLAPrefill

MODELS = {"dsv2-lite": (16, 192, 128), "glm-4.7-flash": (20, 256, 256)}
PEAK_TFLOPS = 989.0


def run_kernel(kernel: str, q, k, v, k_pre, v_pre, prefix, extend, scale, prefill: MLAPrefill):
    if kernel == "sdpa":
        return MLAPrefill.attend_sdpa(q, k, v, k_pre, v_pre, prefix, extend, scale)
    if kernel == "flashinfer":
        return prefill.attend_flashinfer(q, k, v, k_pre, v_pre, prefix, extend, scale)
    from sglang.kernels.ops.attention.extend_attention import extend_attention_fwd

    backend = types.SimpleNamespace(extend_attention_fwd=extend_attention_fwd)
    return MLAPrefill.attend_triton(backend, q, k, v, k_pre, v_pre, prefix, extend, scale)


def time_ms(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench_point(model: str, e: int, p: int, kernels: list[str], reps: int) -> dict:
    heads, dqk, dv = MODELS[model]
    gen = torch.Generator(device="cuda").manual_seed(0)

    def rand(n, d):
        return torch.randn(n, heads, d, device="cuda", dtype=torch.bfloat16, generator=gen)

    q, k, v, k_pre, v_pre = rand(e, dqk), rand(e, dqk), rand(e, dv), rand(p, dqk), rand(p, dv)
    flops = 2 * heads * e * (p + (e + 1) / 2) * (dqk + dv)
    row = {"model": model, "extend": e, "prefix": p, "heads": heads, "dqk": dqk, "dv": dv, "tflop": flops / 1e12}
    prefill = MLAPrefill(None, "mha")
    for kernel in kernels:
        try:
            ms = time_ms(lambda: run_kernel(kernel, q, k, v, k_pre, v_pre, [p], [e], dqk ** -0.5, prefill), reps)
        except Exception as exc:  # one kernel failing (a JIT build, a shape) keeps the others' rows
            print(f"[mlapre] {model} {e}x{p} {kernel} failed: {exc!r}", flush=True)
            row[kernel] = {"ms": None, "tflops": None, "peak_fraction": None, "error": repr(exc)[:300]}
            continue
        row[kernel] = {"ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1),
                       "peak_fraction": round(flops / ms / 1e9 / PEAK_TFLOPS, 3)}
    return row


def measure(args) -> list[dict]:
    if not torch.cuda.is_available():
        raise SystemExit("mla_prefill_bench needs a GPU")
    rows = []
    for model in args.models.split(","):
        for point in args.points.split(","):
            e, p = (int(x) for x in point.split("x"))
            row = bench_point(model, e, p, args.kernels.split(","), args.reps)
            print(json.dumps(row), flush=True)
            rows.append(row)
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--points", default="16384x0,16384x40960,16384x81920",
                    help="comma list of EXTENDxPREFIX (rows of the chunk x rows before it)")
    ap.add_argument("--kernels", default="sdpa,triton,flashinfer")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default="mla_prefill.json")
    ap.add_argument("--replot", default=None, metavar="JSON",
                    help="no timing: print the table and write the plot of an earlier run's JSON (beside --out)")
    args = ap.parse_args()
    if args.replot:
        rows = json.load(open(args.replot))["rows"]
        kernels = [k for k in ("sdpa", "triton", "flashinfer") if k in rows[0]]
    else:
        rows, kernels = measure(args), args.kernels.split(",")
    lines = ["| model | extend x prefix | " + " | ".join(f"{k} ms (TFLOP/s, peak)" for k in kernels) + " |",
             "|---|---|" + "---|" * len(kernels)]
    for r in rows:
        cells = [f"{r[k]['ms']} ({r[k]['tflops']}, {r[k]['peak_fraction']})" for k in kernels]
        lines.append(f"| {r['model']} | {r['extend']} x {r['prefix']} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if not args.replot:
        json.dump({"rows": rows, "peak_tflops": PEAK_TFLOPS}, open(args.out, "w"), indent=1)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"{r['model']}\n{r['extend'] // 1024}k x {r['prefix'] // 1024}k" for r in rows]
    width = 0.8 / len(kernels)
    for i, kernel in enumerate(kernels):
        ax.bar([x + i * width for x in range(len(rows))], [r[kernel]["tflops"] or 0 for r in rows], width, label=kernel)
    ax.set_xticks([x + width * (len(kernels) - 1) / 2 for x in range(len(rows))], labels, fontsize=7)
    ax.set_ylabel("TFLOP/s (causal attention)")
    ax.axhline(PEAK_TFLOPS, color="grey", linestyle=":", label="H200 dense bf16 peak")
    ax.legend()
    ax.set_title("MLA prefill attention in the MHA form, one chunk")
    fig.tight_layout()
    fig.savefig(args.out.rsplit(".", 1)[0] + ".png", dpi=120)


if __name__ == "__main__":
    main()
