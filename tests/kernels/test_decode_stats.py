"""The decode statistics' one-launch update (kernels/common/decode_stats) against DecodeStats'
torch form: the same counters after every call of a sequence (rows counted and not, heads 1 and
8, rows with nothing attended, a call that counts no row, more (request, head) rows than one
program takes, a strided view), and the kernel's scratch words back to zero after each call."""
from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICE, by_device, case

from asynctls_sglang.adapter.stats import DecodeStats


def _positions(n: int, hk: int, w: int, g: torch.Generator) -> torch.Tensor:
    """[n, Hk, w] positions, each row with its own number of -1 (unused) entries, in random places."""
    pos = torch.randint(0, 10**6, (n, hk, w), generator=g)
    unused = torch.rand(n, hk, 1, generator=g) * torch.rand(n, hk, w, generator=g) > 0.3
    pos[unused] = -1
    pos[0, 0] = -1  # a row with nothing attended
    return pos.to(DEVICE)


@pytest.mark.parametrize("n,hk,w", by_device([
    case(3, 1, 37, id="mla-3x37"), case(5, 8, 300, id="gqa-5x8x300"), case(1, 4, 1, id="one-column"),
], [
    case(48, 8, 2112, id="gpu-48x8x2112"), case(6, 1, 2112, id="gpu-glm-6x2112"),
]))
def test_one_launch_updates_the_counters_as_the_torch_form(n, hk, w):
    g = torch.Generator().manual_seed(n * 100 + hk)
    ref, ker = DecodeStats(DEVICE, kernel=False), DecodeStats(DEVICE, kernel=True)
    count_before = 0
    for call in range(6):
        pos = _positions(n, hk, w + 5, g)[:, :, 2:w + 2]  # a view: row strides past its width
        dense = None if call % 3 == 0 else (torch.rand(n, generator=g) < 0.4).to(DEVICE)
        if call == 4:
            dense = torch.ones(n, dtype=torch.bool, device=DEVICE)  # no row counted: last is 0
        ref.record(pos, dense)
        ker.record(pos, dense)
        assert torch.equal(ker._acc[:5], ref._acc[:5]), (call, ker._acc.tolist(), ref._acc[:5].tolist())
        assert ker._acc[5:].tolist() == [0, 0]  # the scratch maximum and the ticket, reset
        assert ker.snapshot() == ref.snapshot()
        if call == 4:  # `last` is this call's maximum: 0 when no row is counted
            assert int(ker._last) == 0 and int(ker._count) == count_before
        count_before = int(ker._count)
    assert ref.snapshot()["attended_tokens_min"] == 0 < ref.snapshot()["attended_tokens_max"]
