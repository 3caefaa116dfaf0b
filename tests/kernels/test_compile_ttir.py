"""Every Triton kernel compiles for sm_90 (H200) on this machine, GPU or not.

The other kernel tests run under TRITON_INTERPRET=1 off the GPU, and the interpreter accepts
code the compiler rejects (e.g. `SHIFT: tl.constexpr = ...` re-assigned in a static_range loop).
compile_sm90.py drives Triton's own compiler through the kernel wrappers (real signatures and
specialisations) with a stand-in driver; it must run in a process where the kernels are
JITFunctions, hence the subprocess without TRITON_INTERPRET.

test_kernels_compile_to_ttir: frontend + TTIR passes (every code-generator error; ~20 s).
test_kernels_compile_to_cubin (marked slow): the whole pipeline down to ptxas (layouts,
tensor-core dots, register allocation; several minutes the first time, then Triton's cache).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "compile_sm90.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _compile(stage: str, timeout: int) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, SCRIPT, "--stage", stage, "--arch", "90"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    failures = proc.stdout.split("\nFAIL  ")[1:]
    assert proc.returncode == 0, (
        f"{len(failures)} kernel configurations do not compile for sm_90 ({stage}):\n"
        + "\n".join(f[:3000] for f in failures[:5]) + f"\nstderr tail:\n{proc.stderr[-3000:]}")
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("0 failed") and int(last.split(", ")[1].split()[0]) > 100, last


def test_kernels_compile_to_ttir():
    _compile("ttir", timeout=600)


@pytest.mark.slow
def test_kernels_compile_to_cubin():
    _compile("cubin", timeout=3600)


_VARIANTS = """
import sys, torch
sys.path.insert(0, {here!r})
import compile_sm90
compile_sm90._install(90, "ttir")
from asynctls_sglang.kernels.common.residency_plan import plan_residency
from asynctls_sglang.kernels.common.residency_plan_kernel import plan_residency_kernel
i64 = lambda *s: torch.empty(*s, dtype=torch.int64)
hk, c, n, m = 8, 259, 163, 32
for bs in (1, 2, 3, 5, 8):
    for mb in (100, 128, 257):
        p = bs * hk * m
        plan_residency(torch.empty(17, hk, 2049, dtype=torch.int32), i64(17, hk, c + 1), i64(17, hk, c + 1),
                       i64(1), i64(7), i64(bs), i64(bs, hk, n), i64(bs, mb), i64(bs), i64(p + 1), i64(p + 1),
                       i64(p + 1), i64(1), max_miss=m)
print("variants", len(plan_residency_kernel.device_caches[0][0]))
"""


def test_the_residency_plan_compiles_once_for_every_batch_and_page_table_width():
    """A prefill's seed plans the resident cache with its own batch size and page-table width
    (its longest prompt): each new compiled variant stalled serving for ~1.5 s on the H200's host.
    The plan kernel's plan-size tile was pow2(bs * Hk * max_miss) and the pages' row stride was
    specialised on divisibility: six variants over batch sizes 1-8. Now one."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    code = _VARIANTS.format(here=os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "variants 1", proc.stdout[-2000:]
