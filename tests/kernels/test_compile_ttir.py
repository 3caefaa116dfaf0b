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
