"""Shared pieces for the SmolLM2 / RULER niah_single_2 token-selection accuracy study.

- load(): model (fp32, HF), tokenizer, samples of niah_single_2 (chat format, as the harness)
- CTRL + the "asynctls_sim" attention function: dense SDPA prefill (optionally accumulating
  calibration statistics), decode steps either dense (optionally capturing q) or masked to a
  variant's selection (simulated sparse decode).
- select(): the generalised token selection (variants); the default variant reproduces
  asynctls_sglang.reference.select_tokens at 8k (block level keeps every block).
"""
from __future__ import annotations

import glob
import json
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from asynctls_sglang.config import AsyncTLSConfig  # noqa: E402
from asynctls_sglang.reference import select_tokens  # noqa: E402
from asynctls_sglang.reference.select import forced_positions  # noqa: E402
from asynctls_sglang.reference.index_keys import INV_15  # noqa: E402

def _model_dir() -> str:
    from asynctls_sglang.models.smollm2 import ensure_smollm2

    return ensure_smollm2()


def _data(task: str) -> str:
    """RULER data at 8k for the embedded SmolLM2 (RULER_DATA, default .carry/ruler/data): make it
    with python -m asynctls_sglang.eval.ruler --prepare-only --samples 50 --data-cache DIR."""
    folder = os.environ.get("RULER_DATA", os.path.join(ROOT, ".carry", "ruler", "data"))
    found = glob.glob(os.path.join(folder, f"{task}-8162-50-*.jsonl"))
    if not found:
        raise SystemExit(f"no {task} data at 8k with 50 samples in {folder} (set RULER_DATA; see common.py)")
    return found[0]


MODEL_DIR = _model_dir()
DATA = _data("niah_single_2")
OTHER_DATA = _data("niah_single_1")
SINK, LOCAL = 16, 64


# ---------------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    name: str
    budget: int = 1024
    r: int = 16
    bits: int | None = 4          # None: exact (fp32) index keys
    calib: str = "own"            # own | other | std | step (per-step |q|-top-r) | own_pairs
    agg: str = "mean"             # mean (reference) | pmax | psum | union
    center: bool = False          # quantise k - mean_k (calibration mean) instead of k
    oracle: bool = False          # exact probabilities, group psum (upper bound)
    reference: bool = False       # call asynctls_sglang.reference.select_tokens


def cfg_for(budget: int, r: int = 16) -> AsyncTLSConfig:
    return AsyncTLSConfig(token_budget=budget, index_channels=r)


