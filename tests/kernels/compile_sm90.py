"""Compile every Triton kernel of asynctls_sglang.kernels for a real GPU target, on any machine.

The Triton interpreter (TRITON_INTERPRET=1, what the kernel tests use without a GPU) accepts
code that the compiler rejects (e.g. a constexpr reassigned in a static_range loop) or lowers
differently. Triton's whole compiler (AST -> TTIR -> TTGIR -> LLVM IR -> PTX -> cubin with the
bundled ptxas) runs on the host and needs no GPU: only the launch does. This script installs a
stand-in driver that reports an sm_90 (H200) target, turns every launch into a compile-only
warmup, and calls each kernel *wrapper* (so the signatures, constexprs and integer/pointer
specialisations are the ones the wrappers really pass) with CPU tensors at the test shapes and
the real model shapes.

Run it without TRITON_INTERPRET in the environment (tests/kernels/test_compile_ttir.py runs it
in a subprocess):  python tests/kernels/compile_sm90.py [--arch 90] [--stage ttir|cubin]
Prints one line per compiled variant and exits 1 if any failed.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("compile_sm90.py: unset TRITON_INTERPRET (the kernels must be @triton.jit JITFunctions)")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver as _driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402


class _HostOnlyDriver:
    """Enough of a driver for JITFunction.run to specialise and compile (never to launch)."""

    def __init__(self, target: GPUTarget) -> None:
        self.target = target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


COMPILED: list[str] = []


def _install(arch: int, stage: str) -> None:
    _driver.set_active(_HostOnlyDriver(GPUTarget("cuda", arch, 32)))
    run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        COMPILED.append(f"{self.fn.__name__}: {stage}")
        return kernel

    JITFunction.run = compile_only
    if stage == "ttir":
        # stop after the frontend + TTIR passes (fast; catches every code_generator error)
        from triton import knobs
        from triton.backends.nvidia.compiler import CUDABackend

        # the cache key does not cover the stages: keep these truncated results apart
        knobs.cache.dir = os.path.join(knobs.cache.dir, "ttir-only")

        add_stages = CUDABackend.add_stages

        def ttir_only(self, stages, options, language):
            add_stages(self, stages, options, language)
            make_ttir = stages["ttir"]

            def ttir(src, metadata):
                mod = make_ttir(src, metadata)
                # what CompiledKernel reads; the later stages would set these
                metadata.update(shared=0, name=src.get_entry_func_name() if hasattr(src, "get_entry_func_name")
                                else "kernel")
                return mod

            stages.clear()
            stages["ttir"] = ttir
            # CompiledKernel wants a binary: hand it the TTIR text
            stages["cubin"] = lambda src, metadata: str(src).encode()

        CUDABackend.add_stages = ttir_only


def _pool(lens: list[int], b: int, mb: int | None = None):
    """req_to_token [rows, ctx] int32, req_pool_indices [bs], seq_lens [bs], pages [bs, MB]."""
    bs = len(lens)
    mb = mb or max(-(-n // b) for n in lens)
    ctx = mb * b
    req_to_token = torch.arange((bs + 1) * ctx, dtype=torch.int32).view(bs + 1, ctx)
    return (req_to_token, torch.arange(1, bs + 1), torch.tensor(lens),
            torch.arange(bs * mb).view(bs, mb))


def cases():
    """(name, thunk) for each wrapper configuration; small test shapes and real model shapes.
    Tensors are torch.empty: only their dtype, shape, strides and alignment matter."""
    from asynctls_sglang.kernels import triton_ops
    from asynctls_sglang.kernels.common.gather_host import copy_blocks

    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    out = []

    # update_block_summaries (one launch up to SCAN_MAX_T tokens, else three); t = 1 (decode) and a prefill
    for dt in dtypes:
        for t, hk, d, b in ((1, 8, 128, 64), (37, 2, 96, 16), (4096, 8, 128, 64), (4, 1, 576, 64)):
            def f(t=t, hk=hk, d=d, b=b, dt=dt):
                pages = 4 * (t // b + 2)
                kmin = torch.empty(pages, hk, d, dtype=dt)
                triton_ops.update_block_summaries(kmin, torch.empty_like(kmin), torch.empty(pages, dtype=torch.int32),
                                                  torch.arange(t), torch.empty(t, hk, d, dtype=dt), b)
            out.append((f"summaries t{t} hk{hk} d{d} b{b} {dt}", f))

            def g(t=t, hk=hk, d=d, b=b, dt=dt):  # with the index keys in the same launch (the backend's call)
                pages, r = 4 * (t // b + 2), min(32, d // 2 * 2)
                kmin = torch.empty(pages, hk, d, dtype=dt)
                index = (torch.empty(pages * b, hk, r // 2, dtype=torch.uint8), torch.empty(pages * b, hk, 2),
                         torch.zeros(hk, r, dtype=torch.int64))
                triton_ops.update_block_summaries(kmin, torch.empty_like(kmin), torch.empty(pages, dtype=torch.int32),
                                                  torch.arange(t), torch.empty(t, hk, d, dtype=dt), b, index=index)
            out.append((f"summaries+index t{t} hk{hk} d{d} b{b} {dt}", g))
    # write_index_keys
    for dt in dtypes:
        for t, hk, d, r in ((1, 8, 128, 32), (13, 3, 96, 22), (4, 2, 64, 2), (3, 1, 576, 128)):
            def f(t=t, hk=hk, d=d, r=r, dt=dt):
                ch = torch.stack([torch.arange(r) for _ in range(hk)])
                triton_ops.write_index_keys(torch.empty(t + 5, hk, r // 2, dtype=torch.uint8),
                                            torch.empty(t + 5, hk, 2), torch.arange(t),
                                            torch.empty(t, hk, d, dtype=dt), ch)
            out.append((f"index_keys t{t} hk{hk} d{d} r{r} {dt}", f))
    # score_blocks
    for dt in dtypes:
        for lens, hq, hk, d, b in (([150, 61], 8, 2, 64, 16), ([131072] * 2, 32, 8, 128, 64),
                                   ([4096], 20, 1, 576, 64), ([300], 9, 3, 96, 16)):
            def f(lens=lens, hq=hq, hk=hk, d=d, b=b, dt=dt):
                r2t, rows, sl, pages = _pool(lens, b)
                n_pages = pages.numel()
                km = torch.empty(n_pages, hk, d, dtype=dt)
                triton_ops.score_blocks(torch.empty(len(lens), hq, d, dtype=dt), km, torch.empty_like(km), pages, sl,
                                        b, 4, 64)
                triton_ops.score_blocks(torch.empty(len(lens), hq, d, dtype=dt), km, torch.empty_like(km), pages, sl,
                                        b, 4, 64, partials=True)
            out.append((f"score_blocks {lens[0]}x{len(lens)} hq{hq} hk{hk} d{d} {dt}", f))
    # score_tokens: heads max by the tl.dot of all heads and by the per-head loop, heads mean
    for dt in dtypes:
        for lens, hq, hk, d, r, n in (([150, 61], 8, 2, 64, 16, 96), ([131072] * 2, 32, 8, 128, 32, 8192),
                                      ([131072] * 2, 20, 1, 576, 128, 8192), ([300], 9, 3, 96, 22, 50),
                                      ([70], 4, 4, 64, 16, 40)):
            for heads, method in (("max", "dot"), ("max", "loop"), ("mean", "auto")):
                def f(lens=lens, hq=hq, hk=hk, d=d, r=r, n=n, dt=dt, heads=heads, method=method):
                    r2t, rows, sl, _ = _pool(lens, 64)
                    bs, slots = len(lens), r2t.numel()
                    triton_ops.score_tokens(torch.empty(bs, hq, d, dtype=dt),
                                            torch.empty(slots, hk, r // 2, dtype=torch.uint8),
                                            torch.empty(slots, hk, 2), torch.stack([torch.arange(r) for _ in range(hk)]),
                                            r2t, rows, torch.empty(bs, hk, n, dtype=torch.int64),
                                            torch.empty(bs, hk, n, dtype=torch.bool), heads=heads, method=method)
                out.append((f"score_tokens {heads}/{method} hq{hq} hk{hk} d{d} r{r} n{n} {dt}", f))

                def g(lens=lens, hq=hq, hk=hk, d=d, r=r, n=n, dt=dt, heads=heads, method=method):
                    r2t, rows, sl, _ = _pool(lens, 64)
                    bs, slots, kb = len(lens), r2t.numel(), -(-n // 64)
                    triton_ops.score_block_tokens(torch.empty(bs, hq, d, dtype=dt),
                                                  torch.empty(slots, hk, r // 2, dtype=torch.uint8),
                                                  torch.empty(slots, hk, 2), torch.stack([torch.arange(r) for _ in range(hk)]),
                                                  r2t, rows, torch.empty(bs, hk, kb, dtype=torch.int64), sl, 64, 16, 64,
                                                  heads=heads, method=method)
                out.append((f"score_block_tokens {heads}/{method} hq{hq} hk{hk} d{d} r{r} kb{-(-n // 64)} {dt}", g))
    # score_select_block_tokens fused (token scoring + top-k in one program), every chunk size
    from asynctls_sglang.kernels.common import token_select
    from asynctls_sglang.kernels.common.launch import launch_overrides
    from asynctls_sglang.kernels.gqa import decode as gqa_decode
    from asynctls_sglang.kernels.mla import decode as mla_decode

    for lens, hq, hk, d, r, kb, k, dt in (([131072] * 2, 32, 8, 128, 32, 128, 1968, torch.bfloat16),
                                           ([131072] * 2, 20, 1, 576, 128, 128, 1968, torch.bfloat16),
                                           ([131072] * 2, 32, 8, 128, 32, 128, 432, torch.bfloat16),
                                           ([300], 8, 2, 64, 16, 5, 40, torch.float32)):
        for overrides in token_select.SWEEP:
            def f(lens=lens, hq=hq, hk=hk, d=d, r=r, kb=kb, k=k, dt=dt, overrides=overrides):
                r2t, rows, sl, _ = _pool(lens, 64)
                bs, slots = len(lens), r2t.numel()
                with launch_overrides(token_select.LAUNCH, overrides):
                    triton_ops.score_select_block_tokens(
                        torch.empty(bs, hq, d, dtype=dt), torch.empty(slots, hk, r // 2, dtype=torch.uint8),
                        torch.empty(slots, hk, 2), torch.stack([torch.arange(r) for _ in range(hk)]), r2t, rows,
                        torch.empty(bs, hk, kb, dtype=torch.int64), sl, 64, 16, 64, k)
            out.append((f"token_select {overrides} hq{hq} hk{hk} d{d} r{r} kb{kb} k{k} {dt}", f))
    # candidate_positions
    for bs, hk, kb, b in ((3, 2, 5, 8), (8, 8, 128, 64), (2, 1, 128, 64), (1, 3, 7, 16)):
        def f(bs=bs, hk=hk, kb=kb, b=b):
            triton_ops.candidate_positions(torch.empty(bs, hk, kb, dtype=torch.int64), torch.empty(bs, dtype=torch.int64),
                                           b, 16, 64)
        out.append((f"candidates bs{bs} hk{hk} kb{kb} b{b}", f))
    # top-k (blocks: no pos; tokens: pos, unordered and ordered) by both methods, truncate
    for rows, n, k in ((6, 50, 7), (2, 2500, 300), (256, 2048, 128), (32, 8192, 1968), (1, 100000, 128),
                       (2, 20, 32), (1, 1, 1), (4, 16384, 128), (2, 12000, 1968)):
        for method in ("auto", "stream"):
            def f(rows=rows, n=n, k=k, method=method):
                s = torch.empty(rows, 1, n)
                p = torch.empty(rows, 1, n, dtype=torch.int64)
                triton_ops.select_blocks(s, k, method=method)
                triton_ops.select_tokens(s, p, k, method=method)
                triton_ops.select_tokens(s, p, k, ordered=True, method=method)
                if method == "auto":
                    triton_ops.truncate_candidates(p, torch.empty(rows, 1, n, dtype=torch.bool), k)
            out.append((f"topk/truncate rows{rows} n{n} k{k} {method}", f))
    # sparse decode attention: GQA and MLA (+ merge)
    for dt in dtypes:
        for lens, hq, hk, d, dv, kk, cap in (([50, 130], 4, 4, 64, 64, 40, 0.0), ([200, 7, 61], 9, 3, 96, 96, 80, 0.0),
                                             ([97, 150], 8, 1, 128, 128, 100, 30.0), ([64], 4, 2, 64, 32, 70, 0.0),
                                             ([131072] * 4, 32, 8, 128, 128, 2048, 0.0),
                                             ([32768] * 32, 32, 8, 128, 128, 512, 0.0)):
            def f(lens=lens, hq=hq, hk=hk, d=d, dv=dv, kk=kk, cap=cap, dt=dt):
                r2t, rows, _, _ = _pool(lens, 64)
                bs, slots = len(lens), r2t.numel()
                triton_ops.sparse_decode_attention(torch.empty(bs, hq, d, dtype=dt),
                                                   torch.empty(slots, hk, d, dtype=dt),
                                                   torch.empty(slots, hk, dv, dtype=dt), r2t, rows,
                                                   torch.empty(bs, hk, kk, dtype=torch.int64), 0.1, cap)
            out.append((f"gqa_decode {lens[0]}x{len(lens)} hq{hq} hk{hk} d{d} dv{dv} k{kk} cap{cap} {dt}", f))
        for lens, hq, kk, cap in (([90, 40], 20, 64, 0.0), ([130], 5, 150, 20.0), ([131072] * 2, 128, 2048, 0.0),
                                  ([65536] * 8, 20, 2048, 0.0)):
            def f(lens=lens, hq=hq, kk=kk, cap=cap, dt=dt):
                r2t, rows, _, _ = _pool(lens, 64)
                bs, slots = len(lens), r2t.numel()
                kv = torch.empty(slots, 1, 576, dtype=dt)
                triton_ops.sparse_decode_attention(torch.empty(bs, hq, 576, dtype=dt), kv, kv[..., :512], r2t, rows,
                                                   torch.empty(bs, 1, kk, dtype=torch.int64), 0.1, cap)
            out.append((f"mla_decode {lens[0]}x{len(lens)} hq{hq} k{kk} cap{cap} {dt}", f))

        def counted(dt=dt):  # per-row column counts (the CUDA-graph path: dense rows padded past K), out in q's dtype
            r2t, rows, _, _ = _pool([131072] * 8, 64)
            slots, counts = r2t.numel(), torch.empty(8, dtype=torch.int64)
            triton_ops.sparse_decode_attention(
                torch.empty(8, 32, 128, dtype=dt), torch.empty(slots, 8, 128, dtype=dt),
                torch.empty(slots, 8, 128, dtype=dt), r2t, rows, torch.empty(8, 8, 8192, dtype=torch.int64),
                0.1, counts=counts, active=2048, out_dtype=dt)
            kv = torch.empty(slots, 1, 576, dtype=dt)
            triton_ops.sparse_decode_attention(torch.empty(8, 20, 576, dtype=dt), kv, kv[..., :512], r2t, rows,
                                               torch.empty(8, 1, 8192, dtype=torch.int64), 0.1, counts=counts,
                                               active=2048, out_dtype=dt)
        out.append((f"gqa+mla_decode with counts 131072x8, out {dt}", counted))

        def with_pool(dt=dt):  # the offload path: window rows read in place from the device pool
            r2t, rows, _, _ = _pool([131072] * 8, 64)
            slots, counts = r2t.numel(), torch.empty(8, dtype=torch.int64)
            k, v = torch.empty(slots, 8, 128, dtype=dt), torch.empty(slots, 8, 128, dtype=dt)
            for prefetch in (False, True):
                with launch_overrides(gqa_decode.LAUNCH, {"prefetch": prefetch}):
                    triton_ops.sparse_decode_attention(
                        torch.empty(8, 32, 128, dtype=dt), k, v, r2t, rows, torch.empty(8, 8, 2048, dtype=torch.int64),
                        0.1, counts=counts, active=2048, out_dtype=dt, pool=(torch.empty_like(k), torch.empty_like(v)))
                kv, kv_pool = torch.empty(slots, 1, 576, dtype=dt), torch.empty(slots, 1, 576, dtype=dt)
                with launch_overrides(mla_decode.LAUNCH, {"prefetch": prefetch}):
                    triton_ops.sparse_decode_attention(
                        torch.empty(8, 20, 576, dtype=dt), kv, kv[..., :512], r2t, rows,
                        torch.empty(8, 1, 2048, dtype=torch.int64), 0.1, counts=counts, active=2048, out_dtype=dt,
                        pool=(kv_pool, kv_pool[..., :512]))
        out.append((f"gqa+mla_decode with the pool 131072x8, out {dt}", with_pool))
    # copy_blocks (offload gather / write-through), per head and whole blocks
    for dt in (torch.bfloat16, torch.float32, torch.float16):
        for b, hk, d, per_head in ((64, 8, 128, True), (64, 8, 128, False), (64, 1, 576, False), (16, 2, 64, True)):
            def f(b=b, hk=hk, d=d, per_head=per_head, dt=dt):
                src = torch.empty(8 * b, hk, d, dtype=dt)
                blocks = torch.empty(33, dtype=torch.int64)
                copy_blocks(src, torch.empty_like(src), blocks, blocks.clone(), torch.zeros(1, dtype=torch.int64), b,
                            blocks.clone() if per_head else None)
            out.append((f"copy_blocks b{b} hk{hk} d{d} per_head={per_head} {dt}", f))

    def directions():
        """The host->GPU and GPU->host kernels (one body, their own names; here every tensor is on
        the CPU, so the wrapper would pick the within-device one): launched through the wrapper."""
        from asynctls_sglang.kernels.common import gather_host, gather_host_kernel

        within = gather_host.copy_blocks_kernel
        try:
            for kernel in (gather_host_kernel.copy_blocks_h2d_kernel, gather_host_kernel.copy_blocks_d2h_kernel):
                gather_host.copy_blocks_kernel = kernel
                src, blocks = torch.empty(8 * 64, 8, 128, dtype=torch.bfloat16), torch.empty(33, dtype=torch.int64)
                copy_blocks(src, torch.empty_like(src), blocks, blocks.clone(), torch.zeros(1, dtype=torch.int64), 64,
                            pair=(src, torch.empty_like(src)))
        finally:
            gather_host.copy_blocks_kernel = within
    out.append(("copy_blocks h2d / d2h names", directions))
    # the offload engine's table reads (Qwen3-8B at 128k: 2048 blocks, 2048-token budget; MLA: 1 head)
    from asynctls_sglang.kernels.common.offload_tables import (buffer_table, count_late, decode_step_tables,
                                                               device_loc, readable_pair, readable_pair_topk)

    for hk, mb, k in ((8, 2048, 2048), (1, 2048, 2048), (2, 40, 37)):
        def tables(hk=hk, mb=mb, k=k):
            bs, blk2slot, rows = 8, torch.empty(17, hk, mb + 1, dtype=torch.int32), torch.empty(8, dtype=torch.int64)
            window, late = torch.empty(bs, 5, dtype=torch.int64), torch.zeros((), dtype=torch.int64)
            readable_pair(torch.empty(bs, hk, mb), blk2slot, rows, window)
            readable_pair(torch.empty(5, bs, hk, mb), blk2slot, rows, window)  # MLA's channel slices, added
            device_loc(torch.empty(bs, dtype=torch.int64), torch.empty(4096, dtype=torch.int32), 64)
            for b in (bs, 1):  # the pair ranked in the same launch (k_b 128; batch 1: an int 1 specialised)
                readable_pair_topk(torch.empty(5, b, hk, mb), 128, blk2slot, rows[:b], window[:b])
                readable_pair_topk(torch.empty(b, hk, mb), min(128, mb), blk2slot, rows[:b], window[:b])
            count_late(torch.empty(bs, hk, 128, dtype=torch.int64), blk2slot, rows, window,
                       torch.empty(bs, dtype=torch.bool), late)
            win_src = torch.empty(bs * 5, dtype=torch.int64)
            buffer_table(torch.empty(bs, hk, k, dtype=torch.int64), blk2slot, rows, window, win_src, late,
                         block_size=64, capacity=259)
            buffer_table(torch.empty(bs, hk, k, dtype=torch.int64), blk2slot, rows, window, win_src, late,
                         block_size=64, capacity=259, chosen=torch.empty(bs, hk, k // 2, dtype=torch.int64),
                         start=k // 4, dense=torch.empty(bs, dtype=torch.bool))
        out.append((f"offload tables hk{hk} mb{mb} k{k}", tables))

    def decode_stats():  # the statistics' update: GQA (8 heads) and MLA graphs, dense rows or none
        from asynctls_sglang.kernels.common.decode_stats import ACC_WORDS, record_decode_stats

        acc = torch.zeros(ACC_WORDS, dtype=torch.int64)
        for bs, hk in ((48, 8), (6, 1), (1, 8)):
            pos = torch.empty(bs, hk, 2112, dtype=torch.int64)
            record_decode_stats(pos, acc, torch.empty(bs, dtype=torch.bool))
            record_decode_stats(pos, acc)
    out.append(("decode stats", decode_stats))

    def step_tables():  # the per-step tables: GLM-4.7-Flash/Qwen3-8B graphs at 128k, a page map or none
        r2t = torch.empty(17, 131072, dtype=torch.int32)
        for page_map in (torch.empty(4096, dtype=torch.int32), None):
            for width in (0, 2048):  # the seeds' call, the decode's (with the attention's positions)
                for bs in (8, 1):  # batch 1: Triton specialises the int 1 (a constexpr in the kernel)
                    lens = torch.empty(bs, dtype=torch.int64)
                    decode_step_tables(r2t, torch.empty(bs, dtype=torch.int64), lens, page_map, max_blocks=2048,
                                       dense_blocks=32, block_size=64, sink_tokens=64, local_window=64,
                                       dense_len=2048, width=width, token_budget=2048)
        # one sink block (N_SINK 1), one dense block (an int 1 too)
        decode_step_tables(r2t, torch.empty(1, dtype=torch.int64), torch.empty(1, dtype=torch.int64), None,
                           max_blocks=40, dense_blocks=1, block_size=16, sink_tokens=4, local_window=1,
                           dense_len=16, width=64, token_budget=64)
    out.append(("offload decode-step tables", step_tables))
    # the resident cache's plan (Qwen3-8B at 128k: C 259, N 163; MLA: 1 head; a small one)
    from asynctls_sglang.kernels.common.residency_plan import plan_residency

    for bs, hk, c, n, mb, m in ((8, 8, 259, 163, 2048, 32), (8, 1, 259, 163, 2048, 32), (3, 2, 5, 7, 40, 2)):
        def plan(bs=bs, hk=hk, c=c, n=n, mb=mb, m=m):
            p = bs * hk * m
            i64 = lambda *s: torch.empty(*s, dtype=torch.int64)  # noqa: E731
            plan_residency(torch.empty(17, hk, mb + 1, dtype=torch.int32), i64(17, hk, c + 1), i64(17, hk, c + 1),
                           i64(1), i64(7), i64(bs), i64(bs, hk, n), i64(bs, mb), i64(bs), i64(p + 1), i64(p + 1),
                           i64(p + 1), i64(1), max_miss=m)
        out.append((f"plan_residency bs{bs} hk{hk} c{c} n{n}", plan))

        def fused(bs=bs, hk=hk, c=c, n=n, mb=mb, m=m):
            # the decode step's form: the pinned head (one row for all heads), the selection
            # (k_b 128), the late count and the clock's increment in the launch
            p, nf = bs * hk * m, max(n - 128, 1)
            i64 = lambda *s: torch.empty(*s, dtype=torch.int64)  # noqa: E731
            plan_residency(torch.empty(17, hk, mb + 1, dtype=torch.int32), i64(17, hk, c + 1), i64(17, hk, c + 1),
                           i64(1), i64(7), i64(bs), i64(bs, 1, nf).expand(-1, hk, -1), i64(bs, mb), i64(bs),
                           i64(p + 1), i64(p + 1), i64(p + 1), i64(1), max_miss=m, selected=i64(bs, hk, 128),
                           dense=torch.empty(bs, dtype=torch.bool), late=(i64(bs, 4), i64(1)), advance_clock=True)
        out.append((f"plan_residency fused bs{bs} hk{hk} c{c} n{n}", fused))
    out += _sweep_cases()
    return out


def _sweep_cases():
    """kernel_bench --sweep's alternatives at the benchmark's bf16 shapes (Qwen3-8B 128k x 8, GLM
    128k x 8): each must compile for the target, or the sweep would time an error."""
    from asynctls_sglang.kernels import triton_ops
    from asynctls_sglang.kernels.common import block_score, token_score, topk
    from asynctls_sglang.kernels.common.launch import launch_overrides
    from asynctls_sglang.kernels.gqa import decode as gqa_decode
    from asynctls_sglang.kernels.mla import decode as mla_decode

    dt = torch.bfloat16
    r2t, rows, sl, pages = _pool([131072] * 8, 64)
    slots = r2t.numel()
    k, kv = torch.empty(slots, 8, 128, dtype=dt), torch.empty(slots, 1, 576, dtype=dt)

    def gqa():
        triton_ops.sparse_decode_attention(torch.empty(8, 32, 128, dtype=dt), k, k, r2t, rows,
                                           torch.empty(8, 8, 2048, dtype=torch.int64), 0.1)

    def mla():
        triton_ops.sparse_decode_attention(torch.empty(8, 20, 576, dtype=dt), kv, kv[..., :512], r2t, rows,
                                           torch.empty(8, 1, 2048, dtype=torch.int64), 0.1)

    def ranked():  # block top-k (2048 blocks of 128k) and token top-k (8192 candidates), as the backend calls them
        triton_ops.select_blocks(torch.empty(8, 8, 2048), 128)
        triton_ops.select_tokens(torch.empty(8, 8, 8192), torch.empty(8, 8, 8192, dtype=torch.int64), 2048)

    def candidates():  # token scoring from the chosen blocks (128 of 64 tokens), Qwen3-8B and GLM shapes
        for hq, hk, r in ((32, 8, 32), (20, 1, 128)):
            codes = torch.empty(slots, hk, r // 2, dtype=torch.uint8)
            triton_ops.score_block_tokens(torch.empty(8, hq, 128 if hk > 1 else 576, dtype=dt), codes,
                                          torch.empty(slots, hk, 2), torch.stack([torch.arange(r)] * hk), r2t, rows,
                                          torch.empty(8, hk, 128, dtype=torch.int64), sl, 64, 16, 64)

    def scores():
        for hq, hk, d in ((32, 8, 128), (20, 1, 576)):
            km = torch.empty(pages.numel(), hk, d, dtype=dt)
            triton_ops.score_blocks(torch.empty(8, hq, d, dtype=dt), km, torch.empty_like(km), pages, sl, 64, 16, 64)

    out = []
    for module, fn in ((gqa_decode, gqa), (mla_decode, mla), (block_score, scores), (token_score, candidates),
                       (topk, ranked)):
        for overrides in module.SWEEP:
            def f(module=module, fn=fn, overrides=overrides):
                with launch_overrides(module.LAUNCH, overrides):
                    fn()
            out.append((f"sweep {'.'.join(module.__name__.split('.')[-2:])} {overrides}", f))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--stage", choices=("ttir", "cubin"), default="cubin")
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    args = ap.parse_args()
    _install(args.arch, args.stage)
    failed = 0
    for name, thunk in cases():
        if args.k not in name:
            continue
        n0 = len(COMPILED)
        try:
            thunk()
            print(f"ok    {name}: {', '.join(COMPILED[n0:])}", flush=True)
        except Exception as e:  # noqa: BLE001 - report every failing variant
            failed += 1
            msg = "".join(traceback.format_exception_only(type(e), e)).strip()
            print(f"FAIL  {name}:\n{msg}\n", flush=True)
    print(f"{failed} failed, {len(COMPILED)} kernel launches compiled for sm_{args.arch} ({args.stage})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
