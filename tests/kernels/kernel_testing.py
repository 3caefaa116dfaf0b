"""Shared helpers of the kernel tests: device, shape lists per device, tolerances, paged pools."""
from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")

#: (atol, rtol) of float outputs against the fp32 torch op / reference, by input dtype.
TOLERANCE = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (3e-3, 3e-3),
    torch.bfloat16: (2e-2, 2e-2),
}
DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def by_device(small: list, large: list) -> list:
    """Case list: the small (interpreter-sized) cases everywhere, the real shapes on a GPU only."""
    return small + (large if ON_GPU else [])


def case(*values, id: str):  # noqa: A002 - pytest's own keyword
    return pytest.param(*values, id=id)


def launch_id(overrides: dict) -> str:
    """A test id for a SWEEP alternative of launch parameters, e.g. "block_n64-waves4"."""
    return "-".join(f"{k}{v}" for k, v in overrides.items())


def poison(t: torch.Tensor) -> torch.Tensor:
    """Fill with NaN (floats) or a garbage pattern (ints) so unwritten outputs show up."""
    if t.dtype.is_floating_point:
        return t.fill_(float("nan"))
    if t.dtype == torch.bool:
        return t.fill_(True)
    return t.fill_(-77 if t.dtype != torch.uint8 else 0xAB)


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str = "",
                 scale: float = 1.0) -> None:
    """|got - want| <= atol * scale + rtol * |want| everywhere (same infinities); the message gives
    the worst error ratio (1.0 = exactly at the tolerance) and where it is."""
    atol, rtol = TOLERANCE[dtype]
    got, want = got.float().cpu(), want.float().cpu()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert not got.isnan().any(), f"{what}: NaN in output at {got.isnan().nonzero()[:5].tolist()}"
    inf = want.isinf()
    assert torch.equal(got.isinf() & (got > 0), inf & (want > 0)) and \
        torch.equal(got.isinf() & (got < 0), inf & (want < 0)), f"{what}: infinities differ"
    fin = ~inf
    if not fin.any():
        return
    err = (got[fin] - want[fin]).abs()
    ratio = err / (atol * scale + rtol * want[fin].abs())
    worst = int(ratio.argmax())
    assert ratio.max() <= 1.0, (
        f"{what}: error ratio {ratio.max():.3g} (max abs err {err.max():.3g}; worst got "
        f"{got[fin][worst]:.6g} want {want[fin][worst]:.6g}; atol {atol * scale:g} rtol {rtol:g})")


def assert_topk_equivalent(got: torch.Tensor, want: torch.Tensor, scores: torch.Tensor,
                           atol: float = 1e-5, what: str = "") -> None:
    """Top-k from two score computations: per row the same index set, or else (near-ties) the
    same sorted selected scores (under `scores`, the reference's) within atol; -1 counts alike."""
    got, want, scores = got.cpu(), want.cpu(), scores.float().cpu()
    assert got.shape == want.shape
    n = scores.shape[-1]
    g2, w2, s2 = got.reshape(-1, got.shape[-1]), want.reshape(-1, want.shape[-1]), scores.reshape(-1, n)
    for r in range(g2.shape[0]):
        gs, ws = set(g2[r].tolist()), set(w2[r].tolist())
        if gs == ws:
            continue
        assert (g2[r] >= 0).sum() == (w2[r] >= 0).sum(), f"{what} row {r}: different counts"
        gv = s2[r][g2[r][g2[r] >= 0]].sort(descending=True).values
        wv = s2[r][w2[r][w2[r] >= 0]].sort(descending=True).values
        assert torch.allclose(gv, wv, atol=atol, rtol=0), \
            f"{what} row {r}: sets differ beyond ties: {sorted(gs - ws)[:8]} vs {sorted(ws - gs)[:8]}"


class Pool(NamedTuple):
    """A paged KV pool's index: requests' pages in a random order, rows shuffled."""

    req_to_token: torch.Tensor  # [rows, ctx] int32 slot of each position (garbage past the length)
    req_pool_indices: torch.Tensor  # [bs] int64
    seq_lens: torch.Tensor  # [bs] int64
    n_slots: int


def make_pool(seq_lens: list[int], block_size: int, seed: int = 0, spare_pages: int = 3,
              ctx: int | None = None) -> Pool:
    gen = torch.Generator().manual_seed(seed)
    bs = len(seq_lens)
    ctx = ctx or max(seq_lens) + 5
    need = [-(-n // block_size) for n in seq_lens]
    n_pages = sum(need) + spare_pages
    page_ids = torch.randperm(n_pages, generator=gen)
    rows = bs + 2
    req_to_token = torch.randint(0, n_pages * block_size, (rows, ctx), generator=gen, dtype=torch.int32)
    row_ids = torch.randperm(rows, generator=gen)[:bs]
    start = 0
    for i, n in enumerate(seq_lens):
        pages = page_ids[start:start + need[i]]
        start += need[i]
        pos = torch.arange(n)
        req_to_token[row_ids[i], :n] = (pages[pos // block_size] * block_size + pos % block_size).int()
    return Pool(req_to_token.to(DEVICE), row_ids.to(DEVICE), torch.tensor(seq_lens).to(DEVICE),
                n_pages * block_size)


def gather_tokens(pool: Pool, buffer: torch.Tensor, i: int) -> torch.Tensor:
    """Request i's rows of a [slots, ...] buffer in position order."""
    n = int(pool.seq_lens[i])
    slots = pool.req_to_token[pool.req_pool_indices[i], :n].long()
    return buffer[slots]
