"""One table and one PNG over several fixed-memory runs of e2e_bench.py (`--fixed-kv-tokens`), each
run compared with the full-attention row of its own run: how many requests the offload engine
decodes together under the same KV memory, at what rate, and what its resident cache costs.

    python benchmarks/fixed_memory_sweep.py RUN.json [RUN.json ...] --out sweep.json

Each RUN.json holds one full-attention row (the baseline: the first row without offload) and one
asynctls row with offload. Prints a Markdown table, writes the rows as JSON and the plot beside it
(.png): decode tokens/s at the batch each backend reached, per run.
"""
from __future__ import annotations

import argparse
import json
import os


def sweep_row(run: dict, name: str) -> dict:
    """The comparison of one run: its offload row against its own full-attention row."""
    rows = run["rows"]
    base = next((r for r in rows if "offload" not in r), None)
    off = next((r for r in rows if "offload" in r), None)
    if base is None or off is None:
        raise SystemExit(f"{name}: needs one full-attention row and one offload row "
                         f"(has {[r.get('backend') for r in rows]})")
    o = off["offload"]
    base_rate, rate = base.get("decode_tok_s_at_batch"), off.get("decode_tok_s_at_batch")
    hidden = (off.get("profile") or {}).get("transfers", {}).get("hidden_fraction")
    return {"run": name, "ctx": off["ctx"], "kv_tokens": off.get("fixed_kv_tokens"),
            "resident_blocks": o.get("resident_capacity_blocks"), "submitted": off["bs"],
            "baseline": base["backend"], "baseline_batch": base["batch_reached"], "baseline_tok_s": base_rate,
            "batch": off["batch_reached"], "tok_s": rate, "itl_ms": off.get("itl_ms_median"),
            "ratio": round(rate / base_rate, 2) if rate and base_rate else None,
            "hit_rate": round(o["hit_rate"], 3), "mb_per_step": round(o["bytes_per_step"] / 1e6, 1),
            "late": round(o["blocks_late"] / o["blocks_needed"], 3) if o.get("blocks_needed") else None,
            "hidden": hidden}


def _cell(v, fmt: str = "{}") -> str:
    return "-" if v is None else fmt.format(v)


def sweep_table(rows: list[dict]) -> str:
    head = ("| run | resident blocks | batch reached | full attention (batch) | asynctls + offload | ITL ms "
            "| x full attention | hit rate | MB per step | late blocks | copy time hidden |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r['run']} | {_cell(r['resident_blocks'])} | {r['batch']} of {r['submitted']} "
            f"| {_cell(r['baseline_tok_s'], '{:.1f}')} ({r['baseline_batch']}) | {_cell(r['tok_s'], '{:.1f}')} "
            f"| {_cell(r['itl_ms'], '{:.3f}')} | **{_cell(r['ratio'], '{:.2f}x')}** | {r['hit_rate']:.3f} "
            f"| {r['mb_per_step']:.0f} | {_cell(r['late'], '{:.1%}')} | {_cell(r['hidden'], '{:.1%}')} |")
    return "\n".join(lines)


def sweep_plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.8 * len(rows) + 3, 4.2))
    x = range(len(rows))
    w = 0.38
    base = [r["baseline_tok_s"] or 0 for r in rows]
    ours = [r["tok_s"] or 0 for r in rows]
    ax.bar([i - w / 2 for i in x], base, w, label=rows[0]["baseline"] + " (full attention)")
    ax.bar([i + w / 2 for i in x], ours, w, label="asynctls + offload")
    for i, r in enumerate(rows):
        ax.text(i - w / 2, base[i], f"batch {r['baseline_batch']}", ha="center", va="bottom", fontsize=8)
        ax.text(i + w / 2, ours[i], f"batch {r['batch']}\n{_cell(r['ratio'], '{:.2f}x')}", ha="center",
                va="bottom", fontsize=8)
    ax.set_xticks(list(x), [f"{r['run']}\n{r['resident_blocks']} resident blocks" for r in rows], fontsize=8)
    ax.set_ylabel("decode tokens/s at the batch reached")
    ax.set_ylim(0, max(ours + base) * 1.25)
    kv = {r["kv_tokens"] for r in rows}
    ax.set_title(f"Same KV memory ({', '.join(str(k) for k in sorted(kv, key=str))} tokens), "
                 f"{rows[0]['ctx'] // 1024}k contexts: each run against its own full attention")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN.json[:LABEL]", help="e2e_bench.py --fixed-kv-tokens JSON files")
    ap.add_argument("--out", required=True, help="JSON of the rows; the PNG goes beside it")
    args = ap.parse_args(argv)
    rows = []
    for spec in args.runs:
        path, _, label = spec.partition(":")
        run = json.load(open(path))
        if not run.get("args", {}).get("fixed_kv_tokens"):
            raise SystemExit(f"{path}: not a fixed-memory run (e2e_bench.py --fixed-kv-tokens)")
        rows.append(sweep_row(run, label or os.path.splitext(os.path.basename(path))[0]))
    print(sweep_table(rows))
    json.dump({"runs": args.runs, "rows": rows}, open(args.out, "w"), indent=1)
    sweep_plot(rows, os.path.splitext(args.out)[0] + ".png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
