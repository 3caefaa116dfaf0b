"""Cheap combinations of per-query-head approximate scores inside one KV group (r=32, INT4 keys).

s_h(t) = (q_h[ch] . deq4(k[ch]))(t) * scaling   (h: the G=3 query heads of a KV group)
  mean     : mean_h s_h                          (current method; common.select agg="mean")
  max      : max_h s_h
  maxshift : max_h (s_h - m_h),   m_h = max over candidate tokens of s_h
  maxlse   : max_h (s_h - lse_h), lse_h = logsumexp over candidates of s_h (= max_h approx prob)
  maxlse_dr: as maxlse with temperature scaling*D/r (the r16pmax convention), extra
  union    : per-head union of rankings (common.select agg="union"), reference
Same metrics as run_study.analyse. Also e2e (simulated sparse greedy decode) of the cheap variants.

    python benchmarks/selection_study/study_headagg.py --samples 0,7,9,1 --out benchmarks/selection_study/headagg.jsonl
Summarise: python benchmarks/selection_study/summarize.py benchmarks/selection_study/headagg.jsonl
"""
from __future__ import annotations

import argparse
import os
import time

import torch

import common
from common import (accumulate, selected_mask, SINK, LOCAL, Variant, cfg_for, forced_positions, load_model,
                    load_samples, quantize, _topk)
from run_study import dense_sample, e2e_and_save

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "results", "selection_study")  # git-ignored
os.makedirs(OUT_DIR, exist_ok=True)
_orig_select = common.select
NEW_AGGS = ("max", "maxshift", "maxlse", "maxlse_dr")


def per_head_scores(q, keys, calib, layer, r, bits, scaling):
    """-> s [Hk, G, T] = approximate scaled logits per query head, cand_ok [T]."""
    t, hk, d = keys.shape
    g = q.shape[0] // hk
    ch = calib.channels(layer, r, "own")
    sub = torch.gather(keys.float(), 2, ch.unsqueeze(0).expand(t, -1, -1))
    if bits is not None:
        sub = quantize(sub, bits)
    qs = torch.gather(q.float().view(hk, g, d), 2, ch.unsqueeze(1).expand(-1, g, -1))
    per = torch.einsum("hgr,thr->hgt", qs, sub) * scaling
    cand_ok = torch.zeros(t, dtype=torch.bool)
    cand_ok[SINK: t - LOCAL] = True
    return per, cand_ok


def combine(per, cand_ok, agg, d, r):
    x = per.masked_fill(~cand_ok, float("-inf"))
    if agg == "max":
        s = x.amax(1)
    elif agg == "maxshift":
        s = (x - x.amax(-1, keepdim=True)).amax(1)
    elif agg == "maxlse":
        s = (x - torch.logsumexp(x, -1, keepdim=True)).amax(1)
    elif agg == "maxlse_dr":
        y = x * (d / r)
        s = (y - torch.logsumexp(y, -1, keepdim=True)).amax(1)
    else:
        raise ValueError(agg)
    return s.masked_fill(~cand_ok, float("-inf"))


def select2(v: Variant, q, keys, calib, layer, scaling, other=None):
    if v.agg not in NEW_AGGS:
        return _orig_select(v, q, keys, calib, layer, scaling, other)
    t, hk, d = keys.shape
    cfg = cfg_for(v.budget, v.r)
    per, cand_ok = per_head_scores(q, keys, calib, layer, v.r, v.bits, scaling)
    s = combine(per, cand_ok, v.agg, d, v.r)
    forced = forced_positions(t, cfg).unsqueeze(0).expand(hk, -1)
    return torch.cat([forced, _topk(s, cfg.selected_tokens)], 1)


common.select = select2  # used by common.asynctls_sim for the e2e runs

BUDGETS = (256, 512, 1024)
AGGS = ("mean", "max", "maxshift", "maxlse", "maxlse_dr", "union")
A = [Variant(f"r32b4{'' if a == 'mean' else a}@{b}", budget=b, r=32, bits=4, agg=a)
     for b in BUDGETS for a in AGGS]
E = [Variant(f"r32b4{'' if a == 'mean' else a}@{b}", budget=b, r=32, bits=4, agg=a)
     for b in (256, 1024) for a in ("max", "maxshift", "maxlse", "mean", "union")]


def analyse(keys, qs, L, needle, calib, scaling, n_steps):
    nl = len(keys)
    hk, d = keys[0].shape[1], keys[0].shape[2]
    g = qs[0][0].shape[0] // hk
    needle = torch.tensor(needle)
    acc = {v.name: dict(mass=0.0, n=0, lt90=0, nd_mass=0.0, nd_tot=0.0, nd_tok=0.0, nd_top=0.0, nd_n=0)
           for v in A}
    per_layer_needle = torch.zeros(nl, hk)
    for s in range(n_steps):
        T = L + s
        for layer in range(nl):
            k = keys[layer][:T]
            q = qs[s][layer]
            probs = torch.softmax(torch.einsum("hgd,thd->hgt", q.view(hk, g, d), k) * scaling, -1)
            ndm = probs[:, :, needle].sum(-1)
            per_layer_needle[layer] += ndm.amax(1)
            strong = ndm.amax(1) >= 0.1
            top_needle = needle[probs[:, :, needle].sum(1).argmax(-1)]
            # per-head scores once per (step, layer); new aggregations derived from them
            per, cand_ok = per_head_scores(q, k, calib, layer, 32, 4, scaling)
            comb = {a: combine(per, cand_ok, a, d, 32) for a in NEW_AGGS}
            for v in A:
                if v.agg in NEW_AGGS:
                    cfg = cfg_for(v.budget, v.r)
                    forced = forced_positions(T, cfg).unsqueeze(0).expand(hk, -1)
                    pos = torch.cat([forced, _topk(comb[v.agg], cfg.selected_tokens)], 1)
                else:
                    pos = _orig_select(v, q, k, calib, layer, scaling)
                accumulate(acc[v.name], probs, selected_mask(pos, T, v.name), strong, needle, top_needle)
    return acc, (per_layer_needle / n_steps).tolist()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", default="0,7,9,1,2,3,4,5,6,8,10,11")
    ap.add_argument("--out", default=os.path.join(OUT_DIR, "headagg.jsonl"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--analysis-steps", type=int, default=9)
    ap.add_argument("--no-e2e", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load_model()
    scaling = model.model.layers[0].self_attn.scaling
    samples = load_samples()
    for idx in [int(x) for x in args.samples.split(",")]:
        t0 = time.time()
        rec, answer, needle, L, calib, pkv, first, qs, out = dense_sample(model, tok, samples[idx], idx, args.steps)
        nl = len(model.model.layers)
        t1 = time.time()
        keys = [pkv.layers[i].keys[0].transpose(0, 1).contiguous() for i in range(nl)]
        n_steps = min(args.analysis_steps, len(qs))
        rec["analysis"], rec["needle_by_layer"] = analyse(keys, qs, L, needle, calib, scaling, n_steps)
        rec["analysis_steps"] = n_steps
        print(f"[{idx}] analysis {time.time() - t1:.1f}s", flush=True)
        e2e_and_save(rec, [] if args.no_e2e else E, model, tok, pkv, first, L, args.steps, calib, None, answer,
                     idx, t0, args.out)
        del pkv, out


if __name__ == "__main__":
    main()
