"""select_blocks / select_tokens: the same indices, in the same order, as the torch ops
(reference.topk_indices: higher score first, then lower index; -1 past the finite scores)."""
from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICE, assert_topk_equivalent, by_device, case, launch_id, poison

from asynctls_sglang.kernels import triton_ops
from asynctls_sglang.kernels.common import topk
from asynctls_sglang.kernels.common.topk import RESIDENT_MAX_N
from asynctls_sglang.kernels.common.launch import launch_overrides
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
    elif kind == "negative-masked":  # every finite score < 0: -inf keys share their high bits
        x = -x.abs() - 2.0 ** -10
        x[torch.rand(shape, generator=gen) < 0.6] = float("-inf")
    elif kind == "all-masked-rows":
        x[..., :] = float("-inf")
        x[0, 0, : shape[-1] // 3] = torch.randn(shape[-1] // 3, generator=gen)
    elif kind == "wide-range":
        x = x * torch.exp(torch.randn(shape, generator=gen) * 20)  # tiny to huge, both signs
    elif kind == "near-equal":
        x = 1.0 + torch.randint(0, 4, shape, generator=gen).float() * 2.0 ** -23
    elif kind == "all-equal":
        x = torch.full(shape, 0.375)
    elif kind == "ragged":  # each row: a random number of finite scores, then padding
        lens = torch.randint(0, shape[-1] + 1, shape[:-1], generator=gen)
        x[torch.arange(shape[-1]) >= lens.unsqueeze(-1)] = float("-inf")
    elif kind == "infinities":  # +inf is a score like any other; -inf never chosen
        x[torch.rand(shape, generator=gen) < 0.1] = float("inf")
        x[torch.rand(shape, generator=gen) < 0.3] = float("-inf")
    elif kind == "extremes":  # the largest / smallest finite floats and denormals next to zero
        vals = torch.tensor([3.4028235e38, -3.4028235e38, 1e-45, -1e-45, 0.0, 1.0, -1.0])
        x = vals[torch.randint(0, len(vals), shape, generator=gen)]
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
    case("negative-masked", (2, 2, 300), 50, id="negative-and-minus-inf"),
    case("wide-range", (2, 2, 200), 17, id="wide-range"),
    case("near-equal", (1, 2, 150), 60, id="one-ulp-apart"),
    case("ties", (1, 2, 2500), 300, id="multi-chunk-N2500"),
    case("random", (3, 1, 1), 1, id="N1-k1"),
    case("random", (1, 1, 129), 129, id="k-equals-N129"),
    case("random", (2, 1, 128), 1, id="k1-N128"),
    case("all-equal", (2, 3, 77), 20, id="all-equal-N77"),
    case("all-equal", (1, 2, 1000), 999, id="all-equal-k999"),
    case("ragged", (4, 3, 70), 25, id="ragged-rows-N70"),
    case("ragged", (2, 2, 1025), 200, id="ragged-rows-N1025"),
    case("infinities", (2, 2, 90), 30, id="plus-and-minus-inf"),
    case("extremes", (2, 2, 300), 100, id="extreme-floats"),
    case("near-equal", (1, 2, 4099), 200, id="one-ulp-N4099-k200"),
    case("masked", (2, 2, 8192), 1968, id="masked-N8192-k1968"),
    case("ties", (1, 1, 16384), 128, id="ties-N16384-k128"),
], [
    case("random", (32, 8, 2048), 128, id="gpu-blocks-128k-bs32"),
    case("ties", (4, 8, 8192), 1968, id="gpu-tokens-8192-ties"),
    case("masked", (8, 8, 8192), 1968, id="gpu-tokens-8192-masked"),
    case("random", (1, 1, 100000), 128, id="gpu-blocks-6M-ctx"),
])


# the register-resident kernel (auto up to RESIDENT_MAX_N) and the streaming one (any N)
METHODS = [pytest.param("auto", id="auto"), pytest.param("stream", id="stream")]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind, shape, k", CASES)
def test_select_blocks_exact(kind, shape, k, method):
    scores = _scores(kind, shape, seed=shape[-1] + k)
    want = torch_ops.select_blocks(scores, k)
    out = poison(torch.empty(*shape[:-1], k, dtype=torch.int64, device=DEVICE))
    got = triton_ops.select_blocks(scores, k, out=out, method=method)
    assert got.data_ptr() == out.data_ptr()
    assert torch.equal(got, want)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind, shape, k", CASES)
def test_select_tokens_exact(kind, shape, k, method):
    scores = _scores(kind, shape, seed=3 * shape[-1] + k)
    gen = torch.Generator().manual_seed(k)
    pos = torch.stack([torch.randperm(10 * shape[-1], generator=gen)[:shape[-1]]
                       for _ in range(shape[0] * shape[1])]).view(shape).to(DEVICE)
    want = torch_ops.select_tokens(scores, pos, k)
    # rank order on request: exactly the torch op's output
    out = poison(torch.empty(*shape[:-1], k, dtype=torch.int64, device=DEVICE))
    assert torch.equal(triton_ops.select_tokens(scores, pos, k, ordered=True, out=out, method=method), want)
    # default (no ranking): the same set of positions, -1 padding included
    out = poison(torch.empty(*shape[:-1], k, dtype=torch.int64, device=DEVICE))
    got = triton_ops.select_tokens(scores, pos, k, out=out, method=method)
    assert torch.equal(got.sort(-1).values, want.sort(-1).values)
    # in candidate order: the positions of increasing candidate slots
    slot = {}
    for r, row in enumerate(pos.reshape(-1, shape[-1]).tolist()):
        slot.update({(r, p): i for i, p in enumerate(row)})
    for r, row in enumerate(got.reshape(-1, k).tolist()):
        taken = [slot[(r, p)] for p in row if p >= 0]
        assert taken == sorted(taken), f"row {r}: not in candidate order"


