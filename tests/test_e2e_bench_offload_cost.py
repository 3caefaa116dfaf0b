"""benchmarks/e2e_bench.py's offload cost table: per point, the step's growth with offload, the
bytes of that point alone (the offload stats are cumulative per engine), their copy time and the
share of it hidden at least. Checked on the H200 run of session 5 (docs/results.md: 331 / 742 MB
per step, +34% / +46%)."""
from __future__ import annotations

import copy
import json
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
RUN = os.path.join(HERE, "..", "docs", "results", "2026-11-29", "h200_session5", "e2e_offload.json")


@pytest.fixture()
def rows():
    return json.load(open(RUN))["rows"]


def test_per_point_bytes_growth_and_hidden_share(e2e_bench, rows):
    cost = e2e_bench.offload_cost(rows, 52.3)
    assert [(c["bs"], c["ctx"]) for c in cost] == [(8, 65536), (8, 131072)]
    c64, c128 = cost
    assert c64["mb_per_step"] == pytest.approx(330.8, abs=0.1)  # the first point: its own counters
    assert c128["mb_per_step"] == pytest.approx(742.0, abs=0.1)  # the second: the difference
    assert c64["step_growth"] == pytest.approx(0.338, abs=1e-3) and c128["step_growth"] == pytest.approx(0.456, abs=1e-3)
    # 742 MB at 52.3 GB/s = 14.19 ms of copies; the step grew 4.8 ms: at least 66% hidden
    assert c128["copy_ms_per_step"] == pytest.approx(14.19, abs=0.01)
    assert c128["hidden_at_least"] == pytest.approx(1 - (15.348 - 10.543) / 14.19, abs=1e-3)
    assert c128["hit_rate"] == pytest.approx(0.913, abs=1e-3)  # docs/results.md, session 5
    table = e2e_bench.offload_table(cost)
    assert "| 8 | 131072 | 10.543 / 15.348 | +46% | 742.0 | 0.913 | 14.19 (at 52.3 GB/s) | 66% |" in table


def test_growth_beyond_the_copy_time_bounds_nothing(e2e_bench, rows):
    slow = copy.deepcopy(rows)
    for r in slow:
        if "+offload" in r["backend"]:
            r["itl_ms_median"] += 20.0
    assert [c["hidden_at_least"] for c in e2e_bench.offload_cost(slow, 52.3)] == [0.0, 0.0]


def test_points_without_a_baseline_keep_their_bytes_and_fixed_memory_or_eager_are_left_out(e2e_bench, rows):
    alone = [r for r in rows if "+offload" in r["backend"]]
    cost = e2e_bench.offload_cost(alone, 52.3)
    assert [c["mb_per_step"] for c in cost] == pytest.approx([330.8, 742.0], abs=0.1)
    assert all(c["step_growth"] is None and c["hidden_at_least"] is None for c in cost)
    assert "| - / 15.348 | - | 742.0 |" in e2e_bench.offload_table(cost)
    fixed = copy.deepcopy(rows)
    for r in fixed:
        r["batch_reached"] = r["bs"]
    assert e2e_bench.offload_cost(fixed, 52.3) == []
    timed = copy.deepcopy(rows)
    for r in timed:
        r["backend"] = r["backend"].replace("+offload", "+offload(eager, timed)")
    assert e2e_bench.offload_cost(timed, 52.3) == []  # eager decode against the graph step: no bound


def test_the_baseline_can_be_another_backend(e2e_bench):
    """--offload-base: session 14's call C compared offload with a --variant (every row sparse):
    413 MB per step at 8 x 64k, 7.9 ms of copies, the step 2.2 ms longer: at least 72% hidden."""
    run = os.path.join(HERE, "..", "docs", "results", "2026-11-30", "h200_session14", "callC", "e2e_s14c_off.json")
    rows = json.load(open(run))["rows"]
    assert [c["step_growth"] for c in e2e_bench.offload_cost(rows, 52.3)] == [None, None]
    c4, c64 = e2e_bench.offload_cost(rows, 52.3, "sparse")
    assert c4["mb_per_step"] == 0 and c4["step_growth"] == pytest.approx(9.62 / 8.195 - 1, abs=1e-3)
    assert c64["mb_per_step"] == pytest.approx(412.6, abs=0.1) and c64["hidden_at_least"] == pytest.approx(0.725, abs=2e-3)
    with pytest.raises(SystemExit, match="--offload-base 'nope' is not one of --backends"):
        e2e_bench.main(["--backends", "flashinfer,asynctls", "--offload-base", "nope"])
