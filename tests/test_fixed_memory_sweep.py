"""benchmarks/fixed_memory_sweep.py: each fixed-memory run's offload row against its own
full-attention row, on the JSON the H200 runs of session 22 wrote (docs/results)."""
from __future__ import annotations

import json
import os

import pytest

RESULTS = os.path.join(os.path.dirname(__file__), "..", "docs", "results", "2026-11-30")
RUNS = [os.path.join(RESULTS, "h200_session22", "callC", "e2es22c.json"),
        os.path.join(RESULTS, "h200_session22", "callB", "e2es22b.json")]


def test_each_run_against_its_own_baseline(fixed_memory_sweep, tmp_path, capsys):
    out = tmp_path / "sweep.json"
    assert fixed_memory_sweep.main([RUNS[0] + ":7 x 96k", RUNS[1] + ":8 x 96k", "--out", str(out)]) == 0
    rows = json.load(open(out))["rows"]
    seven, eight = rows
    # call C: FlashInfer 95.0 tok/s at batch 1, asynctls + offload 528.2 at batch 7
    assert (seven["batch"], seven["baseline_batch"], seven["resident_blocks"]) == (7, 1, 160)
    assert seven["ratio"] == pytest.approx(528.2 / 95.0, abs=0.01)
    assert eight["ratio"] == pytest.approx(496.6 / 95.0, abs=0.01) and eight["batch"] == 8
    # the cache's cost: more requests in the same memory, fewer resident blocks, more copies
    assert seven["hit_rate"] > eight["hit_rate"] and seven["mb_per_step"] < eight["mb_per_step"]
    assert 0 < seven["late"] < eight["late"] < 1 and 0.5 < eight["hidden"] < 1
    text = capsys.readouterr().out
    assert "| 7 x 96k | 160 | 7 of 7 | 95.0 (1) | 528.2 | 13.252 | **5.56x** |" in text
    assert (tmp_path / "sweep.png").stat().st_size > 0


def test_runs_that_cannot_be_compared_are_refused(fixed_memory_sweep, tmp_path):
    run = json.load(open(RUNS[0]))
    no_base = dict(run, rows=[r for r in run["rows"] if "offload" in r])
    (tmp_path / "a.json").write_text(json.dumps(no_base))
    with pytest.raises(SystemExit, match="one full-attention row and one offload row"):
        fixed_memory_sweep.main([str(tmp_path / "a.json"), "--out", str(tmp_path / "o.json")])
    not_fixed = dict(run, args={**run["args"], "fixed_kv_tokens": 0})
    (tmp_path / "b.json").write_text(json.dumps(not_fixed))
    with pytest.raises(SystemExit, match="not a fixed-memory run"):
        fixed_memory_sweep.main([str(tmp_path / "b.json"), "--out", str(tmp_path / "o.json")])
