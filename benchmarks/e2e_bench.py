"""End-to-end decode benchmark: SGLang's engine, same model, same GPU, one backend after another.

Starts ``sglang.Engine`` in-process (real scheduler, KV pool, CUDA-graph decode) on random
weights of a real architecture (benchmarks/models/<name>/config.json), sends ``bs`` concurrent
streaming requests of ``ctx`` random tokens, and measures per point: time to first token,
decode throughput while every request decodes, inter-token latency (median and p99).
Backends are run one after another in the same process, so the baseline shares the run.
Usage (GPU): python benchmarks/e2e_bench.py --model qwen3_8b --backends flashinfer,asynctls \
    --points 8x65536 --out e2e.json         (prints one table; JSON + PNG beside --out)
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import random
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_points(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in p.lower().split("x")) for p in text.split(",")]  # type: ignore[misc]


async def _request(engine, ids, params, marks: list | None = None):
    marks = [] if marks is None else marks  # (time, completion tokens) per streamed chunk
    t0 = time.perf_counter()
    stream = await engine.async_generate(input_ids=ids, sampling_params=params, stream=True)
    async for chunk in stream:
        marks.append((time.perf_counter(), chunk["meta_info"]["completion_tokens"]))
    return t0, marks


async def _profile_decode(engine, tasks, marks: list[list], steps: int, out_dir: str) -> bool:
    """Once every request of `tasks` decodes at the same time (each has streamed a few tokens and
    none has ended), record `steps` forward steps with SGLang's profiler (GPU kernels only; it
    stops by itself) -> whether it started (a batch never reached, e.g. at fixed memory: False)."""
    from sglang.srt.managers.io_struct import ProfileReq

    while not any(t.done() for t in tasks):
        await asyncio.sleep(0.05)
        if all(len(m) >= 4 for m in marks):
            await engine.tokenizer_manager.start_profile(ProfileReq(
                output_dir=out_dir, num_steps=steps, activities=["GPU"], with_stack=False, record_shapes=False))
            return True
    return False


def profile_summary(out_dir: str, steps: int, started: bool) -> dict:
    """The summary of the newest trace under out_dir (summarize_trace), or why there is none."""
    if not started:
        return {"steps": steps, "error": "the requests never decoded all together: nothing recorded"}
    time.sleep(2)  # the trace is written by the scheduler process after its last step
    traces = sorted(glob.glob(os.path.join(out_dir, "*.trace.json*")))
    return summarize_trace(traces[-1], steps) if traces else {"steps": steps, "error": "no trace"}


#: The offload engine's copy-stream kernels: the host->GPU fetches and their plans
TRANSFER_KERNELS = ("copy_blocks_h2d", "plan_residency")


_GROUPS = (  # (group, substrings of kernel names), first match wins; the rest is "other"
    ("other", ("RMSNorm", "norm::")),  # FlashInfer's norm kernels, before its attention's names
    ("MoE", ("fused_moe", "moe_", "grouped_topk", "topk_sigmoid", "topk_softmax")),  # before "topk" below
    ("asynctls selection", ("block_score", "topk", "select_", "candidate", "token_score", "compact", "truncate")),
    ("asynctls attention", ("gqa_decode", "mla_decode", "merge_splits")),
    ("asynctls index upkeep", ("summary", "index_key", "write_index")),
    ("dense attention", ("BatchDecode", "BatchPrefill", "flashinfer", "_fwd_kernel", "decode_att", "fmha", "flash")),
    ("GEMM", ("gemm", "nvjet", "cutlass", "sm90_xmma", "cublas", "Gemm")),
    ("offload transfers", TRANSFER_KERNELS),
    ("copies", ("Memcpy", "memcpy", "gather_host", "copy_blocks")),
)


def kernel_group(name: str) -> str:
    for group, keys in _GROUPS:
        if any(k in name for k in keys):
            return group
    return "other"


def summarize_trace(path: str, steps: int) -> dict:
    """Per-step GPU time of a chrome trace (SGLang's profiler output): busy time by kernel group
    and the top kernels, and the span from the first to the last kernel (busy + idle gaps)."""
    import gzip

    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
        events = json.load(f)["traceEvents"]
    kernels = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    if not kernels:
        return {"steps": steps, "error": "no GPU kernels in the trace"}
    span = max(e["ts"] + e["dur"] for e in kernels) - min(e["ts"] for e in kernels)
    by_name: dict[str, list] = {}
    for e in kernels:
        entry = by_name.setdefault(e["name"][:90], [0.0, 0])
        entry[0] += e["dur"]
        entry[1] += 1
    groups: dict[str, float] = {}
    for name, (dur, _) in by_name.items():
        groups[kernel_group(name)] = groups.get(kernel_group(name), 0.0) + dur
    busy = sum(d for d, _ in by_name.values())
    top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:20]
    return {"steps": steps, "span_ms_per_step": round(span / steps / 1000, 3),
            "busy_ms_per_step": round(busy / steps / 1000, 3),
            "groups_ms_per_step": {g: round(d / steps / 1000, 3) for g, d in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top_kernels": [{"name": n, "ms_per_step": round(d / steps / 1000, 4), "calls_per_step": c / steps}
                            for n, (d, c) in top],
            "transfers": transfer_overlap(kernels, steps)}


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def transfer_overlap(kernels: list[dict], steps: int) -> dict:
    """How much of the offload's copy-stream work (TRANSFER_KERNELS, by name) ran while another
    kernel ran: hidden behind compute. By name, not by stream: a CUDA-graph replay spreads the
    graph's branches over streams of its own, so the trace's stream ids do not say which work is
    the forward's. The rest ran with no other kernel on the GPU (exposed; launch gaps between the
    forward's kernels count there too, so the exposed figure is an upper bound)."""
    import bisect

    side = [e for e in kernels if e["name"].startswith(TRANSFER_KERNELS)]
    if not side:
        return {}
    others = _union([(e["ts"], e["ts"] + e["dur"]) for e in kernels if not e["name"].startswith(TRANSFER_KERNELS)])
    starts = [a for a, _ in others]
    total = hidden = 0.0
    for e in side:
        a, b = e["ts"], e["ts"] + e["dur"]
        total += e["dur"]
        i = max(bisect.bisect_right(starts, a) - 1, 0)
        while i < len(others) and others[i][0] < b:
            hidden += max(0.0, min(b, others[i][1]) - max(a, others[i][0]))
            i += 1
    return {"ms_per_step": round(total / steps / 1000, 3), "hidden_fraction": round(hidden / total, 3),
            "exposed_ms_per_step_at_most": round((total - hidden) / steps / 1000, 3)}


SHARED_TAIL = 32  # distinct tokens after the shared prefix (--shared-prefix)


async def run_point(engine, bs: int, ctx: int, out_len: int, vocab: int, seed: int,
                    shared_prefix: bool = False, profile_steps: int = 0, profile_dir: str = "") -> dict:
    rng = random.Random(seed)
    if shared_prefix:
        # One prefill of the common prefix (radix cache), then bs requests that each read all ctx
        # tokens at every decode step: decode costs what bs distinct contexts cost, prefill once.
        prefix = [rng.randrange(1000, vocab - 1000) for _ in range(ctx - SHARED_TAIL)]
        await _request(engine, prefix, {"max_new_tokens": 1, "temperature": 0.0})
        prompts = [prefix + [rng.randrange(1000, vocab - 1000) for _ in range(SHARED_TAIL)]
                   for _ in range(bs)]
    else:
        prompts = [[rng.randrange(1000, vocab - 1000) for _ in range(ctx)] for _ in range(bs)]
    params = {"max_new_tokens": out_len, "ignore_eos": True, "temperature": 0.0}
    t_submit = time.perf_counter()
    profile = None
    if profile_steps:
        marks: list[list] = [[] for _ in prompts]
        tasks = [asyncio.ensure_future(_request(engine, p, params, m)) for p, m in zip(prompts, marks)]
        started = await _profile_decode(engine, tasks, marks, profile_steps, profile_dir)
        results = await asyncio.gather(*tasks)
        profile = profile_summary(profile_dir, profile_steps, started)
    else:
        results = await asyncio.gather(*[_request(engine, p, params) for p in prompts])
    firsts = [m[0][0] for _, m in results]
    lasts = [m[-1][0] for _, m in results]
    t_a, t_b = max(firsts), min(lasts)  # window where every request decodes
    tokens = 0
    for _, marks in results:
        tokens += max([n for t, n in marks if t <= t_b] or [0]) - max([n for t, n in marks if t <= t_a] or [0])
    window = t_b - t_a
    out = {"bs": bs, "ctx": ctx, "ttft_s": round(max(firsts) - t_submit, 3),
           "ttft_s_each": sorted(round(t - t_submit, 3) for t in firsts),  # queueing shows as a spread
           "decode_tok_s": round(tokens / window, 1) if window > 0.05 else None, **_itl(results)}
    if profile is not None:
        out["profile"] = profile
    return out


def _itl(results) -> dict:
    """Median and p99 inter-token latency (ms) over every request's streamed marks."""
    step_ms = sorted(1000 * (tb - ta) / (nb - na) for _, marks in results
                     for (ta, na), (tb, nb) in zip(marks, marks[1:]) if nb > na)
    if not step_ms:
        return {"itl_ms_median": None, "itl_ms_p99": None}
    return {"itl_ms_median": round(statistics.median(step_ms), 3),
            "itl_ms_p99": round(step_ms[min(len(step_ms) - 1, int(0.99 * len(step_ms)))], 3)}


def progress_line(elapsed: float, marks: list[list], state: dict | None) -> str:
    """One line of a long run's progress: requests started (first token) and done, tokens so far,
    and the backend's offload counters when it has them (prefill phases: calls and stream seconds)."""
    started = sum(bool(m) for m in marks)
    tokens = sum(m[-1][1] for m in marks if m)
    line = f"[e2e] {elapsed:.0f} s: {started}/{len(marks)} requests decoding or done, {tokens} tokens out"
    if (state or {}).get("error"):
        line += f"; backend state not read: {state['error']}"
    off = (state or {}).get("offload") or {}
    if off:
        phases = ", ".join(f"{name} {p['calls']}x {p['stream_s']:.1f} s"
                           for name, p in (off.get("prefill_phases") or {}).items())
        line += (f"; offload: {off.get('decode_steps', 0)} decode steps, prefix blocks loaded back "
                 f"{off.get('prefix_blocks_loaded', 0)}, demoted {off.get('blocks_demoted', 0)}; {phases}")
    return line


async def _report_progress(engine, marks: list[list], t_submit: float, every: float) -> None:
    """Print progress_line every `every` seconds until cancelled (the backend's state is asked of
    the scheduler, which answers between forward passes: a line late by a long prefill shows it)."""
    while True:
        await asyncio.sleep(every)
        try:
            states = await engine.tokenizer_manager.get_internal_state()
            state = states[0].get("asynctls") if states else None
        except Exception as e:  # progress must never end the run
            state = {"error": repr(e)}
        print(progress_line(time.perf_counter() - t_submit, marks, state), flush=True)


async def run_fixed_memory(engine, n_req: int, ctx: int, out_len: int, vocab: int, seed: int,
                           progress_s: float = 20.0, profile_steps: int = 0, profile_dir: str = "") -> dict:
    """n_req distinct contexts submitted at once to a KV pool capped by --fixed-kv-tokens: how many
    decode together (the batch the backend reaches) and the output throughput of the whole run.
    profile_steps: that many steps profiled once all n_req decode together (if they ever do)."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(1000, vocab - 1000) for _ in range(ctx)] for _ in range(n_req)]
    params = {"max_new_tokens": out_len, "ignore_eos": True, "temperature": 0.0}
    t_submit = time.perf_counter()
    all_marks: list[list] = [[] for _ in prompts]

    async def one(i: int, prompt: list[int]):
        # progress as each request ends: a run cut by a time limit still shows how far it got
        marks = all_marks[i]
        result = await _request(engine, prompt, params, marks)
        print(f"[e2e] fixed-memory request {i} done: first token at {marks[0][0] - t_submit:.1f} s, "
              f"{marks[-1][1]} tokens by {marks[-1][0] - t_submit:.1f} s", flush=True)
        return result

    ticker = asyncio.ensure_future(_report_progress(engine, all_marks, t_submit, progress_s)) if progress_s > 0 else None
    tasks = [asyncio.ensure_future(one(i, p)) for i, p in enumerate(prompts)]
    try:
        started = profile_steps and await _profile_decode(engine, tasks, all_marks, profile_steps, profile_dir)
        results = await asyncio.gather(*tasks)
    finally:
        if ticker is not None:
            ticker.cancel()
    spans = [(m[0][0], m[-1][0]) for _, m in results]  # first to last token of each request
    batch = max(sum(a <= t <= b for a, b in spans) for t, _ in spans)
    t_end = max(b for _, b in spans)
    decode_window = t_end - min(a for a, _ in spans)
    tokens = sum(m[-1][1] for _, m in results)
    itl = _itl(results)
    # the decode rate at the batch reached, prefill stalls left out (the median step is a decode
    # step: a step that waited on another request's prefill chunk is in the tail)
    at_batch = round(1000 * batch / itl["itl_ms_median"], 1) if itl["itl_ms_median"] else None
    out = {"bs": n_req, "ctx": ctx, "batch_reached": batch, "ttft_s": round(min(a for a, _ in spans) - t_submit, 3),
           "wall_s": round(t_end - t_submit, 2), "output_tok_s": round(tokens / (t_end - t_submit), 1),
           "decode_tok_s": round(tokens / decode_window, 1) if decode_window > 0.05 else None,
           "decode_tok_s_at_batch": at_batch, **itl}
    if profile_steps:
        out["profile"] = profile_summary(profile_dir, profile_steps, bool(started))
    return out


def fit_requests(capacity_tokens: int, bs: int, ctx: int, out_len: int) -> tuple[int, int]:
    """--fit: (requests that fit the KV pool together, requests to submit). One more than fit, at
    most bs: the batch reached then shows the limit without prefilling every one of bs prompts
    (48 distinct 96k prompts were minutes of prefill per backend)."""
    fits = capacity_tokens // (ctx + out_len)
    return fits, min(bs, fits + 1)


async def run_fit(engine, capacity_tokens: int, bs: int, ctx: int, out_len: int, vocab: int, seed: int,
                  progress_s: float = 20.0) -> dict:
    """The largest batch a backend serves together at this context on its own KV pool."""
    fits, n = fit_requests(capacity_tokens, bs, ctx, out_len)
    if fits == 0:
        print(f"[e2e] fit {bs}x{ctx}: one request of {ctx + out_len} tokens does not fit the pool "
              f"({capacity_tokens} tokens)", flush=True)
        return {"bs": bs, "ctx": ctx, "batch_reached": 0, "fits": 0, "pool_tokens": capacity_tokens,
                "ttft_s": None, "decode_tok_s": None, "itl_ms_median": None, "itl_ms_p99": None}
    r = await run_fixed_memory(engine, n, ctx, out_len, vocab, seed, progress_s)
    r.update(fits=fits, pool_tokens=capacity_tokens, submitted=n, bs=bs)
    return r


def offload_device_tokens(fixed_tokens: int, asynctls: dict, model_cfg: dict, requests: int,
                          context_length: int) -> tuple[int, int]:
    """(device KV tokens, tokens' worth of resident buffers) so that an offload run's device pool
    plus its resident block buffers take the bytes of `fixed_tokens` KV tokens (same GPU memory as
    the full-attention run; the index, about 3% of the KV, is not counted on either side)."""
    from asynctls_sglang.config import AsyncTLSConfig
    from asynctls_sglang.memory.offload_runtime import resident_row_bytes

    cfg = AsyncTLSConfig.from_dict(asynctls)
    layers = model_cfg["num_hidden_layers"]
    if model_cfg.get("kv_lora_rank"):  # MLA: one latent "head"
        heads, dim, v_dim = 1, model_cfg["kv_lora_rank"] + model_cfg["qk_rope_head_dim"], None
    else:
        heads = model_cfg["num_key_value_heads"]
        dim = v_dim = model_cfg.get("head_dim") or model_cfg["hidden_size"] // model_cfg["num_attention_heads"]
    row = resident_row_bytes(cfg, num_layers=layers, kv_heads=heads, head_dim=dim, v_head_dim=v_dim,
                             dtype_size=2, max_blocks=-(-context_length // cfg.block_size))
    token_bytes = layers * heads * (dim + (v_dim or 0)) * 2
    resident = -(-(requests + 1) * row // token_bytes)
    device = (fixed_tokens - resident) // cfg.block_size * cfg.block_size
    if device <= 0:
        raise SystemExit(f"--fixed-kv-tokens {fixed_tokens} does not hold the resident buffers of {requests} "
                         f"offloaded requests ({resident} tokens' worth)")
    return device, resident


def fixed_host_pool_tokens(asynctls: dict, device_tokens: int, resident_tokens: int,
                           points: list[tuple[int, int]], out_len: int) -> int | None:
    """host_pool_tokens for a fixed-memory offload run without one: None when the package's default
    (adapter.allocator.logical_tokens, uncapped) holds every request of the largest point, else
    that need: every request's blocks, one spare each, and 5% over them for what SGLang's admission
    reserves for the running requests' outputs. The host pool is the logical KV capacity SGLang admits
    by: at 8 x 96k under a 190000-token cap (GLM-4.7-Flash, H200, session 22) the default held 7
    of the 8 prompts and the eighth waited for the other seven to finish (batch reached 7)."""
    from asynctls_sglang.adapter.allocator import logical_tokens
    from asynctls_sglang.config import AsyncTLSConfig

    cfg = AsyncTLSConfig.from_dict(asynctls)
    if cfg.host_pool_tokens is not None:
        return None
    b = cfg.block_size
    blocks = max(bs * (-(-(ctx + out_len) // b) + 1) for bs, ctx in points)
    need = -(-blocks * 105 // 100) * b
    return need if need > logical_tokens(cfg, device_tokens, resident_tokens=resident_tokens) else None


def parse_variants(specs: list[str]) -> dict[str, dict]:
    """--variant NAME=JSON (repeatable) -> {NAME: AsyncTLS fields}; bad input stops with a message
    (SystemExit for the NAME=JSON form, config.ConfigError for the fields)."""
    from asynctls_sglang.config import AsyncTLSConfig

    variants = {}
    for spec in specs:
        name, sep, fields = spec.partition("=")
        if not sep or not name or "," in name:
            raise SystemExit(f"--variant {spec!r}: expected NAME=JSON (a name without commas)")
        # bad JSON, unknown fields and bad values fail here (ConfigError), before any engine starts
        AsyncTLSConfig.from_json(fields, source=f"--variant {name}")
        variants[name] = json.loads(fields)
    return variants


def asynctls_info(engine) -> dict:
    """The asynctls backend's stats (adapter.stats) from SGLang's internal state."""
    return engine.get_server_info()["internal_states"][0].get("asynctls", {})


def run_backend(args, backend: str, asynctls: dict, eager: bool = False, label: str | None = None,
                profile_steps: int = 0) -> list[dict]:
    # 128k points plus their output pass the configs' 131072 positions (random weights: harmless).
    os.environ.setdefault("SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN", "1")
    import sglang as sgl

    from asynctls_sglang.plugin import register

    register()
    model_dir = os.path.join(HERE, "models", args.model)
    model_cfg = json.load(open(os.path.join(model_dir, "config.json")))
    vocab = model_cfg["vocab_size"]
    points = parse_points(args.points)
    max_bs = max(b for b, _ in points)
    kw = dict(model_path=model_dir, load_format="dummy", skip_tokenizer_init=True, attention_backend=backend,
              dtype="bfloat16", mem_fraction_static=args.mem_frac, context_length=args.context_length,
              max_running_requests=max(16, 2 * max_bs), chunked_prefill_size=args.chunked_prefill,
              disable_radix_cache=not args.shared_prefix, cuda_graph_max_bs_decode=max_bs, disable_prefill_cuda_graph=True,
              random_seed=0, log_level="warning")
    if backend == "asynctls":
        kw["page_size"] = asynctls.get("block_size", 64)
    if eager:
        kw["disable_cuda_graph"] = True
    resident = 0
    if args.fixed_kv_tokens:
        # the paper's offload experiment: the same device KV memory for every backend
        tokens = args.fixed_kv_tokens
        if asynctls.get("offload"):
            tokens, resident = offload_device_tokens(tokens, asynctls, model_cfg, max_bs, args.context_length)
            host = fixed_host_pool_tokens(asynctls, tokens, resident, points, args.out_len)
            if host is not None:
                print(f"[e2e] host pool raised to {host} tokens: the default holds fewer than the "
                      f"largest point's requests", flush=True)
                asynctls = {**asynctls, "host_pool_tokens": host}
        kw.update(max_total_tokens=tokens, max_running_requests=max_bs)
    kw.update(json.loads(args.extra))
    os.environ["ASYNCTLS_CONFIG"] = json.dumps(asynctls)
    t0 = time.perf_counter()
    engine = sgl.Engine(**kw)
    print(f"[e2e] {backend} up in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    try:
        engine.loop.run_until_complete(run_point(engine, 1, 4096, 8, vocab, 1))  # warm-up
        for i, (bs, ctx) in enumerate(points):
            before = asynctls_info(engine) if backend == "asynctls" else {}
            pdir = os.path.join(os.path.dirname(os.path.abspath(args.out)), f"profile_{label or backend}_{bs}x{ctx}")
            if args.fixed_kv_tokens or args.fit:
                if args.fit:  # the pool as SGLang sized it (capped by --fixed-kv-tokens; offload: logical)
                    capacity = int(engine.get_server_info()["max_total_num_tokens"])
                    r = engine.loop.run_until_complete(run_fit(engine, capacity, bs, ctx, args.out_len, vocab,
                                                               100 + i, args.progress_s))
                else:
                    r = engine.loop.run_until_complete(run_fixed_memory(engine, bs, ctx, args.out_len, vocab, 100 + i,
                                                                       args.progress_s, profile_steps, pdir))
                if args.fixed_kv_tokens:
                    r.update(fixed_kv_tokens=args.fixed_kv_tokens, device_kv_tokens=kw["max_total_tokens"],
                             resident_buffer_tokens=resident)
            else:
                r = engine.loop.run_until_complete(run_point(engine, bs, ctx, args.out_len, vocab, 100 + i,
                                                             args.shared_prefix, profile_steps, pdir))
            if "profile" in r:
                print("[e2e] profile " + json.dumps(r["profile"]), flush=True)
            r.update(shared_prefix=args.shared_prefix,
                     backend=(label or backend) + (f"(K={asynctls.get('token_budget', 2048)})" if backend == "asynctls" else ""))
            if backend == "asynctls":
                info = asynctls_info(engine)
                r["attended_tokens_last"] = info.get("attended_tokens_last")
                # this point's decode steps by path (the counters are per engine): a point the
                # dense rules send to the stock kernel keeps the previous point's attended count
                r.update({f"{kind}_decode_steps": info.get(f"{kind}_decode_steps", 0) - before.get(f"{kind}_decode_steps", 0)
                          for kind in ("sparse", "dense")})
                if "mla_prefill" in info:  # how the MLA prompts prefilled (adapter.mla_prefill)
                    r["mla_prefill"] = info["mla_prefill"]
                if "offload" in info:  # cumulative over the points so far (docs/offload.md: metrics)
                    r["backend"] += "+offload" + ("(eager, timed)" if eager else "")
                    r["offload"] = info["offload"]
            print("[e2e] " + json.dumps(r), flush=True)
            rows.append(r)
    finally:
        engine.shutdown()
    return rows


def table(rows: list[dict], baseline: str) -> str:
    base = {(r["bs"], r["ctx"]): r for r in rows if r["backend"] == baseline}
    out = ["| backend | bs | ctx | TTFT s | decode tok/s | run tok/s | ITL ms (median / p99) | x baseline |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = base.get((r["bs"], r["ctx"]))
        # fixed-memory rows compare whole-run output throughput (queueing included); others decode
        key = "output_tok_s" if "batch_reached" in r else "decode_tok_s"
        ratio = f"{r[key] / b[key]:.2f}" if b and b.get(key) and r.get(key) else "-"
        key = "decode_tok_s_at_batch"
        if b and b.get(key) and r.get(key):  # fixed memory: also the decode rate at the batch reached
            ratio += f" (decode at batch: {r[key] / b[key]:.2f})"
        elif "profile" in r and "batch_reached" not in r and b and b.get("itl_ms_median") and r.get("itl_ms_median"):
            # a profiled point's decode rate carries the profiler's stalls; its median ITL does not
            ratio += f" (profiled; by median ITL: {b['itl_ms_median'] / r['itl_ms_median']:.2f})"
        bs = f"{r['batch_reached']} of {r['bs']}" if "batch_reached" in r else r["bs"]
        if "fits" in r:  # --fit: the batch served together, and what the pool holds at that context
            bs = f"{r['batch_reached']} (pool holds {r['fits']})"
        # fixed memory and --fit: the decode rate at the batch reached (over the run's decode window
        # it counts the queued requests' prefills: 3.8 tokens/s for 7 x 96k decoding at 790)
        dec = r["decode_tok_s"] if r.get("decode_tok_s_at_batch") is None else f"{r['decode_tok_s_at_batch']} at batch"
        out.append(f"| {r['backend']} | {bs} | {r['ctx']} | {r['ttft_s']} | {dec} | "
                   f"{r.get('output_tok_s', '-')} | {r['itl_ms_median']} / {r['itl_ms_p99']} | {ratio} |")
    return "\n".join(out)


def offload_cost(rows: list[dict], copy_gbps: float, base: str | None = None) -> list[dict]:
    """Per point run with offload (graphs, not fixed memory): the host->device bytes and the hit
    rate of this point alone (the offload stats are cumulative over an engine's points:
    differences of consecutive rows) and the copy time the bytes need at copy_gbps; with a row
    without offload at the same point, also the step's growth and the share of the copy time
    hidden behind compute, at least: every millisecond the step grew is counted as exposed copy
    time (the offload step's own work adds to the growth too), so hidden >= 1 - growth / copy
    time. CUDA events cannot time copies inside a replayed graph; this bound can. The row without
    offload: backend `base` (a name of --backends, e.g. a --variant), else the same backend
    without "+offload". Also per point: the blocks moved against the blocks the selections needed
    (the bytes against moving every needed block, k_b x B plus the pinned ones: what temporal
    locality saves), and on a profiled point the copy time the profiler saw hidden beside other
    kernels and the bandwidth that copy time implies for the point's average bytes per step."""
    out, prev = [], {}
    for r in rows:
        off = r.get("offload")
        if off is None or "batch_reached" in r or "eager" in r["backend"]:  # eager: not the graph step
            continue
        before = prev.get(r["backend"], {})
        prev[r["backend"]] = off
        steps = off["offload_steps"] - before.get("offload_steps", 0)
        if not steps:
            continue
        moved = off["bytes_moved"] - before.get("bytes_moved", 0)
        hits = off["blocks_hit"] - before.get("blocks_hit", 0)
        misses = off["blocks_missed"] - before.get("blocks_missed", 0)
        needed = off["blocks_needed"] - before.get("blocks_needed", 0)
        blocks = off["blocks_moved"] - before.get("blocks_moved", 0)
        transfers = (r.get("profile") or {}).get("transfers") or {}
        own = r["backend"].split("+offload")[0]
        base_row = next((b for b in rows if "offload" not in b and (b["bs"], b["ctx"]) == (r["bs"], r["ctx"])
                         and (b["backend"] == own if base is None
                              else b["backend"] == base or b["backend"].startswith(base + "("))), None)
        copy_ms = moved / steps / (copy_gbps * 1e9) * 1e3
        c = {"bs": r["bs"], "ctx": r["ctx"], "backend": r["backend"], "itl_ms_on": r.get("itl_ms_median"),
             "mb_per_step": round(moved / steps / 1e6, 1), "hit_rate": round(hits / (hits + misses), 4)
             if hits + misses else None, "copy_ms_per_step": round(copy_ms, 2), "copy_gbps": copy_gbps,
             "itl_ms_off": None, "step_growth": None, "hidden_at_least": None,
             "moved_of_needed": round(blocks / needed, 4) if needed else None,
             "hidden_profile": transfers.get("hidden_fraction"),
             "copy_gbps_profile": round(moved / steps / (transfers["ms_per_step"] * 1e6), 1)
             if transfers.get("ms_per_step") else None}
        if base_row is not None and base_row.get("itl_ms_median") and r.get("itl_ms_median"):
            growth = r["itl_ms_median"] - base_row["itl_ms_median"]
            c.update(itl_ms_off=base_row["itl_ms_median"], step_growth=round(growth / base_row["itl_ms_median"], 4),
                     hidden_at_least=round(min(1.0, max(0.0, 1 - growth / copy_ms)), 3) if copy_ms else None)
        out.append(c)
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def offload_table(cost: list[dict]) -> str:
    out = ["| backend | bs | ctx | ITL ms off / on | step | MB per step | hit rate | copy ms per step | hidden (at least) "
           "| moved / needed blocks | hidden (profile) | GB/s (profile) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cost:
        out.append(f"| {c['backend']} | {c['bs']} | {c['ctx']} | {c['itl_ms_off'] or '-'} / {c['itl_ms_on']} | "
                   f"{_fmt(c['step_growth'], '+.0%')} | {c['mb_per_step']} | {_fmt(c.get('hit_rate'), '.3f')} | "
                   f"{c['copy_ms_per_step']} (at {c['copy_gbps']} GB/s) | {_fmt(c['hidden_at_least'], '.0%')} | "
                   f"{_fmt(c.get('moved_of_needed'), '.1%')} | {_fmt(c.get('hidden_profile'), '.1%')} | "
                   f"{c.get('copy_gbps_profile') or '-'} |")
    return "\n".join(out)


def merge(specs: list[str]) -> list[dict]:
    """--merge FILE[:LABEL] ...: the rows of earlier runs (this script's JSON), each backend named
    with its run's LABEL (e.g. the device call) so that rows of different runs are never taken for
    one run's. Bad input stops with a message."""
    rows = []
    for spec in specs:
        path, _, label = spec.partition(":")
        try:
            data = json.load(open(path))
            got, out_len = data["rows"], (data.get("args") or {}).get("out_len")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise SystemExit(f"--merge {spec!r}: not an e2e_bench JSON with rows ({e})")
        rows += [dict(r, backend=f"{r['backend']} [{label}]" if label else r["backend"],
                      **({"out_len": out_len} if out_len else {})) for r in got]
    if not rows:
        raise SystemExit("--merge: no rows")
    return rows


def plot(rows: list[dict], path: str, same_run: bool = True) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted({(r["bs"], r["ctx"]) for r in rows})  # by batch, then context
    # fixed-memory rows: the whole run's output rate and the decode rate at the batch reached
    fixed = any("batch_reached" in r for r in rows)
    metrics = [("output_tok_s", "run"), ("decode_tok_s_at_batch", "decode at batch")] if fixed \
        else [("decode_tok_s", "")]
    groups = [(bs, ctx, key, name) for bs, ctx in points for key, name in metrics]
    labels = [f"{bs}x{ctx // 1024}k {name}".strip() for bs, ctx, _, name in groups]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(backends))
    for i, b in enumerate(backends):
        xs, vals, notes = [], [], []
        for x, (bs, ctx, key, _) in enumerate(groups):
            match = [r for r in rows if r["backend"] == b and (r["bs"], r["ctx"]) == (bs, ctx)]
            xs.append(x + i * width)
            vals.append((match[0].get(key) or 0) if match else 0)
            notes.append(f"batch {match[0]['batch_reached']}" if match and "batch_reached" in match[0] else "")
        bars = ax.bar(xs, vals, width, label=b)
        if fixed:
            ax.bar_label(bars, notes, fontsize=7)
    ax.set_xticks([x + width * (len(backends) - 1) / 2 for x in range(len(labels))], labels)
    ax.set_ylabel("output tokens/s" if fixed else "decode tokens/s")
    ax.set_title("SGLang " + ("at fixed GPU memory" if fixed else "decode throughput")
                 + (" (H200, same run)" if same_run else " (H200, runs as labelled)"))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen3_8b")
    ap.add_argument("--backends", default="flashinfer,asynctls",
                    help="comma list: SGLang backends, asynctls, asynctls_offload (offload on), "
                         "asynctls_offload_timed (offload on, eager decode, transfer time hidden/exposed)")
    ap.add_argument("--budgets", default="2048", help="asynctls token budgets (one engine each)")
    ap.add_argument("--points", default="1x32768,8x32768,8x65536")
    ap.add_argument("--out-len", type=int, default=64)
    ap.add_argument("--progress-s", type=float, default=20.0,
                    help="fixed-memory and --fit runs: print requests started/done, tokens out and the offload "
                         "prefill phases every this many seconds (0: off)")
    ap.add_argument("--context-length", type=int, default=140000)
    ap.add_argument("--chunked-prefill", type=int, default=16384)
    ap.add_argument("--mem-frac", type=float, default=0.85)
    ap.add_argument("--asynctls", default="{}", help="extra AsyncTLS fields (JSON)")
    ap.add_argument("--offload", default="{}",
                    help="AsyncTLS fields of the asynctls_offload backends only (JSON), e.g. "
                         "'{\"host_pool_tokens\": 393216}' (default: 4x the device pool plus the resident "
                         "buffers, at most 70%% of the available host memory)")
    ap.add_argument("--copy-gbps", type=float, default=52.3,
                    help="host->device copy rate for the offload cost table (default: the pinned memcpy "
                         "rate benchmarks/copy_bench.py measured on the H200)")
    ap.add_argument("--offload-base", default=None, metavar="NAME",
                    help="the backend of --backends (e.g. a --variant) whose rows the offload rows are compared "
                         "with in the offload cost table (default: the same backend without offload)")
    ap.add_argument("--extra", default="{}", help="extra sglang.Engine arguments (JSON)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help="an asynctls engine with these extra AsyncTLS fields, run where NAME stands in "
                         "--backends (repeatable), e.g. --variant 'norule={\"dense_batch_tokens\":0}' "
                         "--backends flashinfer,asynctls,norule")
    ap.add_argument("--shared-prefix", action="store_true",
                    help="requests of a point share a ctx-32 token prefix (prefilled once, radix "
                         "cache); TTFT is then that of a cached prefix")
    ap.add_argument("--merge", nargs="+", metavar="FILE[:LABEL]",
                    help="run nothing: one table, JSON (--out) and plot of these earlier runs' rows, each "
                         "backend named with its LABEL (rows of different runs; the first row is the baseline)")
    ap.add_argument("--fixed-kv-tokens", type=int, default=0,
                    help="cap every backend's device KV pool at this many tokens (max_total_tokens) and "
                         "submit each point's bs distinct requests at once: reports the batch each "
                         "backend reaches and its throughput (with offload, host_pool_tokens in --offload "
                         "sets the logical capacity)")
    ap.add_argument("--fit", action="store_true",
                    help="on the backend's own KV pool (no cap), submit one more distinct request than the pool "
                         "holds at that context (at most the point's bs) at once: batch_reached is the largest "
                         "batch it serves together there. With offload every running request also holds "
                         "resident block rows on the GPU, and the engine refuses to start when "
                         "max_running_requests' rows do not fit (2 x the largest bs by default): give points "
                         "the rows fit (24x for Qwen3-8B on an H200) and --extra "
                         "'{\"max_running_requests\": 24}'")
    ap.add_argument("--profile-steps", type=int, default=0,
                    help="record this many decode steps of each point with SGLang's profiler (GPU kernels) "
                         "once all its requests decode together (with --fixed-kv-tokens: if they ever do) "
                         "and report per-step GPU time by kernel group; the point's throughput then "
                         "includes the profiler's overhead")
    ap.add_argument("--profile-only", default="", metavar="NAMES",
                    help="with --profile-steps: profile only these backends (names or --variant labels, "
                         "comma-separated); the others' throughput stays free of the profiler's stalls")
    ap.add_argument("--summarize-trace", default="", metavar="TRACE",
                    help="no engine: print the summary of a saved profiler trace (its --profile-steps steps) "
                         "and write it to --out")
    ap.add_argument("--out", default="e2e.json")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.summarize_trace:  # no engine: a trace kept from an earlier run
        summary = summarize_trace(args.summarize_trace, args.profile_steps or 1)
        print(json.dumps(summary, indent=1))
        json.dump({"trace": os.path.basename(args.summarize_trace), **summary}, open(args.out, "w"), indent=1)
        return 0
    if args.merge:  # no engine: one table, JSON and plot of earlier runs' rows
        rows = merge(args.merge)
        print(table(rows, rows[0]["backend"]))
        lens = sorted({r["out_len"] for r in rows if "out_len" in r})
        note = f"run tok/s not comparable: the runs' output lengths differ ({lens})" if len(lens) > 1 else None
        if note:
            print(note)
        json.dump({"merged_from": args.merge, "rows": rows, "note": note}, open(args.out, "w"), indent=1)
        plot(rows, os.path.splitext(args.out)[0] + ".png", same_run=False)
        return 0
    unknown = [n for n in args.profile_only.split(",") if n and n not in args.backends.split(",")]
    if unknown or (args.profile_only and not args.profile_steps):
        raise SystemExit(f"--profile-only {args.profile_only!r}: " + (f"{unknown} not in --backends ({args.backends})"
                                                                     if unknown else "needs --profile-steps"))
    if args.offload_base is not None and args.offload_base not in args.backends.split(","):
        raise SystemExit(f"--offload-base {args.offload_base!r} is not one of --backends ({args.backends})")
    from asynctls_sglang import env

    variants = parse_variants(args.variant)
    rows: list[dict] = []
    for name in args.backends.split(","):
        # asynctls_offload: the asynctls backend with the offloading engine on; a --variant: asynctls
        # with its fields
        backend = "asynctls" if name.startswith("asynctls") or name in variants else name
        budgets = [int(b) for b in args.budgets.split(",")] if backend == "asynctls" else [0]
        timed = name == "asynctls_offload_timed"  # eager decode: copies and waits timed with CUDA events
        os.environ[env.ASYNCTLS_OFFLOAD_TIMING] = "1" if timed else "0"
        for k in budgets:
            cfg = {**json.loads(args.asynctls), **variants.get(name, {}), **({"token_budget": k} if k else {}),
                   **({"offload": True, **json.loads(args.offload)} if name.startswith("asynctls_offload") else {})}
            steps = args.profile_steps if not args.profile_only or name in args.profile_only.split(",") else 0
            rows += run_backend(args, backend, cfg, eager=timed, label=name if name in variants else None,
                                profile_steps=steps)
            json.dump({"model": args.model, "args": vars(args), "rows": rows}, open(args.out, "w"), indent=1)
    print(table(rows, args.backends.split(",")[0]))
    cost = offload_cost(rows, args.copy_gbps, args.offload_base)
    if cost:
        print(offload_table(cost))
        json.dump({"model": args.model, "args": vars(args), "rows": rows, "offload_cost": cost},
                  open(args.out, "w"), indent=1)
    plot(rows, os.path.splitext(args.out)[0] + ".png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
