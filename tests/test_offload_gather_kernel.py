"""The block-copy Triton kernel against the torch path: exact, poisoned outputs, fixed grid with a
device-side count. On the CPU it runs under TRITON_INTERPRET=1 (set before the kernel is defined)."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from offload_testing import bits  # noqa: E402

from asynctls_sglang.kernels.interpret import lang_interpreted, patch_interpreter  # noqa: E402

patch_interpreter()  # the kernel's loop has a run-time bound (the live count)

from asynctls_sglang.kernels.common import gather_host  # noqa: E402
from asynctls_sglang.kernels.common.gather_host_kernel import copy_blocks_kernel  # noqa: E402
from asynctls_sglang.memory.block_copy import copy_blocks_torch  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

CASES = [
    pytest.param(16, 3, 10, True, torch.bfloat16, id="per-head-hk3-d10-bf16"),
    pytest.param(8, 8, 16, False, torch.float16, id="whole-block-hk8-fp16"),
    pytest.param(4, 1, 576, False, torch.bfloat16, id="mla-576"),
    pytest.param(4, 2, 100, True, torch.float32, id="per-head-d100-fp32"),
    # 320 columns in chunks of 128 (8192 // B): spread takes three column programs, the last partial
    pytest.param(64, 4, 80, False, torch.bfloat16, id="whole-block-b64-w320"),
]


@pytest.mark.parametrize("spread", [False, True], ids=["entries", "entries-and-columns"])
@pytest.mark.parametrize("programs", [32, 3, 2], ids=["one-program-per-entry", "three-programs", "two-programs"])
@pytest.mark.parametrize("b, hk, d, per_head, dtype", CASES)
def test_kernel_equals_torch_path(b, hk, d, per_head, dtype, programs, spread, monkeypatch):
    # the default (PROGRAMS) for one half of the cases, the argument (the copy_programs setting) for the other
    if spread:
        monkeypatch.setattr(gather_host, "PROGRAMS", 1)
    else:
        monkeypatch.setattr(gather_host, "PROGRAMS", programs)
    interpreted = type(copy_blocks_kernel).__name__ == "InterpretedFunction" and lang_interpreted()
    if DEVICE.type == "cpu" and not interpreted:
        pytest.skip("the kernel or triton.language was loaded before TRITON_INTERPRET was set in this process")
    gen = torch.Generator().manual_seed(b * d)
    n_src, n_dst, p = 9, 7, 6
    src = torch.randint(-30000, 30000, (n_src * b, hk, d), generator=gen, dtype=torch.int32)
    src = src.to(bits(torch.empty(0, dtype=dtype)).dtype).view(dtype)
    src_block = torch.tensor([3, 8, -1, 0, 5, 2])
    dst_block = torch.tensor([6, 0, 2, 4, 1, 3])  # entry 5 lies past the count: must not move
    head = torch.tensor([h % hk for h in (2, 0, 1, 1, 0, 2)])
    count = torch.tensor([5])
    src2 = torch.flip(src, (0,)).contiguous()  # V: other payload, same shape
    want = torch.full((n_dst * b, hk, d), float("nan"), dtype=dtype)
    want2 = want.clone()
    got, got2 = want.clone().to(DEVICE), want.clone().to(DEVICE)
    copy_blocks_torch(src, want, src_block, dst_block, count, b, head if per_head else None)
    copy_blocks_torch(src2, want2, src_block, dst_block, count, b, head if per_head else None)
    pin = (lambda t: t.pin_memory()) if DEVICE.type == "cuda" else (lambda t: t)  # UVA read on a GPU
    gather_host.copy_blocks(pin(src), got, src_block.to(DEVICE), dst_block.to(DEVICE), count.to(DEVICE), b,
                            head.to(DEVICE) if per_head else None, pair=(pin(src2), got2), spread=spread,
                            programs=programs if spread else None)
    assert torch.equal(bits(got.cpu()), bits(want))
    assert torch.equal(bits(got2.cpu()), bits(want2))
    moved = (~want.isnan()).view(n_dst, b, hk, d).any(-1).any(1).sum()
    assert moved == (4 if per_head else 4 * hk)  # 4 live entries, entry 2 (-1) and 5 skipped
    assert p == src_block.shape[0]


def test_rejects_mismatched_buffers():
    a = torch.zeros(8, 2, 4)
    with pytest.raises(ValueError, match="copy_blocks"):
        gather_host.copy_blocks(a, torch.zeros(8, 2, 5), torch.zeros(1, dtype=torch.int64),
                                torch.zeros(1, dtype=torch.int64), torch.ones(1, dtype=torch.int64), 4)


def test_constexprs_do_not_follow_the_plan_size(monkeypatch):
    """Every plan size launches the same compiled variant: a constexpr that followed the entry
    count (the stride was min(P, PROGRAMS) once) compiled a new kernel for each small count
    while serving (prefills write through and load back a varying number of blocks)."""
    launches = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kw: launches.append((grid, {k: v for k, v in kw.items() if k.isupper()}))

    monkeypatch.setattr(gather_host, "copy_blocks_kernel", Recorder())
    buf = torch.zeros(64 * 4, 2, 8)
    for p in (1, 3, 31, 32, 33, 500):
        blocks = torch.zeros(p, dtype=torch.int64)
        gather_host.copy_blocks(buf, buf.clone(), blocks, blocks, torch.ones(1, dtype=torch.int64), 64, pair=(buf, buf))
    assert len({tuple(sorted(kw.items())) for _, kw in launches}) == 1
    # on the CPU nothing is on a GPU: one column program (a copy with host memory on a GPU too)
    assert [grid for grid, _ in launches] == [(1, 1), (3, 1), (31, 1), (32, 1), (32, 1), (32, 1)]
    launches.clear()
    gather_host.copy_blocks(buf, buf.clone(), blocks, blocks, torch.ones(1, dtype=torch.int64), 64, spread=True)
    assert launches[0][0] == (32, 1)  # 16 columns: one chunk
    wide = torch.zeros(64 * 4, 8, 128)  # 1024 columns in chunks of 8192 // 64 = 128
    gather_host.copy_blocks(wide, wide.clone(), blocks, blocks, torch.ones(1, dtype=torch.int64), 64, spread=True)
    assert launches[1][0] == (32, 8)
