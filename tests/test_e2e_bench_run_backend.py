"""benchmarks/e2e_bench.py's run_backend around a scripted engine (the real one needs the H200):
the per-point decode-step counts by path, the --fit capacity read from the engine, the variant's
label."""
from __future__ import annotations

import asyncio
import pytest


class ScriptedEngine:
    """Streams max_new_tokens tokens per request; a request longer than `dense_upto` tokens counts
    its steps as sparse, else dense (the backend's counters, as get_server_info reports them)."""

    def __init__(self, dense_upto: int, pool_tokens: int, **kw) -> None:
        self.kw, self.dense_upto, self.pool = kw, dense_upto, pool_tokens
        self.loop = asyncio.new_event_loop()
        self.steps = {"sparse": 0, "dense": 0}
        self.down = False

    async def async_generate(self, input_ids, sampling_params, stream):
        kind = "sparse" if len(input_ids) > self.dense_upto else "dense"

        async def gen():
            for n in range(1, sampling_params["max_new_tokens"] + 1):
                await asyncio.sleep(0.001)
                self.steps[kind] += 1
                yield {"meta_info": {"completion_tokens": n}}
        return gen()

    def get_server_info(self):
        state = {"attended_tokens_last": 2048 if self.steps["sparse"] else None,
                 "sparse_decode_steps": self.steps["sparse"], "dense_decode_steps": self.steps["dense"]}
        return {"max_total_num_tokens": self.pool, "internal_states": [{"asynctls": state}]}

    def shutdown(self):
        self.down = True
        self.loop.close()


@pytest.fixture()
def engines(monkeypatch):
    import sglang

    made = []

    def make(**kw):
        made.append(ScriptedEngine(dense_upto=5000, pool_tokens=25000, **kw))
        return made[-1]

    monkeypatch.setattr(sglang, "Engine", make, raising=False)
    monkeypatch.setattr("asynctls_sglang.plugin.register", lambda: None)
    return made


def _args(e2e_bench, *extra):
    return e2e_bench.build_parser().parse_args(["--points", "1x4096,1x8192", "--out-len", "3", "--progress-s", "0",
                                                *extra])


def test_each_point_counts_its_own_decode_steps_by_path(e2e_bench, engines):
    rows = e2e_bench.run_backend(_args(e2e_bench), "asynctls", {"token_budget": 2048}, label="norule")
    assert [r["backend"] for r in rows] == ["norule(K=2048)"] * 2
    # the warm-up (4096 tokens, 8 steps) is left out; 1 x 4k decodes dense, 1 x 8k sparse
    assert [(r["dense_decode_steps"], r["sparse_decode_steps"]) for r in rows] == [(3, 0), (0, 3)]
    assert engines[0].down and engines[0].kw["attention_backend"] == "asynctls"


def test_fit_reads_the_pool_from_the_engine(e2e_bench, engines):
    args = _args(e2e_bench, "--fit")
    args.points = "8x8192"
    rows = e2e_bench.run_backend(args, "flashinfer", {})
    # 25000 tokens hold 3 requests of 8192 + 3: four are submitted, not eight
    assert (rows[0]["fits"], rows[0]["submitted"], rows[0]["pool_tokens"]) == (3, 4, 25000)
    assert "sparse_decode_steps" not in rows[0]  # not an asynctls engine
