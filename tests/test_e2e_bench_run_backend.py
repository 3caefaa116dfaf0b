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


def test_fixed_memory_offload_raises_the_host_pool_to_hold_every_request(e2e_bench, engines, monkeypatch):
    """At 8 x 96k under GLM-4.7-Flash's 190000-token cap the default host pool (4 x the device pool
    and the resident buffers, 759872 tokens) held 7 of the 8 prompts: the eighth waited for the
    others to end (H200, session 22). The run now starts the engine with a host pool for all 8."""
    import json
    import os

    seen = []
    real = e2e_bench.offload_device_tokens
    monkeypatch.setattr(e2e_bench, "offload_device_tokens",
                        lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    configs = []
    monkeypatch.setattr(e2e_bench, "run_fixed_memory", _recording(configs))
    args = _args(e2e_bench, "--model", "glm47_flash", "--fixed-kv-tokens", "190000")
    for points, raised in (("8x98304", True), ("6x98304", False)):
        args.points = points
        e2e_bench.run_backend(args, "asynctls", {"offload": True, "resident_blocks": 148})
        cfg = configs[-1]
        device, resident = seen[-1]
        bs = int(points.split("x")[0])
        default = 4 * (device + resident) // 64 * 64
        if raised:
            assert bs * (98304 + 3) > default
            assert cfg["host_pool_tokens"] >= bs * (98304 + 3 + 64) and cfg["host_pool_tokens"] % 64 == 0
        else:  # the default holds them: the engine's settings stay what they were
            assert "host_pool_tokens" not in cfg
    # a host pool given on the command line is left as it is
    e2e_bench.run_backend(args, "asynctls", {"offload": True, "resident_blocks": 148, "host_pool_tokens": 64000})
    assert configs[-1]["host_pool_tokens"] == 64000
    assert json.loads(os.environ["ASYNCTLS_CONFIG"])["host_pool_tokens"] == 64000


def _recording(configs):
    """A run_fixed_memory that records the engine's AsyncTLS settings instead of running requests."""
    import json
    import os

    async def run(engine, n_req, ctx, out_len, *a, **k):
        configs.append(json.loads(os.environ["ASYNCTLS_CONFIG"]))
        return {"bs": n_req, "ctx": ctx, "batch_reached": n_req}
    return run
