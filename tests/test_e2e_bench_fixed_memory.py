"""benchmarks/e2e_bench.py's fixed-memory mode reports the batch a backend reached from the
requests' token times (GPU-only script; its accounting is checked here with a scripted engine)."""
from __future__ import annotations

import asyncio

import pytest


class QueueingEngine:
    """Serves at most `slots` requests at a time, each `steps` tokens of `dt` seconds."""

    def __init__(self, slots: int, steps: int, dt: float) -> None:
        self.sem, self.steps, self.dt = asyncio.Semaphore(slots), steps, dt

    async def async_generate(self, input_ids, sampling_params, stream):
        async def gen():
            async with self.sem:
                for n in range(1, self.steps + 1):
                    await asyncio.sleep(self.dt)
                    yield {"meta_info": {"completion_tokens": n}}
        return gen()


@pytest.mark.parametrize("slots", [1, 2, 4])
def test_batch_reached_is_the_engine_concurrency(e2e_bench, slots):
    r = asyncio.run(e2e_bench.run_fixed_memory(QueueingEngine(slots, steps=5, dt=0.02), 4, 64, 5, 5000, 0))
    assert r["batch_reached"] == slots
    assert r["bs"] == 4 and r["output_tok_s"] > 0
    # 4 requests of 5 tokens, `slots` at a time: the wall time scales with the queueing
    assert r["wall_s"] == pytest.approx(0.1 * 4 / slots, rel=0.5)
    # one token per 20 ms step per request: the decode rate at the batch reached is slots x 50/s
    assert r["itl_ms_median"] == pytest.approx(20, rel=0.3)
    assert r["decode_tok_s_at_batch"] == pytest.approx(50 * slots, rel=0.3)


def test_table_compares_fixed_memory_rows_by_run_throughput(e2e_bench):
    rows = [{"backend": "flashinfer", "bs": 4, "ctx": 98304, "batch_reached": 2, "ttft_s": 1, "decode_tok_s": 50.0,
             "output_tok_s": 100.0, "itl_ms_median": None, "itl_ms_p99": None},
            {"backend": "asynctls(K=2048)+offload", "bs": 4, "ctx": 98304, "batch_reached": 4, "ttft_s": 1,
             "decode_tok_s": 60.0, "output_tok_s": 250.0, "itl_ms_median": None, "itl_ms_p99": None}]
    text = e2e_bench.table(rows, "flashinfer")
    assert "| 4 of 4 |" in text and "| 2 of 4 |" in text and text.rstrip().endswith("| 2.50 |")
    rows[0]["decode_tok_s_at_batch"], rows[1]["decode_tok_s_at_batch"] = 80.0, 120.0
    assert e2e_bench.table(rows, "flashinfer").rstrip().endswith("| 2.50 (decode at batch: 1.50) |")


