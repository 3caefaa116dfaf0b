"""benchmarks/kernel_bench.py --sweep (GPU-only script; its bookkeeping is checked here): which
kernel each stage varies, the labels, the table, and a clear error for an unknown stage."""
from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import kernel_bench  # noqa: E402


def test_each_stage_varies_its_own_kernel():
    from asynctls_sglang.kernels.common import block_score, token_score, token_select, topk
    from asynctls_sglang.kernels.gqa import decode as gqa_decode
    from asynctls_sglang.kernels.mla import decode as mla_decode

    assert kernel_bench.sweep_module("attention", SimpleNamespace(mla=False)) is gqa_decode
    assert kernel_bench.sweep_module("attention", SimpleNamespace(mla=True)) is mla_decode
    assert kernel_bench.sweep_module("block_score", SimpleNamespace(mla=True)) is block_score
    assert kernel_bench.sweep_module("token_topk", SimpleNamespace(mla=False)) is topk
    assert kernel_bench.sweep_module("cand_score", SimpleNamespace(mla=False)) is token_score
    assert kernel_bench.sweep_module("token_select", SimpleNamespace(mla=True)) is token_select
    for module in (gqa_decode, mla_decode, block_score, token_score, topk, token_select):
        assert module.SWEEP and all(set(o) <= set(module.LAUNCH) for o in module.SWEEP)


def test_table_marks_the_fastest_configuration(capsys):
    rows = [{"model": "qwen3-8b", "ctx": 131072, "bs": 8, "budget": 2048,
             "sweep": {"attention": {"default": 0.0469, "waves=4": 0.031, "block_n=64,waves=4": 0.05}}},
            {"model": "qwen3-8b", "ctx": 32768, "bs": 1, "budget": 2048}]  # not swept: no line
    kernel_bench.print_sweep(rows)
    out = capsys.readouterr().out
    assert "| model | ctx | bs | K | default | waves=4 | block_n=64,waves=4 |" in out
    assert "| qwen3-8b | 131072 | 8 | 2048 | 46.9 | 31.0* | 50.0 |" in out
    assert "32768" not in out
    assert kernel_bench.launch_label({}) == "default"


def test_unknown_stage_is_refused():
    with pytest.raises(SystemExit):
        kernel_bench.parse_args(["--sweep", "attention,topk"])
    assert kernel_bench.parse_args(["--sweep", "attention,block_score"]).sweep == "attention,block_score"
