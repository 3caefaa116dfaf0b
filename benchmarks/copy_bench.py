"""Host->device block gather: how close each way of moving the offload engine's plan gets to
PCIe (H200 measured 55 GB/s for a pinned memcpy). One plan = P entries (host block, KV head) ->
(resident block, head), K and V, as TransferEngine.issue copies them.

Ways, each timed with CUDA events (median of --reps launches):
- engine:   asynctls_sglang's copy_blocks as the engine calls it (before 2026-11-29 evening: K then
            V, one program per entry; now K and V in one launch, 32 programs walking the plan)
- fused:    one launch copies K and V of an entry (ROWS rows per program, NW warps)
- headmaj:  the same from a host tier laid out [blocks, Hk, B, D] (a head's block is one
            contiguous 16 KB range instead of B rows 2 KB apart)
- memcpy:   a pinned, contiguous host tensor of the same bytes, .to(device) (the DMA engine)
and `fused` on a side stream while a bf16 GEMM loop runs on the default stream (how much the
copy slows compute, and compute the copy). Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch
import triton
import triton.language as tl


@triton.jit
def _gather(src_k, dst_k, src_v, dst_v, src_block, dst_block, head, count,
            s_src, s_dst, HK: tl.constexpr, B: tl.constexpr, W: tl.constexpr, ROWS: tl.constexpr,
            HEAD_MAJOR: tl.constexpr):
    i_m = tl.program_id(0)
    i_r = tl.program_id(1)
    b_n = tl.load(count)
    b_src = tl.load(src_block + i_m).to(tl.int64)
    b_dst = tl.load(dst_block + i_m).to(tl.int64)
    h = tl.load(head + i_m).to(tl.int64)
    on = (i_m < b_n) & (b_src >= 0) & (b_dst >= 0)
    o_t = i_r * ROWS + tl.arange(0, ROWS)
    o_w = tl.arange(0, W)
    if HEAD_MAJOR:
        p_src = ((b_src * HK + h) * B + o_t)[:, None] * W + o_w[None, :]
    else:
        p_src = (b_src * B + o_t)[:, None] * s_src + h * W + o_w[None, :]
    p_dst = (b_dst * B + o_t)[:, None] * s_dst + h * W + o_w[None, :]
    m = on & (o_t[:, None] >= 0)
    tl.store(dst_k + p_dst, tl.load(src_k + p_src, mask=m), mask=m)
    tl.store(dst_v + p_dst, tl.load(src_v + p_src, mask=m), mask=m)


@triton.jit
def _gather_persistent(src_k, dst_k, src_v, dst_v, src_block, dst_block, head, count, P,
                       s_src, s_dst, HK: tl.constexpr, B: tl.constexpr, W: tl.constexpr, G: tl.constexpr,
                       HEAD_MAJOR: tl.constexpr):
    """G programs; program g copies entries g, g + G, ... < min(count[0], P) (whole B-row tiles)."""
    b_n = tl.load(count)
    o_t = tl.arange(0, B)
    o_w = tl.arange(0, W)
    for i_m in range(tl.program_id(0), P, G):  # NOTE: compiled only (the interpreter refuses this range)
        live = (i_m < b_n) & (i_m < P)
        b_src = tl.load(src_block + i_m, mask=live, other=-1).to(tl.int64)
        b_dst = tl.load(dst_block + i_m, mask=live, other=-1).to(tl.int64)
        h = tl.load(head + i_m, mask=live, other=0).to(tl.int64)
        if HEAD_MAJOR:
            p_src = ((b_src * HK + h) * B + o_t)[:, None] * W + o_w[None, :]
        else:
            p_src = (b_src * B + o_t)[:, None] * s_src + h * W + o_w[None, :]
        p_dst = (b_dst * B + o_t)[:, None] * s_dst + h * W + o_w[None, :]
        m = (b_src >= 0) & (b_dst >= 0) & (o_t[:, None] >= 0)
        tl.store(dst_k + p_dst, tl.load(src_k + p_src, mask=m), mask=m)
        tl.store(dst_v + p_dst, tl.load(src_v + p_src, mask=m), mask=m)


def _median_ms(fn, reps: int, stream=None) -> float:
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(stream)
        fn()
        e.record(stream)
        e.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host-blocks", type=int, default=8192)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--entries", default="400,2000,8000", help="plan entries per launch")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--out", default="copy_bench.json")
    args = ap.parse_args(argv)
    from asynctls_sglang.memory.block_copy import copy_blocks

    dev = torch.device("cuda")
    hk, d, b, nb = args.kv_heads, args.head_dim, args.block_size, args.host_blocks
    g = torch.Generator().manual_seed(0)
    host = [torch.empty(nb * b, hk, d, dtype=torch.bfloat16).pin_memory() for _ in range(2)]
    for t in host:
        t.view(torch.int16).random_(generator=g)
    host_hm = [t.view(nb, b, hk, d).transpose(1, 2).contiguous().pin_memory() for t in host]
    entries = [int(x) for x in args.entries.split(",")]
    dst_blocks = max(entries)
    dev_buf = [torch.zeros(dst_blocks * b, hk, d, dtype=torch.bfloat16, device=dev) for _ in range(2)]
    entry_bytes = 2 * b * d * 2
    rows = []
    gemm_a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)

    def gemm():
        for _ in range(4):
            gemm_a @ gemm_a

    gemm_alone = _median_ms(gemm, args.reps)
    side = torch.cuda.Stream()
    for n in entries:
        pick = torch.randperm(nb * hk, generator=g)[:n]
        src = (pick // hk).to(dev)
        hd = (pick % hk).to(dev)
        dst = torch.arange(n, device=dev)  # distinct (block, head) destinations: block n, head hd
        count = torch.tensor([n], device=dev)
        nbytes = n * entry_bytes

        def engine():
            copy_blocks(host[0], dev_buf[0], src, dst, count, b, hd, pair=(host[1], dev_buf[1]))

        def fused(rows_=64, nw=4, hm=False):
            k, v = (t.view(torch.int16) for t in (host_hm if hm else host))  # raw bits (NaN patterns too)
            _gather[(n, b // rows_)](k, dev_buf[0].view(torch.int16), v, dev_buf[1].view(torch.int16), src, dst, hd, count,
                                     hk * d, hk * d, HK=hk, B=b, W=d, ROWS=rows_, HEAD_MAJOR=hm, num_warps=nw)

        def persistent(g_=32, nw=4, hm=False):
            k, v = (t.view(torch.int16) for t in (host_hm if hm else host))
            _gather_persistent[(g_,)](k, dev_buf[0].view(torch.int16), v, dev_buf[1].view(torch.int16), src, dst, hd,
                                      count, n, hk * d, hk * d, HK=hk, B=b, W=d, G=g_, HEAD_MAJOR=hm, num_warps=nw)

        flat = torch.empty(nbytes // 2, dtype=torch.int16).pin_memory()

        def memcpy():
            flat.to(dev, non_blocking=True)

        ways = {"engine": engine, "memcpy": memcpy}
        for r_ in (64, 16):
            for nw in (4, 8):
                ways[f"fused r{r_} w{nw}"] = lambda r_=r_, nw=nw: fused(r_, nw)
        ways["headmaj r64 w4"] = lambda: fused(64, 4, True)
        ways["headmaj r16 w4"] = lambda: fused(16, 4, True)
        for g_ in (8, 16, 32, 64, 132, 264):
            ways[f"persist g{g_} w4"] = lambda g_=g_: persistent(g_, 4)
        ways["persist g32 w8"] = lambda: persistent(32, 8)
        ways["persist-hm g32 w4"] = lambda: persistent(32, 4, True)
        # correctness of the fused ways against the engine's copy (from zeroed buffers: an earlier
        # plan size left its blocks there)
        for t in dev_buf:
            t.zero_()
        engine()
        ref = [t.clone() for t in dev_buf]
        for name in ("fused r16 w4", "headmaj r64 w4", "persist g32 w4", "persist-hm g32 w4"):
            for t in dev_buf:
                t.zero_()
            ways[name]()
            torch.cuda.synchronize()
            # raw bits: random bf16 bit patterns include NaNs, which torch.equal on floats rejects
            assert all(torch.equal(a.view(torch.int16), r.view(torch.int16)) for a, r in zip(dev_buf, ref)), name
        timed = {}
        for name, fn in ways.items():
            fn()
            ms = _median_ms(fn, args.reps)
            timed[name] = ms
            rows.append({"entries": n, "way": name, "ms": round(ms, 4), "MB": round(nbytes / 1e6, 2),
                         "GB_s": round(nbytes / ms / 1e6, 1)})
            print(json.dumps(rows[-1]), flush=True)
        # overlap: each way on a side stream under a GEMM loop on the default stream
        for name in ("engine", "fused r16 w4", "persist g16 w4", "persist g32 w4", "persist g132 w4"):
            torch.cuda.synchronize()
            s0, e0 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s1, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            reps = max(1, int(gemm_alone / max(timed[name], 1e-3)))  # copies to cover the GEMM loop
            s0.record()
            gemm()
            e0.record()
            with torch.cuda.stream(side):
                s1.record(side)
                for _ in range(reps):
                    ways[name]()
                e1.record(side)
            torch.cuda.synchronize()
            copy_ms = s1.elapsed_time(e1)
            rows.append({"entries": n, "way": f"{name} x{reps} under GEMM", "ms": round(copy_ms, 4),
                         "MB": round(reps * nbytes / 1e6, 2), "GB_s": round(reps * nbytes / copy_ms / 1e6, 1),
                         "gemm_ms": round(s0.elapsed_time(e0), 3), "gemm_alone_ms": round(gemm_alone, 3)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'entries':>7} {'way':<32} {'ms':>8} {'MB':>8} {'GB/s':>7}")
    for r in rows:
        extra = f"  gemm {r['gemm_ms']} ms (alone {r['gemm_alone_ms']})" if "gemm_ms" in r else ""
        print(f"{r['entries']:>7} {r['way']:<32} {r['ms']:>8.3f} {r['MB']:>8.1f} {r['GB_s']:>7.1f}{extra}")
    json.dump({"args": vars(args), "device": torch.cuda.get_device_name(), "rows": rows}, open(args.out, "w"), indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
