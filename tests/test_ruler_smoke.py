"""End to end: RULER niah_single_1 at 1k tokens on SmolLM2, dense and AsyncTLS servers.

Generates the data (cached afterwards), launches `asynctls_sglang.launch_server` twice
(torch_native dense; asynctls with budget 256 and dense threshold 0, so decode is sparse),
and checks the table, JSON and plot. ~2-2.5 min on 2 cores.
"""
from __future__ import annotations

import importlib.util
import json
import os

import pytest

from asynctls_sglang.eval.ruler import main

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600)]

TASK = "niah_single_1"


def _methods() -> str:
    # The launcher is written alongside this harness; without it, only dense runs (through it
    # being absent, SGLang's own launcher).
    return "full,asynctls" if importlib.util.find_spec("asynctls_sglang.launch_server") else "full"


def test_ruler_smoke(tmp_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = os.path.join(tmp_path, "ruler")
    methods = _methods()
    argv = ["--context", "1024", "--samples", "2", "--tasks", TASK, "--methods", methods,
            "--budgets", "256", "--dense-threshold", "0", "--device", "cpu", "--out", out,
            "--server-timeout", "300"]
    if methods == "full":
        argv += ["--launcher", "sglang.launch_server"]
    assert main(argv) == 0

    printed = capsys.readouterr().out
    assert f"[full] {TASK} 2/2 score" in printed
    with open(os.path.join(out, "table.txt")) as handle:
        table = handle.read()
    assert TASK in table and "average" in table

    with open(os.path.join(out, "ruler.json")) as handle:
        payload = json.load(handle)
    scores = {(e["task"], e["method"]): e["score"] for e in payload["table"] if e["task"] == TASK}
    assert set(scores) == {(TASK, method) for method in methods.split(",")}
    assert all(0.0 <= value <= 1.0 for value in scores.values()), scores
    # SmolLM2 finds a single needle in 1k tokens with dense attention (2/2 when last run).
    assert scores[(TASK, "full")] > 0.0
    assert len(payload["samples"]) == 2 * len(methods.split(","))
    # the sparse run's own account is kept with the scores: it really decoded at the budget
    if "asynctls" in methods:
        stats = payload["timings"]["asynctls@256.asynctls"]
        assert stats["sparse_request_steps"] > 0 and stats["attended_tokens_max"] == 256
        assert "full.asynctls" not in payload["timings"]  # the dense backend reports none

    with open(os.path.join(out, "ruler.png"), "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
