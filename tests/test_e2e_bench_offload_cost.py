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


def test_locality_saving_and_the_profiled_copy_time(e2e_bench):
    """Session 21's call B: cap 4 profiled at 8 x 64k / 128k (7.714 / 7.833 ms of copy kernel a step,
    96.6% beside other kernels), the default cap not profiled. moved / needed: the point's blocks
    moved over the blocks its selections needed (the bytes against k_b x B)."""
    run = os.path.join(HERE, "..", "docs", "results", "2026-11-30", "h200_session21", "callB", "e2es21b.json")
    rows = json.load(open(run))["rows"]
    cost = {(c["backend"].split("(")[0], c["ctx"]): c for c in e2e_bench.offload_cost(rows, 52.3, "sparse")}
    cap64, cap128, def128 = cost["cap4", 65536], cost["cap4", 131072], cost["asynctls", 131072]
    assert cap64["hidden_profile"] == pytest.approx(0.966) and cap128["hidden_profile"] == pytest.approx(0.966)
    assert cap128["copy_gbps_profile"] == pytest.approx(293.4 / 7.833, abs=0.1)  # MB per step / ms of copies
    assert cap64["copy_gbps_profile"] == pytest.approx(209.1 / 7.714, abs=0.1)
    assert def128["hidden_profile"] is None and def128["copy_gbps_profile"] is None
    # the second point's blocks alone (the counters are cumulative over the engine's points)
    first, second = [r["offload"] for r in rows if r["backend"].startswith("asynctls(") and "offload" in r]
    expect = (second["blocks_moved"] - first["blocks_moved"]) / (second["blocks_needed"] - first["blocks_needed"])
    assert def128["moved_of_needed"] == pytest.approx(expect, abs=1e-4) and 0.07 < expect < 0.085
    assert cap128["moved_of_needed"] < def128["moved_of_needed"]  # the cap moves fewer blocks
    table = e2e_bench.offload_table(list(cost.values()))
    assert "| 86% | 3.1% | 96.6% | 37.5 |" in table and "| 48% | 7.8% | - | - |" in table
