"""select_blocks / select_tokens: the same indices, in the same order, as the torch ops
(reference.topk_indices: higher score first, then lower index; -1 past the finite scores)."""
from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICE, assert_topk_equivalent, by_device, case, poison

from asynctls_sglang.kernels import triton_ops
from asynctls_sglang.ops import torch_ops


def _scores(kind: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    if kind == "ties":
        x = torch.randint(-2, 3, shape, generator=gen).float()  # 5 values: ties everywhere
    elif kind == "signed-zeros":
        x = torch.where(torch.rand(shape, generator=gen) < 0.5, 0.0, -0.0) * torch.ones(shape)
        x[..., ::7] = torch.randn(x[..., ::7].shape, generator=gen)
    elif kind == "masked":
        x[torch.rand(shape, generator=gen) < 0.6] = float("-inf")
    elif kind == "all-masked-rows":
        x[..., :] = float("-inf")
        x[0, 0, : shape[-1] // 3] = torch.randn(shape[-1] // 3, generator=gen)
    elif kind == "wide-range":
        x = x * torch.exp(torch.randn(shape, generator=gen) * 20)  # tiny to huge, both signs
    elif kind == "near-equal":
        x = 1.0 + torch.randint(0, 4, shape, generator=gen).float() * 2.0 ** -23
    return x.to(DEVICE)


# (kind, [bs, Hk, N], k)
CASES = by_device([
    case("random", (2, 3, 50), 7, id="random-N50-k7"),
    case("ties", (2, 2, 300), 40, id="ties-N300-k40"),
    case("signed-zeros", (1, 2, 64), 20, id="signed-zeros"),
    case("masked", (3, 1, 90), 30, id="masked-60pct"),
    case("all-masked-rows", (2, 2, 33), 5, id="empty-rows"),
    case("random", (1, 2, 20), 32, id="k-larger-than-N"),
    case("masked", (2, 1, 100), 64, id="k-larger-than-finite"),
    case("wide-range", (2, 2, 200), 17, id="wide-range"),
    case("near-equal", (1, 2, 150), 60, id="one-ulp-apart"),
    case("ties", (1, 2, 2500), 300, id="multi-chunk-N2500"),
], [
    case("random", (32, 8, 2048), 128, id="gpu-blocks-128k-bs32"),
    case("ties", (4, 8, 8192), 1968, id="gpu-tokens-8192-ties"),
    case("masked", (8, 8, 8192), 1968, id="gpu-tokens-8192-masked"),
    case("random", (1, 1, 100000), 128, id="gpu-blocks-6M-ctx"),
])


@pytest.mark.parametrize("kind, shape, k", CASES)
def test_select_blocks_exact(kind, shape, k):
    scores = _scores(kind, shape, seed=shape[-1] + k)
    want = torch_ops.select_blocks(scores, k)
    out = poison(torch.empty(*shape[:-1], k, dtype=torch.int64, device=DEVICE))
    got = triton_ops.select_blocks(scores, k, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert torch.equal(got, want)


@pytest.mark.parametrize("kind, shape, k", CASES)
def test_select_tokens_exact(kind, shape, k):
    scores = _scores(kind, shape, seed=3 * shape[-1] + k)
    gen = torch.Generator().manual_seed(k)
    pos = torch.stack([torch.randperm(10 * shape[-1], generator=gen)[:shape[-1]]
                       for _ in range(shape[0] * shape[1])]).view(shape).to(DEVICE)
    want = torch_ops.select_tokens(scores, pos, k)
    # rank order on request: exactly the torch op's output
    assert torch.equal(triton_ops.select_tokens(scores, pos, k, ordered=True), want)
    # default (no register sort): the same set of positions, -1 padding included
    got = triton_ops.select_tokens(scores, pos, k)
    assert torch.equal(got.sort(-1).values, want.sort(-1).values)


def test_equivalence_helper_fails_on_a_real_difference():
    """assert_topk_equivalent (used where scores come from different kernels) must not pass
    a selection that differs beyond ties."""
    scores = torch.tensor([[3.0, 2.0, 1.0, 1.0]])
    assert_topk_equivalent(torch.tensor([[0, 3]]), torch.tensor([[0, 2]]), scores)  # a tie: fine
    with pytest.raises(AssertionError):
        assert_topk_equivalent(torch.tensor([[0, 2]]), torch.tensor([[0, 1]]), scores)
