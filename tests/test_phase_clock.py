"""PhaseClock (memory.streams): the offload engine's prefill phases timed without a host sync."""
from __future__ import annotations

import time

import pytest

from asynctls_sglang.memory.streams import PhaseClock


def test_phases_count_calls_and_time_on_the_cpu():
    clock = PhaseClock("cpu")
    for _ in range(3):
        with clock.phase("seed"):
            time.sleep(0.01)
    clock.start("prefill")
    time.sleep(0.02)
    clock.stop("prefill")
    clock.stop("never started")  # ignored
    snap = clock.snapshot()
    assert set(snap) == {"seed", "prefill"}
    assert snap["seed"]["calls"] == 3 and snap["prefill"]["calls"] == 1
    assert snap["seed"]["host_s"] >= 0.03 and snap["prefill"]["host_s"] >= 0.02
    assert snap["seed"]["stream_s"] == snap["seed"]["host_s"]  # off the GPU the span is host time


def test_a_phase_that_raises_is_still_closed():
    clock = PhaseClock("cpu")
    with pytest.raises(ValueError):
        with clock.phase("demote"):
            raise ValueError("boom")
    assert clock.snapshot()["demote"]["calls"] == 1
