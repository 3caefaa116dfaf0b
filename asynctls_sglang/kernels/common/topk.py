"""select_blocks / select_tokens: fixed-k top-k with the documented tie-break."""
from __future__ import annotations

import torch

from asynctls_sglang import env
from asynctls_sglang.kernels.common.launch import check, check_out, pow2, sm_count
from asynctls_sglang.kernels.common.topk_kernel import topk_kernel, topk_resident_kernel

#: k is sorted in registers: larger budgets would spill (and the config never asks for them).
MAX_K = 8192
#: Rows up to this length are held in registers by one program (topk_resident_kernel); longer
#: rows are streamed from memory once per radix pass (topk_kernel). The resident kernel packs
#: two counts of at most N into one int32, so N <= 2^14.
RESIDENT_MAX_N = 16384
METHODS = ("auto", "resident", "stream")
#: radix -> bits a pass resolves with one scalar sum ("bitpair": two, from three counts packed in
#: one int64 sum, half the passes of "bitwise"); 0: tl.histogram passes of `bits`-bit digits.
RADIX_SUM_BITS = {"histogram": 0, "bitwise": 1, "bitpair": 2}
#: Launch parameters of the resident kernel: how a radix pass counts (RADIX_SUM_BITS), warps for
#: rows of up to 1024, 4096 and 16384 entries (block top-k at 128k: 2048 blocks; token top-k: 8192
#: candidates). The default won kernel_bench --sweep on the H200 (2026-11-29, session 11): token
#: top-k 23.3 against 26.3 us with the histogram at Qwen3-8B 128k x 8, 18.1 against 19.1 for
#: GLM-4.7-Flash; block top-k 15.0 against 17.1 at Qwen3-8B 128k x 32, within 0.5 us of the best
#: elsewhere. "bitpair" lost (session 12): token top-k 28.1 against 22.2 us at Qwen3-8B 128k x 8,
#: 21.6 against 17.9 for GLM-4.7-Flash; half the passes, but each sums an int64 of three packed
#: counts and resolves two bits with more compares, which costs more than the pass it saves.
#: compact (session 23; 0: off): with the one-bit radix, once at most min(compact, k) entries
#: still match the threshold's prefix they are written to out's row and the remaining passes run
#: over those alone. Session 24 timed it on the H200 with no gain (block top-k within 0.5 us,
#: token top-k within 1.1 us either way), so the passes over the whole row are not where the
#: top-k's time goes; it stays off, a --sweep alternative.
#: Rows by batch (session 25): with at least `wide_rows_per_sm` rows per SM (one program per
#: row), rows of 4097-16384 entries take `wide_warps_16k` warps instead of warps_16k. H200 sweep,
#: token top-k (8192 candidates), Qwen3-8B 128k, batch 8-48 (64-384 rows on 132 SMs): 8 warps won
#: by 3.1-3.7 us up to 128 rows, 4 warps by 1.2-3.1 us from 160 rows (40.4 against 43.5 us at 256).
LAUNCH = {"radix": "bitwise", "bits": 6, "warps_1k": 4, "warps_4k": 4, "warps_16k": 8, "compact": 0,
          "wide_rows_per_sm": 1.0, "wide_warps_16k": 4}
#: The alternatives kernel_bench --sweep times (each tested on the CPU, compiled for sm_90); the
#: first is the session-10 default.
SWEEP = ({"radix": "histogram", "warps_4k": 8, "warps_16k": 16}, {"radix": "histogram"},
         {"radix": "histogram", "bits": 4, "warps_4k": 8, "warps_16k": 16},
         {"radix": "histogram", "bits": 8, "warps_4k": 8, "warps_16k": 32},
         {"warps_4k": 8, "warps_16k": 16}, {"warps_4k": 2, "warps_16k": 4}, {"warps_16k": 16},
         {"radix": "bitpair"}, {"radix": "bitpair", "warps_4k": 8, "warps_16k": 16}, {"compact": 256},
         {"compact": 128},
         # the rows rule off (8 warps at every batch: the default before session 25), and 4 at every batch
         {"wide_warps_16k": 8}, {"wide_rows_per_sm": 0.0})


