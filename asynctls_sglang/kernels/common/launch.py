"""Helpers for the kernel wrappers: shape checks, sizes, and the device's SM count.

Everything here works on Python ints and tensor metadata only: no host syncs.
"""
from __future__ import annotations

import contextlib
import functools

import torch
import triton

FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def check_counts(counts, bs: int) -> None:
    """Per-row column counts of a decode attention: None, or [bs] integers (on the device)."""
    check(counts is None or (tuple(counts.shape) == (bs,) and not counts.dtype.is_floating_point),
          f"counts must be [{bs}] integers")


def pow2(n: int, least: int = 1) -> int:
    """The smallest power of two >= max(n, least)."""
    return max(triton.next_power_of_2(max(int(n), 1)), least)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of `device` (a fixed 8 off the GPU, for the interpreter)."""
    if device.type != "cuda":
        return 8
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def check_out(out: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype,
              device: torch.device, name: str) -> torch.Tensor:
    """Return `out` after checking it, or a new uninitialised tensor of that shape."""
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    check(tuple(out.shape) == tuple(shape) and out.dtype == dtype and out.device == device,
          f"{name}: out must be {tuple(shape)} {dtype} on {device}, got "
          f"{tuple(out.shape)} {out.dtype} on {out.device}")
    check(out.is_contiguous(), f"{name}: out must be contiguous")
    return out


@contextlib.contextmanager
def launch_overrides(launch: dict, overrides: dict):
    """A kernel wrapper's LAUNCH parameters changed inside the block, restored after (also on
    error); for benchmarks/kernel_bench.py --sweep and the tests of each SWEEP alternative."""
    unknown = set(overrides) - set(launch)
    check(not unknown, f"unknown launch parameters {sorted(unknown)}; known: {sorted(launch)}")
    saved = dict(launch)
    launch.update(overrides)
    try:
        yield
    finally:
        launch.clear()
        launch.update(saved)
