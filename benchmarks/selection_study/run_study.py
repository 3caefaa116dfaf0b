"""Per niah_single_2 sample: dense prefill (+ online calibration stats), dense greedy decode
(capturing post-RoPE queries), attention-mass / needle-recall analysis of many token-selection
variants on the captured queries, then simulated sparse greedy decode (e2e) for a few variants.

    python benchmarks/selection_study/run_study.py --samples 0-4 --out benchmarks/selection_study/study.jsonl
One JSON line per sample is appended to --out. Summarise with summarize.py.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from common import (accumulate, selected_mask, CTRL, Calib, OTHER_DATA, Variant, load_model, load_samples, needle_positions,
                    select)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "results", "selection_study")  # git-ignored
os.makedirs(OUT_DIR, exist_ok=True)
EOS = 2

A = []  # analysis variants
for b in (256, 512, 1024):
    A += [Variant(f"oracle@{b}", budget=b, oracle=True),
          Variant(f"ref@{b}", budget=b),
          Variant(f"ref_other@{b}", budget=b, calib="other")]
for b in (256, 1024):
    A += [Variant(f"r16b8@{b}", budget=b, bits=8),
          Variant(f"r16fp@{b}", budget=b, bits=None),
          Variant(f"r32b4@{b}", budget=b, r=32),
          Variant(f"r32b8@{b}", budget=b, r=32, bits=8),
          Variant(f"r32fp@{b}", budget=b, r=32, bits=None),
          Variant(f"r64b4@{b}", budget=b, r=64),
          Variant(f"r64b8@{b}", budget=b, r=64, bits=8),
          Variant(f"r64fp@{b}", budget=b, r=64, bits=None),
          Variant(f"r16step@{b}", budget=b, calib="step"),
          Variant(f"r16std@{b}", budget=b, calib="std"),
          Variant(f"r16pairs@{b}", budget=b, calib="own_pairs"),
          Variant(f"r16center@{b}", budget=b, center=True),
          Variant(f"r16pmax@{b}", budget=b, agg="pmax"),
          Variant(f"r16psum@{b}", budget=b, agg="psum"),
          Variant(f"r16union@{b}", budget=b, agg="union"),
          Variant(f"r32b8union@{b}", budget=b, r=32, bits=8, agg="union"),
          Variant(f"r32b4union@{b}", budget=b, r=32, agg="union"),
          Variant(f"r64fppsum@{b}", budget=b, r=64, bits=None, agg="psum"),
          Variant(f"r64fpunion@{b}", budget=b, r=64, bits=None, agg="union")]

E = [Variant("ref@1024", budget=1024),
     Variant("ref@512", budget=512),
     Variant("ref@256", budget=256),
     Variant("ref_other@1024", budget=1024, calib="other"),
     Variant("r16b8@1024", budget=1024, bits=8),
     Variant("r16step@1024", budget=1024, calib="step"),
     Variant("r16union@1024", budget=1024, agg="union"),
     Variant("r32b4@1024", budget=1024, r=32),
     Variant("r32b4@256", budget=256, r=32),
     Variant("r32b4union@1024", budget=1024, r=32, agg="union"),
     Variant("r32b4union@256", budget=256, r=32, agg="union"),
     Variant("r64b4@1024", budget=1024, r=64),
     Variant("r64fp@1024", budget=1024, r=64, bits=None),
     Variant("r64fpunion@256", budget=256, r=64, bits=None, agg="union"),
     Variant("oracle@1024", budget=1024, oracle=True),
     Variant("oracle@256", budget=256, oracle=True)]


def parse_range(text):
    a, _, b = text.partition("-")
    return list(range(int(a), int(b or a) + 1))


def other_calib(model, tok, path):
    if os.path.isfile(path):
        return torch.load(path, weights_only=False)
    s, text = load_samples(OTHER_DATA)[0]
    ids = tok(text, return_tensors="pt")["input_ids"]
    cal = Calib()
    CTRL.calib, CTRL.capture, CTRL.variant = cal, None, None
    with torch.no_grad():
        model(ids, use_cache=False, logits_to_keep=1)
    CTRL.calib = None
    torch.save(cal, path)
    return cal


def generate(model, pkv, first, L, steps, variant=None, calib=None, other=None):
    pkv.crop(L)
    CTRL.variant, CTRL.sel_calib, CTRL.other_calib = variant, calib, other
    gen = [first]
    with torch.no_grad():
        for i in range(steps - 1):
            if gen[-1] == EOS:
                break
            o = model(torch.tensor([[gen[-1]]]), past_key_values=pkv, use_cache=True,
                      position_ids=torch.tensor([[L + i]]), logits_to_keep=1)
            gen.append(int(o.logits[0, -1].argmax()))
    CTRL.variant = None
    return gen


def analyse(keys, qs, L, needle, calib, other, scaling, n_steps, log):
    """keys: per layer [T_all, Hk, D]; qs[step][layer] [Hq, D]. -> {variant: metrics sums}."""
    nl = len(keys)
    hk, d = keys[0].shape[1], keys[0].shape[2]
    hq = qs[0][0].shape[0]
    g = hq // hk
    needle = torch.tensor(needle)
    acc = {v.name: dict(mass=0.0, n=0, lt90=0, nd_mass=0.0, nd_tot=0.0, nd_tok=0.0, nd_top=0.0,
                        nd_n=0) for v in A}
    per_layer_needle = torch.zeros(nl, hk)
    checked = 0
    for s in range(n_steps):
        T = L + s
        for layer in range(nl):
            k = keys[layer][:T]
            q = qs[s][layer]
            probs = torch.softmax(torch.einsum("hgd,thd->hgt", q.view(hk, g, d), k) * scaling, -1)  # [Hk,G,T]
            ndm = probs[:, :, needle].sum(-1)  # [Hk, G]
            per_layer_needle[layer] += ndm.amax(1)
            strong = ndm.amax(1) >= 0.1  # retrieval group at this step
            top_needle = needle[probs[:, :, needle].sum(1).argmax(-1)]  # [Hk] most-attended needle token
            if s == 1 and layer in (0, 15, 29) and checked < 3:
                from common import select_tokens, cfg_for
                for b in (256, 1024):
                    ref = select_tokens(q, k, calib.channels(layer, 16), cfg_for(b)).positions
                    mine = select(Variant("x", budget=b), q, k, calib, layer, scaling, other)
                    if not torch.equal(ref, mine):
                        nd = sum(len(set(ref[h].tolist()) ^ set(mine[h].tolist())) for h in range(hk))
                        log(f"   reference mismatch layer {layer} budget {b}: {nd} positions differ (as sets)")
                        diag = dict(layer=layer, budget=b, q=q, k=k, ch=calib.channels(layer, 16))
                        torch.save(diag, os.path.join(OUT_DIR, f"mismatch_L{layer}_b{b}.pt"))
                checked += 1
            for v in A:
                pos = select(v, q, k, calib, layer, scaling, other)
                accumulate(acc[v.name], probs, selected_mask(pos, T, v.name), strong, needle, top_needle)
    return acc, (per_layer_needle / n_steps).tolist()


def e2e_and_save(rec: dict, variants, model, tok, pkv, first, length: int, steps: int, calib, other,
                 answer: str, idx: int, t0: float, out: str) -> None:
    """Simulated sparse greedy decode of each variant from the prefilled cache, then one JSON line."""
    rec["e2e"] = {}
    for v in variants:
        t1 = time.time()
        gen = generate(model, pkv, first, length, steps, v, calib, other)
        txt = tok.decode(gen)
        rec["e2e"][v.name] = dict(text=txt, hit=answer in txt)
        print(f"[{idx}] {v.name:20s} {answer in txt!s:5s} {txt!r} {time.time() - t1:.1f}s", flush=True)
    rec["total_s"] = round(time.time() - t0, 1)
    with open(out, "a") as fh:
        fh.write(json.dumps(rec) + "\n")
    print(f"[{idx}] done in {rec['total_s']}s", flush=True)


def dense_sample(model, tok, sample, idx: int, steps: int):
    """Dense prefill of one sample (calibration statistics on) and dense greedy decode capturing
    every layer's query. Returns (record, answer, needle, length, calib, cache, first token,
    queries [step][layer], model output)."""
    t0 = time.time()
    s, text = sample
    answer = s.references[0]
    ids, needle = needle_positions(tok, text, answer)
    length = ids.shape[0]
    calib, cap = Calib(), []
    CTRL.calib, CTRL.capture, CTRL.variant = calib, cap, None
    with torch.no_grad():
        out = model(ids.unsqueeze(0), use_cache=True, logits_to_keep=1)
    CTRL.calib = None
    pkv = out.past_key_values
    first = int(out.logits[0, -1].argmax())
    t_pre = time.time() - t0
    full = generate(model, pkv, first, length, steps)
    CTRL.capture = None
    nl = len(model.model.layers)
    qs = [[None] * nl for _ in range(len(cap) // nl)]
    for i, (layer, q) in enumerate(cap):
        qs[i // nl][layer] = q
    rec = dict(sample=idx, L=length, answer=answer, needle=needle, prefill_s=round(t_pre, 1),
               full=tok.decode(full), full_hit=answer in tok.decode(full))
    print(f"[{idx}] L={length} needle={needle} prefill {t_pre:.1f}s full={rec['full']!r}", flush=True)
    return rec, answer, needle, length, calib, pkv, first, qs, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", default="0-4")
    ap.add_argument("--out", default=os.path.join(OUT_DIR, "study.jsonl"))
    ap.add_argument("--steps", type=int, default=12, help="max generated tokens")
    ap.add_argument("--analysis-steps", type=int, default=9, help="queries analysed: prefill-last + decode")
    ap.add_argument("--no-analysis", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load_model()
    scaling = model.model.layers[0].self_attn.scaling
    other = other_calib(model, tok, os.path.join(OUT_DIR, "calib_niah_single_1_s0.pt"))
    samples = load_samples()
    for idx in parse_range(args.samples):
        t0 = time.time()
        rec, answer, needle, L, calib, pkv, first, qs, out = dense_sample(model, tok, samples[idx], idx, args.steps)
        nl = len(model.model.layers)
        if not args.no_analysis:
            t1 = time.time()
            keys = [pkv.layers[i].keys[0].transpose(0, 1).contiguous() for i in range(nl)]
            n_steps = min(args.analysis_steps, len(qs))
            rec["analysis"], rec["needle_by_layer"] = analyse(keys, qs, L, needle, calib, other, scaling,
                                                              n_steps, print)
            rec["analysis_steps"] = n_steps
            print(f"[{idx}] analysis {time.time() - t1:.1f}s", flush=True)
        e2e_and_save(rec, E, model, tok, pkv, first, L, args.steps, calib, other, answer, idx, t0, args.out)
        del pkv, out


if __name__ == "__main__":
    main()