SWEEP_CASES = by_device([
    case("ties", (2, 2, 300), 40, id="ties-N300-k40"),
    case("near-equal", (1, 2, 4099), 200, id="one-ulp-N4099-k200"),
    case("masked", (1, 2, 8192), 1968, id="masked-N8192-k1968"),
], [
    case("masked", (8, 8, 8192), 1968, id="gpu-tokens-8192-masked"),
])


@pytest.mark.parametrize("overrides", topk.SWEEP, ids=launch_id)
@pytest.mark.parametrize("kind, shape, k", SWEEP_CASES)
def test_every_sweep_alternative_is_exact(kind, shape, k, overrides):
    """The launch parameters benchmarks/kernel_bench.py --sweep times (radix bits, warps) give
    the same indices, ranked and unranked."""
    if DEVICE.type == "cpu" and not {"bits", "radix", "compact"} & set(overrides) and shape[-1] > 4096:
        pytest.skip("warps change nothing under the interpreter (compile_sm90.py compiles them); the "
                    "smaller rows run them")
    with launch_overrides(topk.LAUNCH, overrides):
        test_select_blocks_exact(kind, shape, k, "resident")
        test_select_tokens_exact(kind, shape, k, "resident")


def test_rows_rule_picks_the_warps_of_long_rows_by_rows_per_sm():
    """LAUNCH's rows rule: rows of 4097-16384 entries take wide_warps_16k from wide_rows_per_sm
    rows (one program each) per SM on, warps_16k below; shorter rows keep their warps at any count
    (off the GPU sm_count is 8)."""
    cpu = torch.device("cpu")
    with launch_overrides(topk.LAUNCH, {"warps_4k": 2, "warps_16k": 8, "wide_warps_16k": 4}):
        assert [topk.resident_launch(8192, rows, cpu)["num_warps"] for rows in (1, 7, 8, 64)] == [8, 8, 4, 4]
        assert topk.resident_launch(16384, 8, cpu)["num_warps"] == 4
        assert topk.resident_launch(4096, 64, cpu)["num_warps"] == 2
        with launch_overrides(topk.LAUNCH, {"wide_rows_per_sm": 2.0}):
            assert [topk.resident_launch(8192, rows, cpu)["num_warps"] for rows in (8, 15, 16)] == [8, 8, 4]


@pytest.mark.parametrize("overrides", [{"radix": "histogram"}, {"radix": "bitpair"}, {"compact": 16},
                                       {"compact": 256}], ids=launch_id)
@pytest.mark.parametrize("kind, shape, k", [c for c in CASES
                                             if c.values[1][-1] <= (RESIDENT_MAX_N if DEVICE.type != "cpu" else 4099)])
def test_every_radix_is_exact_on_every_case(kind, shape, k, overrides):
    """The radixes besides the default one-bit passes (--sweep alternatives: tl.histogram digits,
    and two bits per pass from three counts packed in one int64 sum), and the one-bit passes that
    finish over the entries still matching once few are left (compact), on every kind of row:
    ties, signed zeros, -inf rows, only negative scores beside -inf, k past the finite scores,
    extremes (rows of up to 4099 entries under the interpreter; on a GPU the rows the
    register-resident kernel, the one with a radix, takes: a longer one is refused,
    test_resident_refuses_long_rows)."""
    with launch_overrides(topk.LAUNCH, overrides):
        test_select_blocks_exact(kind, shape, k, "resident")
        test_select_tokens_exact(kind, shape, k, "resident")


def test_resident_refuses_long_rows():
    with pytest.raises(ValueError, match="resident"):
        triton_ops.select_blocks(torch.zeros(1, 1, RESIDENT_MAX_N + 1, device=DEVICE), 4, method="resident")


def test_equivalence_helper_fails_on_a_real_difference():
    """assert_topk_equivalent (used where scores come from different kernels) must not pass
    a selection that differs beyond ties."""
    scores = torch.tensor([[3.0, 2.0, 1.0, 1.0]])
    assert_topk_equivalent(torch.tensor([[0, 3]]), torch.tensor([[0, 2]]), scores)  # a tie: fine
    with pytest.raises(AssertionError):
        assert_topk_equivalent(torch.tensor([[0, 2]]), torch.tensor([[0, 1]]), scores)


def test_env_picks_the_method_for_auto(monkeypatch):
    """ASYNCTLS_TOPK_METHOD overrides "auto" (A/B on a GPU); a bad value is refused, not ignored."""
    from asynctls_sglang.kernels.common import topk as topk_mod

    scores = torch.randn(2, 300, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    want = topk_mod.topk_indices(scores, 17, method="resident")
    for name in ("stream", "resident"):
        monkeypatch.setenv("ASYNCTLS_TOPK_METHOD", name)
        assert torch.equal(topk_mod.topk_indices(scores, 17), want)
    monkeypatch.setenv("ASYNCTLS_TOPK_METHOD", "fastest")
    with pytest.raises(ValueError, match="method must be one of"):
        topk_mod.topk_indices(scores, 17)
