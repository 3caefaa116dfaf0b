"""The backend's statistics on SGLang's Prometheus endpoint (--enable-metrics): gauges
``asynctls:<key>`` refreshed at the decode log interval, read here from the multiprocess directory
that SGLang's /metrics handler reads (tiny Qwen3, offload on, CPU engine)."""
from __future__ import annotations

import os

import pytest

from engine_helpers import asynctls_stats, engine, random_prompts

pytestmark = pytest.mark.engine

CFG = dict(block_size=16, block_budget=16, token_budget=64, sink_tokens=4, local_window=16,
           dense_threshold=0, calibration_tokens=64, offload=True, host_pool_tokens=16384)


def _scrape() -> dict[str, float]:
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    values = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("asynctls:"):
            name, value = line.rsplit(" ", 1)
            values[name.split("{")[0]] = float(value)
    return values


def test_statistics_are_prometheus_gauges(tiny_model_dir):
    model = tiny_model_dir("qwen3")
    params = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}
    with engine(model, "asynctls", CFG, max_total_tokens=2048, enable_metrics=True, decode_log_interval=4) as eng:
        eng.generate(input_ids=random_prompts([300, 200], seed=1), sampling_params=params)
        metrics = _scrape()
        stats = asynctls_stats(eng)
    assert metrics, "no asynctls gauge on the metrics endpoint"
    # the numbers of the same snapshot SGLang's get_server_info shows (refreshed at the last log
    # interval, so counters may lag by up to 4 steps; these do not move after the prefill)
    assert metrics["asynctls:offload_host_pool_bytes"] == stats["offload"]["host_pool_bytes"] > 0
    assert metrics["asynctls:offload_resident_capacity_blocks"] == stats["offload"]["resident_capacity_blocks"]
    assert 0 < metrics["asynctls:offload_hit_rate"] <= 1
    assert 0 < metrics["asynctls:sparse_decode_steps"] <= stats["sparse_decode_steps"]
    assert metrics["asynctls:attended_tokens_last"] == 64
    assert metrics["asynctls:offload_prefill_phases_seed_calls"] > 0
