"""benchmarks/e2e_bench.py's fixed-memory mode reports the batch a backend reached from the
requests' token times (GPU-only script; its accounting is checked here with a scripted engine)."""
from __future__ import annotations

import asyncio
import importlib.util
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("e2e_bench", os.path.join(HERE, "..", "benchmarks", "e2e_bench.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
def test_batch_reached_is_the_engine_concurrency(bench, slots):
    r = asyncio.run(bench.run_fixed_memory(QueueingEngine(slots, steps=5, dt=0.02), 4, 64, 5, 5000, 0))
    assert r["batch_reached"] == slots
    assert r["bs"] == 4 and r["output_tok_s"] > 0
    # 4 requests of 5 tokens, `slots` at a time: the wall time scales with the queueing
    assert r["wall_s"] == pytest.approx(0.1 * 4 / slots, rel=0.5)


def test_table_compares_fixed_memory_rows_by_run_throughput(bench):
    rows = [{"backend": "flashinfer", "bs": 4, "ctx": 98304, "batch_reached": 2, "ttft_s": 1, "decode_tok_s": 50.0,
             "output_tok_s": 100.0, "itl_ms_median": None, "itl_ms_p99": None},
            {"backend": "asynctls(K=2048)+offload", "bs": 4, "ctx": 98304, "batch_reached": 4, "ttft_s": 1,
             "decode_tok_s": 60.0, "output_tok_s": 250.0, "itl_ms_median": None, "itl_ms_p99": None}]
    text = bench.table(rows, "flashinfer")
    assert "| 4 of 4 |" in text and "| 2 of 4 |" in text and text.rstrip().endswith("| 2.50 |")
