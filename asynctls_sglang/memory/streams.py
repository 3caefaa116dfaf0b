"""Named side streams and per-layer events that degrade to ordered no-ops off the GPU.

On the CPU every op runs inline in program order, which is the strongest ordering the GPU code
relies on, so the same engine code is exact (and testable) on both.
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch


def _on_cuda(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available()


class SideStream:
    """A named CUDA stream for copies (None off the GPU)."""

    def __init__(self, name: str, device: torch.device | str) -> None:
        self.name = name
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if _on_cuda(self.device) else None
        self.forked_in_capture = False  # this stream is part of the graph being captured

    def fork(self) -> None:
        """Order everything issued next on this stream after what the caller's stream has issued.

        NOTE: implemented as wait_stream (an event recorded on the current stream, waited here);
        also valid inside CUDA-graph capture, where it forks this stream into the graph.
        """
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            if capturing():
                self.forked_in_capture = True

    def keep_alive(self, *tensors: torch.Tensor) -> None:
        """Tensors that work queued on this stream reads: the caching allocator must not hand
        their memory to the caller's stream before that work ran (they are usually the caller's
        temporaries). No-op off the GPU."""
        if self.stream is not None:
            for t in tensors:
                if t.is_cuda:
                    t.record_stream(self.stream)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        if self.stream is None:
            yield
            return
        with torch.cuda.stream(self.stream):
            yield

    def join_into_current(self) -> None:
        """The caller's stream waits for everything issued on this stream (e.g. before capture
        ends, every forked stream must be joined back).

        NOTE: inside a capture only a stream forked into it is joined: joining one that holds
        only eager work records an event outside the graph, which CUDA refuses
        (cudaErrorStreamCaptureIsolation; seen on the H200 when a capture used the copy stream
        but not the write-through stream)."""
        if self.stream is None:
            return
        if capturing():
            if not self.forked_in_capture:
                return
            self.forked_in_capture = False
        torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def __repr__(self) -> str:
        return f"SideStream({self.name!r}, {self.device})"


def capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class LayerEvents:
    """One CUDA event per layer: recorded on a side stream, waited on by the compute stream.

    Each event remembers whether it was recorded in the current step (see new_step) or in an
    earlier one, and whether it was recorded inside a CUDA-graph capture. NOTE (which waits are
    made, see must_wait): while a graph is captured, only events recorded in the same step of
    the same capture: a replay ends only after every stream it forked has joined back, and
    replays on one stream run one after the other, so copies of an earlier replay are complete,
    and work recorded outside the capture cannot be a dependency of the graph (CUDA refuses it:
    cudaErrorStreamCaptureIsolation; SGLang runs eager warm-up forwards right before each
    capture, which record such events). Eager work that precedes a replay is joined by the
    caller (TransferEngine.before_replay). Outside a capture, an event last recorded inside one
    stands for no eager work and is not waited on.
    """

    def __init__(self, num_layers: int, device: torch.device | str, timing: bool = False) -> None:
        self.device = torch.device(device)
        on = _on_cuda(self.device)
        self.events = [torch.cuda.Event(enable_timing=timing) if on else None for _ in range(num_layers)]
        self.state: list[str | None] = [None] * num_layers  # None, "earlier" or "this" step
        self.in_capture = [False] * num_layers  # recorded while a graph was being captured

    def new_step(self) -> None:
        self.state = [None if s is None else "earlier" for s in self.state]

    def record(self, layer: int, stream: SideStream | None = None) -> None:
        event = self.events[layer]
        if event is not None:
            event.record(stream.stream if stream is not None and stream.stream is not None
                         else torch.cuda.current_stream(self.device))
        self.state[layer] = "this"
        self.in_capture[layer] = capturing()

    def must_wait(self, layer: int, now_capturing: bool) -> bool:
        """Whether wait(layer) orders anything (the rule in the class docstring)."""
        state = self.state[layer]
        if state is None:
            return False
        if now_capturing:
            return state == "this" and self.in_capture[layer]
        return not self.in_capture[layer]

    def wait(self, layer: int) -> None:
        """The current stream waits for the event of `layer` (no-op if never recorded / CPU)."""
        event = self.events[layer]
        if event is None or not self.must_wait(layer, capturing()):
            return
        torch.cuda.current_stream(self.device).wait_event(event)


class PhaseClock:
    """Where the offload engine's eager work (a prefill's load-back, seeds, write-through,
    demotion) spends its time, always on and without a host sync: per phase the host time of the
    calls and the span on the caller's stream between two CUDA events (GPU work plus any gap the
    host leaves; read when the events have completed). Off the GPU the stream span is the host
    time. Nothing is recorded inside a CUDA-graph capture."""

    def __init__(self, device: torch.device | str) -> None:
        self.cuda = _on_cuda(torch.device(device))
        self.calls: dict[str, int] = {}
        self.host_s: dict[str, float] = {}
        self.stream_s: dict[str, float] = {}
        self._open: dict[str, tuple] = {}
        self._pending: list[tuple] = []

    def start(self, name: str) -> None:
        if capturing():
            return
        self._open[name] = (time.perf_counter(), self._event())

    def stop(self, name: str) -> None:
        opened = self._open.pop(name, None)
        if opened is None:
            return
        t0, e0 = opened
        host = time.perf_counter() - t0
        self.calls[name] = self.calls.get(name, 0) + 1
        self.host_s[name] = self.host_s.get(name, 0.0) + host
        if self.cuda:
            self._pending.append((name, e0, self._event()))
            if len(self._pending) > 512:
                self._fold()
        else:
            self.stream_s[name] = self.stream_s.get(name, 0.0) + host

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def snapshot(self) -> dict:
        """{phase: {calls, host_s, stream_s}} (stream_s: the completed spans)."""
        # NOTE: copies: the metrics are read by the scheduler while a forward may be adding a phase
        self._fold()
        host, stream = dict(self.host_s), dict(self.stream_s)
        return {n: {"calls": c, "host_s": round(host.get(n, 0.0), 4), "stream_s": round(stream.get(n, 0.0), 4)}
                for n, c in dict(self.calls).items()}

    def _event(self):
        if not self.cuda:
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _fold(self) -> None:
        keep = []
        pending, self._pending = self._pending, []
        for name, e0, e1 in pending:
            if e1.query():
                self.stream_s[name] = self.stream_s.get(name, 0.0) + e0.elapsed_time(e1) / 1000
            else:
                keep.append((name, e0, e1))
        self._pending = keep + self._pending
