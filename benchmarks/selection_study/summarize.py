"""Summarise run_study.py output: python benchmarks/selection_study/summarize.py benchmarks/selection_study/study*.jsonl"""
import json
import sys
from collections import defaultdict

recs = []
for path in sys.argv[1:]:
    with open(path) as fh:
        recs += [json.loads(line) for line in fh if line.strip()]
recs = sorted({r["sample"]: r for r in recs}.values(), key=lambda r: r["sample"])
print(f"samples: {[r['sample'] for r in recs]}")

tot = defaultdict(lambda: defaultdict(float))
for r in recs:
    for name, a in r.get("analysis", {}).items():
        for k, v in a.items():
            tot[name][k] += v
if tot:
    print(f"\n{'variant':18s} {'mass':>6s} {'<0.9':>6s} | {'ndMass':>6s} {'ndTok':>6s} {'ndTop':>6s} (n={next(iter(tot.values()))['nd_n']:.0f} retrieval group-steps)")
    def key(name):
        base, b = name.split("@")
        return (int(b), base)
    for name in sorted(tot, key=key):
        a = tot[name]
        print(f"{name:18s} {a['mass'] / a['n']:6.3f} {a['lt90'] / a['n']:6.3f} | "
              f"{a['nd_mass'] / max(a['nd_tot'], 1e-9):6.3f} {a['nd_tok'] / max(a['nd_n'], 1):6.3f} "
              f"{a['nd_top'] / max(a['nd_n'], 1):6.3f}")

    nl = [0.0] * len(recs[0]["needle_by_layer"])
    for r in recs:
        for i, row in enumerate(r["needle_by_layer"]):
            nl[i] += max(row) / len(recs)
    top = sorted(range(len(nl)), key=lambda i: -nl[i])[:8]
    print("\nlayers by max-group needle mass (avg over steps/samples):",
          ", ".join(f"L{i}:{nl[i]:.2f}" for i in top))

hits = defaultdict(int)
for r in recs:
    hits["full"] += r["full_hit"]
    for name, e in r["e2e"].items():
        hits[name] += e["hit"]
print(f"\ne2e exact-answer hits out of {len(recs)}:")
for name, h in hits.items():
    n = sum(name in r["e2e"] or name == "full" for r in recs)
    print(f"  {name:18s} {h}/{n}")
print("\nper-sample e2e texts:")
for r in recs:
    print(r["sample"], r["answer"], "full", repr(r["full"]), {n: e["text"].strip()[:12] for n, e in r["e2e"].items()})