def topk_indices(scores: torch.Tensor, k: int, pos: torch.Tensor | None = None, *,
                 out: torch.Tensor | None = None, ordered: bool = True,
                 method: str = "auto") -> torch.Tensor:
    """[..., N] fp32 -> [..., k] int64: indices (or pos[..., index]) of the k largest scores.

    Order: higher score first, equal scores by lower index; -inf entries are never chosen and
    slots past the number of finite scores hold -1 (k may exceed N). scores and pos need a
    unit last stride and rows that flatten to one stride. Bit-exact with
    reference.topk_indices for the same scores. ``ordered=False``: the same set, in index
    order instead of rank order (skips the ranking).

    ``method``: "resident" (the row in registers, read once; N <= RESIDENT_MAX_N), "stream"
    (the row re-read by each of 5 passes; any N), "auto" (resident when it fits). One launch,
    one program per row, no workspace: ``out`` is the only buffer (and the scratch of the
    ordered variants), so a call with ``out=`` allocates nothing.
    """
    if method == "auto":
        method = env.topk_method()  # "auto" unless ASYNCTLS_TOPK_METHOD says otherwise
    n = scores.shape[-1]
    lead = scores.shape[:-1]
    check(scores.dtype == torch.float32, f"scores must be fp32, got {scores.dtype}")
    check(0 < k <= MAX_K, f"k must be in 1..{MAX_K}, got {k}")
    check(n < 2 ** 31, "rows of at most 2^31 - 1 entries")
    check(method in METHODS, f"method must be one of {METHODS}, got {method!r}")
    check(method != "resident" or n <= RESIDENT_MAX_N, f"method='resident' needs N <= {RESIDENT_MAX_N}, got {n}")
    rows2d = scores.reshape(-1, n)
    check(rows2d.stride(1) == 1 or n == 1, "scores need a unit last stride")
    out = check_out(out, (*lead, k), torch.int64, scores.device, "topk")
    out2d = out.view(-1, k)
    rows = rows2d.shape[0]
    if pos is not None:
        check(pos.shape == scores.shape and pos.dtype == torch.int64, "pos must match scores, int64")
        pos2d = pos.reshape(-1, n)
        check(pos2d.stride(1) == 1 or n == 1, "pos needs a unit last stride")
    if rows == 0:
        return out
    if n == 0:
        return out.fill_(-1)
    block_k = pow2(k, 16)
    args = (rows2d, pos2d if pos is not None else rows2d, out2d, n, k,
            rows2d.stride(0), pos2d.stride(0) if pos is not None else 0, out2d.stride(0))
    if method == "stream" or n > RESIDENT_MAX_N:
        topk_kernel[(rows,)](
            *args, HAS_POS=pos is not None, BLOCK_N=min(pow2(n, 256), 2048), BLOCK_K=block_k,
            SORTED=ordered, num_warps=8 if block_k >= 1024 else 4)
        return out
    block_n = pow2(n, 128)
    topk_resident_kernel[(rows,)](
        *args, HAS_POS=pos is not None, BLOCK_N=block_n, BLOCK_K=block_k, SORTED=ordered,
        PRELOAD_POS=block_n <= 8192, **resident_launch(block_n, rows, scores.device))
    return out


def resident_launch(block_n: int, rows: int, device: torch.device) -> dict:
    """LAUNCH as the register-resident selection's constexprs and warps for `rows` rows (one
    program each) of block_n entries on `device` (topk_resident_kernel, the token top-k fused into
    token scoring, the offload tables' pair top-k)."""
    cfg = LAUNCH
    check(cfg["compact"] == 0 or (cfg["radix"] == "bitwise" and cfg["compact"] == pow2(cfg["compact"], 16)),
          f"compact needs the bitwise radix and a power of two >= 16, got {cfg['compact']} with {cfg['radix']!r}")
    if block_n <= 1024:
        warps = cfg["warps_1k"]
    elif block_n <= 4096:
        warps = cfg["warps_4k"]
    else:
        wide = rows >= cfg["wide_rows_per_sm"] * sm_count(device)
        warps = cfg["wide_warps_16k"] if wide else cfg["warps_16k"]
    return dict(BITS=cfg["bits"], SUM_BITS=RADIX_SUM_BITS[cfg["radix"]], COMPACT=cfg["compact"], num_warps=warps)


def select_blocks(scores: torch.Tensor, k: int, *, out: torch.Tensor | None = None,
                  method: str = "auto") -> torch.Tensor:
    """[bs, Hk, MB] fp32 -> [bs, Hk, k] block ids in rank order, -1 unused."""
    return topk_indices(scores, k, out=out, method=method)


def select_tokens(scores: torch.Tensor, pos: torch.Tensor, k: int, *,
                  out: torch.Tensor | None = None, ordered: bool = False,
                  method: str = "auto") -> torch.Tensor:
    """[bs, Hk, N] fp32 candidate scores, [bs, Hk, N] int64 positions -> [bs, Hk, k] positions,
    -1 unused: the same set as torch_ops.select_tokens (ties: the earlier candidate slot). By
    default in candidate order, not rank order (attention does not depend on the order; the
    sort would be most of the cost); ``ordered=True`` gives torch_ops' exact order."""
    return topk_indices(scores, k, pos, out=out, ordered=ordered, method=method)
