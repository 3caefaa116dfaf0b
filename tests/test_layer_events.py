"""Which per-layer event waits the offload engine makes, eagerly and inside a CUDA-graph capture.

The CUDA behaviour is only reachable on a GPU (tests/gpu); the rule that decides it is plain
Python and is pinned here. The sequence is SGLang's: eager warm-up forwards right before each
capture, then the capture, then eager prefills and replays.
"""
from __future__ import annotations

import pytest

from asynctls_sglang.memory import streams
from asynctls_sglang.memory.streams import LayerEvents


@pytest.fixture
def capture(monkeypatch):
    state = {"on": False}
    monkeypatch.setattr(streams, "capturing", lambda: state["on"])
    return state


def test_never_recorded_is_never_waited(capture):
    ev = LayerEvents(2, "cpu")
    assert not ev.must_wait(0, False) and not ev.must_wait(0, True)


def test_eager_steps_wait_for_this_and_earlier_steps(capture):
    ev = LayerEvents(1, "cpu")
    ev.new_step()
    ev.record(0)
    assert ev.must_wait(0, False)
    ev.new_step()
    assert ev.must_wait(0, False)  # a copy issued at the previous step may still run


def test_capture_never_depends_on_eager_warmup_work(capture):
    ev = LayerEvents(1, "cpu")
    ev.new_step()
    ev.record(0)  # SGLang's eager warm-up forward, same step counter as the capture
    capture["on"] = True
    # waiting here made CUDA fail the capture (cudaErrorStreamCaptureIsolation) on the H200
    assert not ev.must_wait(0, True)
    ev.new_step()
    assert not ev.must_wait(0, True)
    ev.record(0)  # the capture's own copy of this layer
    assert ev.must_wait(0, True)
    ev.new_step()
    assert not ev.must_wait(0, True)  # an earlier replay has finished: replays are serial


def test_eager_step_after_a_capture_skips_events_recorded_in_it(capture):
    ev = LayerEvents(1, "cpu")
    capture["on"] = True
    ev.new_step()
    ev.record(0)
    capture["on"] = False
    ev.new_step()
    assert not ev.must_wait(0, False)
    ev.record(0)
    assert ev.must_wait(0, False)


class _FakeStream:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def wait_stream(self, other):
        self.log.append((self.name, "waits", other.name))


def test_side_stream_joins_a_capture_only_if_forked_into_it(capture, monkeypatch):
    from asynctls_sglang.memory.streams import SideStream

    log = []
    current = _FakeStream(log, "compute")
    monkeypatch.setattr(streams.torch.cuda, "current_stream", lambda device=None: current)
    side = SideStream("h2d", "cpu")
    side.stream = _FakeStream(log, "side")
    side.fork()  # eager work before the capture
    capture["on"] = True
    side.join_into_current()  # the graph never used this stream: joining it would break capture
    assert log == [("side", "waits", "compute")]
    side.fork()
    side.join_into_current()
    assert log[-2:] == [("side", "waits", "compute"), ("compute", "waits", "side")]
    side.join_into_current()  # already joined in this capture
    assert len(log) == 3
    capture["on"] = False
    side.join_into_current()  # eager joins always happen
    assert log[-1] == ("compute", "waits", "side")
