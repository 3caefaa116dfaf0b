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


def test_gpu_spans_are_read_when_their_events_complete(monkeypatch):
    """The CUDA path with stand-in events: a span counts once its end event has completed, and an
    incomplete one waits for a later snapshot (no host sync)."""
    import torch

    from asynctls_sglang.memory import streams

    clock_ms = iter(range(0, 1000, 10))  # each recorded event: 10 ms after the previous one

    class Event:
        done = False

        def __init__(self, enable_timing):
            assert enable_timing

        def record(self):
            self.t = next(clock_ms)

        def query(self):
            return self.done

        def elapsed_time(self, end):
            return end.t - self.t

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(streams, "_on_cuda", lambda device: True)
    clock = PhaseClock("cuda")
    with clock.phase("load_back"):
        pass
    with clock.phase("seed"):
        pass
    first = clock.snapshot()
    assert first["load_back"]["calls"] == 1 and first["load_back"]["stream_s"] == 0.0  # not complete yet
    clock._pending[0][2].done = True  # load_back's end event completed, seed's not yet
    snap = clock.snapshot()
    assert snap["load_back"]["stream_s"] == 0.01 and snap["seed"]["stream_s"] == 0.0
    clock._pending[0][2].done = True
    assert clock.snapshot()["seed"]["stream_s"] == 0.01 and clock._pending == []
