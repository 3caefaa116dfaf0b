"""Attention methods under test, and the launcher arguments that select each one.

full      dense attention: `--attention-backend <dense>` (torch_native on CPU, flashinfer on GPU)
asynctls  AsyncTLS two-level selection: `--asynctls-token-budget B`
quest     Quest page selection inside the AsyncTLS backend: `--asynctls-selection quest ...`
offload   asynctls with the offloading engine on: `--asynctls-offload --asynctls-token-budget B`
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

METHODS = ("full", "asynctls", "quest", "offload")
DENSE_BACKENDS = {"cpu": "torch_native", "cuda": "flashinfer"}


class Run(NamedTuple):
    method: str
    budget: int | None  # None: the method ignores budgets (runs once)
    server_args: list[str]

    @property
    def label(self) -> str:
        return self.method if self.budget is None else f"{self.method}@{self.budget}"


def plan_runs(methods: Sequence[str], budgets: Sequence[int], device: str,
              full_backend: str | None = None, dense_threshold: int | None = None) -> list[Run]:
    """One server run per (method, budget); `full` once, whatever the budgets."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
    runs: list[Run] = []
    if "full" in methods:
        runs.append(Run("full", None, ["--attention-backend", full_backend or DENSE_BACKENDS[device]]))
    for budget in budgets:
        # NOTE: sparse from the budget on unless told otherwise, stated explicitly so that a run
        # measures the sparse path whatever the launcher's default threshold is
        threshold = ["--asynctls-dense-threshold", str(budget if dense_threshold is None else dense_threshold)]
        if "asynctls" in methods:
            runs.append(Run("asynctls", budget, ["--asynctls-token-budget", str(budget), *threshold]))
        if "offload" in methods:
            runs.append(Run("offload", budget, ["--asynctls-offload",
                                                 "--asynctls-token-budget", str(budget), *threshold]))
        if "quest" in methods:
            runs.append(Run("quest", budget, ["--asynctls-selection", "quest",
                                               "--asynctls-token-budget", str(budget), *threshold]))
    return runs


def device_args(device: str, context: int, mem_fraction_static: float | None,
                concurrency: int = 1) -> list[str]:
    """Server arguments every run shares: the KV pool holds one context more than in flight."""
    if concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1, got {concurrency}")
    args = ["--context-length", str(context),
            "--max-total-tokens", str((concurrency + 1) * context + 1024)]
    if device == "cpu":
        # fp32: bf16 has no native path on these CPUs (~4x slower). CUDA graphs do not exist on
        # CPU. Without --mem-fraction-static SGLang's CPU default leaves no room for the KV pool.
        # --sleep-on-idle: an idle scheduler polls at 100% of a core, taken from the harness.
        args += ["--device", "cpu", "--dtype", "float32", "--disable-cuda-graph", "--sleep-on-idle",
                 "--chunked-prefill-size", "8192",
                 "--mem-fraction-static", str(mem_fraction_static or 0.5)]
    elif mem_fraction_static is not None:
        args += ["--mem-fraction-static", str(mem_fraction_static)]
    return args


def detect_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