# ------------------------------------------------------------------------------- calibration
class Calib:
    """Per-layer sums of |q| (group-mean over heads), |k|, k, k^2 over prefill tokens."""

    def __init__(self):
        self.qmag, self.kmag, self.ksum, self.ksq, self.n = {}, {}, {}, {}, {}

    def add(self, layer, q, k):  # q [T,Hq,D], k [T,Hk,D]
        t, hq, d = q.shape
        hk = k.shape[1]
        qm = q.float().abs().view(t, hk, hq // hk, d).mean(2).sum(0).double()
        km = k.float().abs().sum(0).double()
        ks = k.float().sum(0).double()
        k2 = (k.float() ** 2).sum(0).double()
        if layer not in self.n:
            self.qmag[layer], self.kmag[layer], self.ksum[layer], self.ksq[layer], self.n[layer] = qm, km, ks, k2, t
        else:
            self.qmag[layer] += qm; self.kmag[layer] += km; self.ksum[layer] += ks; self.ksq[layer] += k2
            self.n[layer] += t

    def channels(self, layer, r, mode="own"):
        qm, km = self.qmag[layer], self.kmag[layer]
        if mode == "std":
            n = self.n[layer]
            mu = self.ksum[layer] / n
            var = (self.ksq[layer] / n - mu ** 2).clamp(min=0)
            w = qm * var.sqrt()
        else:
            w = qm * km
        if mode.endswith("pairs"):  # RoPE rotate_half pairs (c, c + D/2) chosen together
            d = w.shape[-1]
            wp = w[:, : d // 2] + w[:, d // 2:]
            o = torch.sort(wp, dim=-1, descending=True, stable=True).indices[:, : r // 2]
            ch = torch.cat([o, o + d // 2], dim=-1)
            return ch.sort(dim=-1).values
        order = torch.sort(w, dim=-1, descending=True, stable=True).indices[:, :r]
        return order.sort(dim=-1).values

    def kmean(self, layer):
        return (self.ksum[layer] / self.n[layer]).float()


# ------------------------------------------------------------------------------- selection
def quantize(sub: torch.Tensor, bits: int) -> torch.Tensor:
    """Asymmetric per-(token, head) quantisation of [T, Hk, r] -> dequantised fp32 (reference
    rounding; bits=4 is bit-identical to quantize_index_keys + dequantize_index_keys)."""
    levels = (1 << bits) - 1
    lo = sub.amin(-1, keepdim=True)
    hi = sub.amax(-1, keepdim=True)
    scale = (hi - lo) * (INV_15 if bits == 4 else 1.0 / levels)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.floor((sub - lo) / safe + 0.5).clamp(0, levels)
    return codes * scale + lo


def _topk(scores, k):  # reference tie-break: higher score, then lower index; -inf never chosen
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    ok = torch.gather(scores, -1, order) > float("-inf")
    return torch.where(ok, order, torch.full_like(order, -1))


def select(v: Variant, q: torch.Tensor, keys: torch.Tensor, calib: Calib | None, layer: int,
           scaling: float, other: Calib | None = None) -> torch.Tensor:
    """q [Hq, D] (post-RoPE), keys [T, Hk, D] (post-RoPE, the new one last) -> positions [Hk, budget]."""
    t, hk, d = keys.shape
    hq = q.shape[0]
    g = hq // hk
    cfg = cfg_for(v.budget, v.r)
    if v.reference:
        ch = calib.channels(layer, v.r, "own")
        return select_tokens(q, keys, ch, cfg).positions
    forced = forced_positions(t, cfg).unsqueeze(0).expand(hk, -1)
    n_pick = cfg.selected_tokens
    cand_ok = torch.zeros(t, dtype=torch.bool)
    cand_ok[SINK: t - LOCAL] = True
    qf = q.float().view(hk, g, d)
    kf = keys.float()
    if v.oracle:
        logits = torch.einsum("hgd,thd->hgt", qf, kf) * scaling
        s = torch.softmax(logits, -1).sum(1)  # [Hk, T]
    else:
        if v.calib == "step":  # per-step (SparQ-like): top-r channels of |mean_group q| * E|k|
            w = qf.abs().mean(1) * calib.kmag[layer].float()
            ch = torch.sort(w, dim=-1, descending=True, stable=True).indices[:, : v.r].sort(-1).values
        elif v.calib.startswith("other"):
            ch = other.channels(layer, v.r, v.calib.replace("other", "own"))
        else:
            ch = calib.channels(layer, v.r, v.calib)
        sub = torch.gather(kf, 2, ch.unsqueeze(0).expand(t, -1, -1))  # [T, Hk, r]
        if v.center:
            mu = calib.kmean(layer)  # [Hk, D]
            sub = sub - torch.gather(mu, 1, ch).unsqueeze(0)
        if v.bits is not None:
            sub = quantize(sub, v.bits)
        qs = torch.gather(qf, 2, ch.unsqueeze(1).expand(-1, g, -1))  # [Hk, G, r]
        if v.agg == "mean":
            s = torch.einsum("hr,thr->ht", qs.mean(1), sub)
        else:
            per = torch.einsum("hgr,thr->hgt", qs, sub)  # [Hk, G, T]
            if v.agg in ("pmax", "psum"):
                p = torch.softmax(per.masked_fill(~cand_ok, float("-inf")) * scaling * d / v.r, -1)
                s = p.amax(1) if v.agg == "pmax" else p.sum(1)
            elif v.agg == "union":
                per = per.masked_fill(~cand_ok, float("-inf"))
                ranks = torch.sort(per, dim=-1, descending=True, stable=True).indices  # [Hk,G,T]
                # round-robin over heads: score = -(rank * G + head)
                s = torch.full((hk, t), float("-inf"))
                for h in range(hk):
                    best = torch.full((t,), float("inf"))
                    for j in range(g):
                        rk = torch.empty(t); rk[ranks[h, j]] = torch.arange(t, dtype=torch.float)
                        best = torch.minimum(best, rk * g + j)
                    s[h] = -best
            else:
                raise ValueError(v.agg)
    s = s.masked_fill(~cand_ok, float("-inf"))
    chosen = _topk(s, n_pick)
    return torch.cat([forced, chosen], 1)


# ------------------------------------------------------------------------------- attention fn
class Ctrl:
    calib: Calib | None = None      # accumulate prefill stats here when set
    capture: list | None = None     # decode: append (layer, q [Hq,D]) when set; prefill: last q
    variant: Variant | None = None  # decode: simulate this selection
    sel_calib: Calib | None = None  # calibration used by the variant
    other_calib: Calib | None = None
    stats: list | None = None
    layers: set | None = None       # decode: apply the variant only in these layers (None: all)


CTRL = Ctrl()


def asynctls_sim(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    # query [1, Hq, L, D]; key/value [1, Hk, T, D] (whole cache, post-RoPE)
    layer = module.layer_idx
    b, hq, L, d = query.shape
    hk = key.shape[1]
    g = hq // hk
    if L > 1:
        if CTRL.calib is not None:
            CTRL.calib.add(layer, query[0].transpose(0, 1), key[0].transpose(0, 1))
        if CTRL.capture is not None:
            CTRL.capture.append((layer, query[0, :, -1].clone()))
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None
    q = query[0, :, 0]  # [Hq, D]
    if CTRL.capture is not None:
        CTRL.capture.append((layer, q.clone()))
    k = key[0].transpose(0, 1)  # [T, Hk, D]
    logits = torch.einsum("hgd,thd->hgt", q.view(hk, g, d), k) * scaling  # [Hk, G, T]
    if CTRL.variant is not None and (CTRL.layers is None or layer in CTRL.layers):
        pos = select(CTRL.variant, q, k, CTRL.sel_calib, layer, scaling, CTRL.other_calib)
        mask = torch.zeros(hk, k.shape[0], dtype=torch.bool)
        valid = pos >= 0
        rows = torch.arange(hk).unsqueeze(1).expand_as(pos)
        mask[rows[valid], pos[valid]] = True
        logits = logits.masked_fill(~mask.unsqueeze(1), float("-inf"))
    p = torch.softmax(logits, -1)
    out = torch.einsum("hgt,thd->hgd", p, value[0].transpose(0, 1)).reshape(1, 1, hq, d)
    return out, None


def register():
    from transformers import AttentionInterface
    AttentionInterface.register("asynctls_sim", asynctls_sim)


# ------------------------------------------------------------------------------- model / data
def load_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    register()
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32,
                                                 attn_implementation="asynctls_sim")
    model.eval()
    return model, tok


def load_samples(path=DATA):
    from asynctls_sglang.eval.datagen import _parse
    from asynctls_sglang.eval.prompts import chat_wrapper, render
    wrapper = chat_wrapper(MODEL_DIR)
    out = []
    with open(path) as fh:
        for line in fh:
            s = _parse(json.loads(line))
            out.append((s, render(s, "chat", wrapper)))
    return out


def needle_positions(tok, text: str, answer: str) -> tuple[torch.Tensor, list[int]]:
    enc = tok(text, return_offsets_mapping=True)
    ids = enc["input_ids"]
    start = text.find(answer)
    assert start >= 0 and text.find(answer, start + 1) < 0, "answer must occur once"
    end = start + len(answer)
    pos = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < end and b > start]
    return torch.tensor(ids), pos


def accumulate(a: dict, probs: torch.Tensor, mask: torch.Tensor, strong, needle, top_needle) -> None:
    """Add one (step, layer) to a variant's totals: attention mass kept per query head (probs
    [Hk, G, T], mask [Hk, T] selected), and over the KV groups where one head attends the needle
    (strong[h]): needle mass kept, needle tokens kept, the needle's top token kept."""
    cap = (probs * mask.unsqueeze(1)).sum(-1)  # [Hk, G]
    a["mass"] += float(cap.sum())
    a["n"] += cap.numel()
    a["lt90"] += int((cap < 0.9).sum())
    for h in range(mask.shape[0]):
        if not strong[h]:
            continue
        sel_n = mask[h, needle]
        a["nd_mass"] += float((probs[h][:, needle] * sel_n).sum())
        a["nd_tot"] += float(probs[h][:, needle].sum())
        a["nd_tok"] += float(sel_n.float().mean())
        a["nd_top"] += float(mask[h, top_needle[h]])
        a["nd_n"] += 1


def selected_mask(pos: torch.Tensor, length: int, name: str) -> torch.Tensor:
    """Positions [Hk, K] (-1 unused) -> [Hk, length] bool; a selection must not repeat a position."""
    mask = torch.zeros(pos.shape[0], length, dtype=torch.bool)
    for h in range(pos.shape[0]):
        p = pos[h][pos[h] >= 0]
        assert p.unique().numel() == p.numel(), (name, "duplicate positions")
        mask[h, p] = True
    return mask