def test_fixed_memory_plot_shows_both_rates_and_the_batches(e2e_bench, tmp_path, monkeypatch):
    """The PNG of a fixed-memory run: the whole run's rate and the decode rate at the batch
    reached, each bar labelled with its batch (the decode rate over the run hid the batch)."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = {}
    real_savefig = plt.Figure.savefig

    def keep(fig, path, **kw):
        ax = fig.axes[0]
        drawn["ticks"] = [t.get_text() for t in ax.get_xticklabels()]
        drawn["heights"] = sorted(round(b.get_height(), 1) for b in ax.patches)
        drawn["labels"] = sorted(t.get_text() for t in ax.texts)
        return real_savefig(fig, path, **kw)

    monkeypatch.setattr(plt.Figure, "savefig", keep)
    rows = [{"backend": "flashinfer", "bs": 6, "ctx": 98304, "batch_reached": 2, "decode_tok_s": 117.3,
             "output_tok_s": 102.5, "decode_tok_s_at_batch": 318.5},
            {"backend": "asynctls(K=2048)+offload", "bs": 6, "ctx": 98304, "batch_reached": 5, "decode_tok_s": 72.3,
             "output_tok_s": 60.9, "decode_tok_s_at_batch": 507.8}]
    e2e_bench.plot(rows, str(tmp_path / "fixed.png"))
    assert (tmp_path / "fixed.png").stat().st_size > 0
    assert drawn["ticks"] == ["6x96k run", "6x96k decode at batch"]
    assert drawn["heights"] == [60.9, 102.5, 318.5, 507.8]
    assert drawn["labels"] == ["batch 2", "batch 2", "batch 5", "batch 5"]


def test_profile_summary_groups_kernels_per_step(e2e_bench, tmp_path):
    """--profile-steps: a chrome trace's GPU kernels summed per step, by group and name."""
    import gzip
    import json

    events = [{"ph": "X", "cat": "kernel", "name": n, "ts": ts, "dur": d} for n, ts, d in [
        ("block_score_kernel", 0, 10), ("gqa_decode_split_kernel", 20, 30), ("nvjet_tst_128x256", 60, 40),
        ("block_score_kernel", 200, 10), ("gqa_decode_split_kernel", 220, 30), ("nvjet_tst_128x256", 260, 40)]]
    events.append({"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 999})
    path = tmp_path / "x-TP-0.trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    summary = e2e_bench.summarize_trace(str(path), steps=2)
    assert summary["span_ms_per_step"] == 0.15 and summary["busy_ms_per_step"] == 0.08
    assert summary["groups_ms_per_step"] == {"GEMM": 0.04, "asynctls attention": 0.03, "asynctls selection": 0.01}
    assert summary["top_kernels"][0] == {"name": "nvjet_tst_128x256", "ms_per_step": 0.04, "calls_per_step": 1.0}


def test_transfer_overlap_measures_the_copies_under_other_kernels(e2e_bench):
    """The offload's fetches and plans (by name, on any stream): 10 us under other kernels, 10 us
    alone -> half hidden; a plan wholly under a GEMM; copies within the GPU are not transfers."""
    k = lambda tid, name, ts, dur: {"ph": "X", "cat": "kernel", "tid": tid, "name": name, "ts": ts, "dur": dur}
    kernels = [k(7, "gemm", 0, 30), k(7, "attn", 30, 20), k(9, "copy_blocks_kernel", 50, 3), k(7, "gemm", 70, 30),
               k(9, "copy_blocks_h2d_kernel", 40, 20),  # 40-50 under attn, 50-53 beside the window copy
               k(11, "plan_residency_kernel", 75, 5)]  # wholly under the last gemm
    got = e2e_bench.transfer_overlap(kernels, steps=1)
    assert got == {"ms_per_step": 0.025, "hidden_fraction": round(18 / 25, 3), "exposed_ms_per_step_at_most": 0.007}
    assert e2e_bench.transfer_overlap([k(7, "gemm", 0, 30)], steps=1) == {}


def test_kernel_groups(e2e_bench):
    assert e2e_bench.kernel_group("void flashinfer::norm::FusedAddRMSNormKernel<8u>") == "other"
    assert e2e_bench.kernel_group("void flashinfer::BatchPrefillWithPagedKVCacheKernel<>") == "dense attention"
    assert e2e_bench.kernel_group("topk_resident_kernel") == "asynctls selection"
    assert e2e_bench.kernel_group("summary_fold_kernel") == "asynctls index upkeep"
    assert e2e_bench.kernel_group("fused_moe_kernel") == "MoE"
    assert e2e_bench.kernel_group("copy_blocks_kernel") == "copies"
    assert e2e_bench.kernel_group("copy_blocks_h2d_kernel") == "offload transfers"
    assert e2e_bench.kernel_group("plan_residency_kernel") == "offload transfers"
    assert e2e_bench.kernel_group("void moe_fused_gate_kernel<float>") == "MoE"
    assert e2e_bench.kernel_group("void topk_sigmoid<float, 4>") == "MoE"  # not asynctls' top-k


class ProfilingEngine(QueueingEngine):
    """A QueueingEngine whose tokenizer manager records when a profile was asked for."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.asked: list[int] = []
        outer = self

        class TokenizerManager:
            async def start_profile(self, req):
                outer.asked.append(req.num_steps)

        self.tokenizer_manager = TokenizerManager()


@pytest.mark.parametrize("slots,started", [(4, True), (2, False)])
def test_fixed_memory_profiles_only_the_whole_batch(e2e_bench, tmp_path, monkeypatch, slots, started):
    """--profile-steps at fixed memory: recorded once all requests decode together; a backend
    that never serves them together records nothing and says so (no trace of a smaller batch)."""
    pytest.importorskip("sglang")
    monkeypatch.setattr(e2e_bench, "summarize_trace", lambda path, steps: {"steps": steps, "trace": path})
    (tmp_path / "x-TP-0.trace.json.gz").write_bytes(b"")
    engine = ProfilingEngine(slots, steps=8, dt=0.02)
    r = asyncio.run(e2e_bench.run_fixed_memory(engine, 4, 64, 8, 5000, 0, 0, profile_steps=3,
                                               profile_dir=str(tmp_path)))
    assert r["batch_reached"] == slots
    assert engine.asked == ([3] if started else [])
    if started:
        assert r["profile"] == {"steps": 3, "trace": str(tmp_path / "x-TP-0.trace.json.gz")}
    else:
        assert "never decoded all together" in r["profile"]["error"]


class ReportingEngine(QueueingEngine):
    """A QueueingEngine whose scheduler answers get_internal_state with offload counters."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        outer = self

        class TokenizerManager:
            async def get_internal_state(self):
                outer.asked += 1
                return [{"asynctls": {"offload": {"decode_steps": 7, "prefix_blocks_loaded": 3, "blocks_demoted": 5,
                                                  "prefill_phases": {"seed": {"calls": 2, "host_s": 0.1, "stream_s": 1.25}}}}}]

        self.asked, self.tokenizer_manager = 0, TokenizerManager()


def test_fixed_memory_runs_print_progress_with_the_offload_phases(e2e_bench, capsys):
    """A long fixed-memory run says how far it got while it runs (a run cut by a time limit, or
    one that makes no progress, shows it), with the backend's prefill phases."""
    engine = ReportingEngine(1, steps=6, dt=0.02)
    asyncio.run(e2e_bench.run_fixed_memory(engine, 3, 64, 6, 5000, 0, progress_s=0.05))
    lines = [l for l in capsys.readouterr().out.splitlines() if "requests decoding or done" in l]
    assert engine.asked >= 2 and len(lines) == engine.asked
    assert "/3 requests decoding or done" in lines[0]
    assert "7 decode steps" in lines[0] and "seed 2x 1.2 s" in lines[0] and "demoted 5" in lines[0]
    # tokens out grow as the queue drains (1 slot: the requests run one after another)
    counts = [int(l.split("done, ")[1].split(" tokens")[0]) for l in lines]
    assert counts == sorted(counts) and counts[-1] > counts[0]


def test_progress_line_without_offload_state(e2e_bench):
    line = e2e_bench.progress_line(12.4, [[(0.0, 3)], [], [(0.0, 1), (0.1, 5)]], None)
    assert line == "[e2e] 12 s: 2/3 requests decoding or done, 8 tokens out"
    assert e2e_bench.progress_line(1, [[]], {"error": "TimeoutError()"}).endswith("; backend state not read: TimeoutError()")


def test_fit_submits_one_request_more_than_the_pool_holds(e2e_bench):
    """--fit: a pool of 3.5 requests' tokens gets 4 requests (not the point's 48): the batch reached
    shows the limit without prefilling 48 prompts."""
    assert e2e_bench.fit_requests(3 * 1000 + 500, 48, 960, 40) == (3, 4)
    assert e2e_bench.fit_requests(10 ** 6, 8, 960, 40) == (1000, 8)  # at most the point's bs
    assert e2e_bench.fit_requests(999, 8, 960, 40) == (0, 1)
    r = asyncio.run(e2e_bench.run_fit(QueueingEngine(3, steps=5, dt=0.02), 3500, 48, 960, 5, 5000, 0, 0))
    assert (r["bs"], r["submitted"], r["fits"], r["batch_reached"], r["pool_tokens"]) == (48, 4, 3, 3, 3500)
    empty = asyncio.run(e2e_bench.run_fit(QueueingEngine(3, steps=5, dt=0.02), 500, 48, 960, 5, 5000, 0, 0))
    assert empty["batch_reached"] == 0 and empty["fits"] == 0


def test_fit_rows_say_what_the_pool_holds(e2e_bench):
    rows = [{"backend": "flashinfer", "bs": 48, "ctx": 98304, "batch_reached": 7, "fits": 7, "ttft_s": 1,
             "decode_tok_s": 50.0, "output_tok_s": 100.0, "itl_ms_median": None, "itl_ms_p99": None}]
    assert "| 7 (pool holds 7) |" in e2e_bench.table(rows, "flashinfer")
    rows[0]["decode_tok_s_at_batch"] = 247.9  # the rate while the batch decodes, not over the queue
    assert "| 247.9 at batch |" in e2e_bench.table(rows, "flashinfer")


def test_merge_labels_each_run_and_compares_with_the_first(e2e_bench, tmp_path, capsys):
    """--merge: rows of two runs (device calls) in one table and plot, each labelled."""
    import json

    fi = {"bs": 6, "ctx": 98304, "batch_reached": 1, "ttft_s": 9.4, "output_tok_s": 51.1, "decode_tok_s": 55.4,
          "decode_tok_s_at_batch": 95.0, "itl_ms_median": 10.5, "itl_ms_p99": 10.9, "backend": "flashinfer"}
    ours = dict(fi, batch_reached=5, decode_tok_s_at_batch=344.1, output_tok_s=40.3, backend="asynctls+offload")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"rows": [fi], "args": {"out_len": 1024}}))
    b.write_text(json.dumps({"rows": [ours], "args": {"out_len": 512}}))
    out = tmp_path / "m.json"
    assert e2e_bench.main(["--merge", f"{a}:callB", f"{b}:callC", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| flashinfer [callB] | 1 of 6 |" in printed
    assert "decode at batch: 3.62" in printed  # 344.1 / 95.0
    assert "output lengths differ ([512, 1024])" in printed
    merged = json.loads(out.read_text())
    assert [r["backend"] for r in merged["rows"]] == ["flashinfer [callB]", "asynctls+offload [callC]"]
    assert (tmp_path / "m.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="not an e2e_bench JSON"):
        e2e_bench.main(["--merge", str(tmp_path / "missing.json"), "--out", str(out)])


def test_table_compares_a_profiled_point_by_its_median_itl(e2e_bench):
    """A profiled point's decode tok/s includes the profiler's stalls (session 17: an offload row
    at 0.96x by tok/s ran at 1.26x by ITL): the table adds the ratio of median ITLs."""
    rows = [{"backend": "flashinfer", "bs": 8, "ctx": 131072, "ttft_s": 0.1, "decode_tok_s": 352.2,
             "itl_ms_median": 22.331, "itl_ms_p99": 35.6},
            {"backend": "x+offload", "bs": 8, "ctx": 131072, "ttft_s": 1.5, "decode_tok_s": 339.8,
             "itl_ms_median": 17.686, "itl_ms_p99": 243.1, "profile": {"steps": 4}}]
    line = e2e_bench.table(rows, "flashinfer").splitlines()[-1]
    assert line.endswith("| 0.96 (profiled; by median ITL: 1.26) |")
