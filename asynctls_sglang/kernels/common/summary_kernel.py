"""Block summaries (per-channel key min/max of each page), folded in as keys are written.

Every page touched by a call is reduced by exactly one program, its owner: the token of the
page that comes first in `loc`, so the result does not depend on scheduling. Two ways to find
the owner:
  - flags (any T): three launches ordered on one stream. `page_claim_kernel` marks every touched
    page with T, `page_owner_kernel` lowers the mark to the smallest token index of the page (an
    int32 atomic_min: the only race, and an exact one), and `summary_fold_kernel` lets that owner
    alone reduce all of its page's tokens of this call;
  - scan (small T, a decode step): `summary_fold_kernel` alone, each program looking for its page
    among the tokens before it in `loc` (T loads at most); one launch instead of three.
"""
import triton
import triton.language as tl

from asynctls_sglang.kernels.common.index_keys_kernel import write_index_key


@triton.jit
def page_claim_kernel(loc, page_flag, T, B: tl.constexpr, BLOCK_T: tl.constexpr):
    i_t = tl.program_id(0)
    o_t = i_t * BLOCK_T + tl.arange(0, BLOCK_T)
    m_t = o_t < T
    # [BLOCK_T]
    b_page = tl.load(loc + o_t, mask=m_t, other=0) // B
    tl.store(page_flag + b_page, tl.zeros([BLOCK_T], dtype=tl.int32) + T, mask=m_t)


@triton.jit
def page_owner_kernel(loc, page_flag, T, B: tl.constexpr, BLOCK_T: tl.constexpr):
    i_t = tl.program_id(0)
    o_t = i_t * BLOCK_T + tl.arange(0, BLOCK_T)
    m_t = o_t < T
    # [BLOCK_T]
    b_page = tl.load(loc + o_t, mask=m_t, other=0) // B
    tl.atomic_min(page_flag + b_page, o_t.to(tl.int32), mask=m_t)


@triton.jit
def summary_fold_kernel(kmin, kmax, page_flag, loc, k, T,
                        s_kt, s_kh, s_sp, s_sh,
                        codes, scale_zero, channels, s_ct, s_ch, s_zt, s_zh, s_wh,
                        B: tl.constexpr, D: tl.constexpr,
                        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, SCAN_OWNER: tl.constexpr = False,
                        INDEX: tl.constexpr = False, R2: tl.constexpr = 1, BLOCK_R: tl.constexpr = 2):
    """Grid (T, Hk, cdiv(D, BLOCK_D)); programs whose token does not own its page fold nothing.
    SCAN_OWNER: the owner is found by scanning loc[:i_t] (page_flag unused), else page_flag
    holds it (page_owner_kernel). INDEX: the programs of the first D tile also write their
    token's index key (index_keys_kernel.write_index_key: codes, scale_zero at its channels)."""
    i_t, i_h, i_d = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if INDEX:
        if i_d == 0:
            write_index_key(codes, scale_zero, loc, k, channels, i_t, i_h, s_kt, s_kh, s_ct, s_ch, s_zt, s_zh,
                            s_wh, R2, BLOCK_R)
    b_page = tl.load(loc + i_t) // B
    if SCAN_OWNER:
        b_before = tl.zeros([], dtype=tl.int32)
        for i_s in range(0, i_t, BLOCK_T):
            o_s = i_s + tl.arange(0, BLOCK_T)
            m_s = o_s < i_t
            # [BLOCK_T]
            b_other = tl.load(loc + o_s, mask=m_s, other=0)
            b_before += tl.sum((m_s & (b_other // B == b_page)).to(tl.int32), axis=0)
        b_owner = b_before == 0
    else:
        b_owner = tl.load(page_flag + b_page) == i_t
    if b_owner:
        o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
        m_d = o_d < D
        # [BLOCK_D]
        b_min = tl.full([BLOCK_D], float("inf"), dtype=tl.float32)
        b_max = tl.full([BLOCK_D], float("-inf"), dtype=tl.float32)
        b_reset = tl.zeros([BLOCK_T], dtype=tl.int32)
        # the owner is the page's first token in `loc`: the others all come after it, and a page
        # has at most B of them (loc holds distinct slots), so the scan stops once B are seen
        i_t0 = i_t
        b_seen = tl.zeros([], dtype=tl.int32)
        while (i_t0 < T) & (b_seen < B):
            o_t = i_t0 + tl.arange(0, BLOCK_T)
            m_t = o_t < T
            # [BLOCK_T]
            b_loc = tl.load(loc + o_t, mask=m_t, other=0)
            m_page = m_t & (b_loc // B == b_page)
            b_reset = tl.maximum(b_reset, tl.where(m_page & (b_loc % B == 0), 1, 0))
            # [BLOCK_T, BLOCK_D]
            p_k = k + o_t[:, None].to(tl.int64) * s_kt + i_h * s_kh + o_d[None, :]
            b_k = tl.load(p_k, mask=m_page[:, None] & m_d[None, :], other=0.0)
            # rounding to the table's dtype first, as the torch op does (min/max commute with it)
            b_k = b_k.to(kmin.dtype.element_ty).to(tl.float32)
            b_min = tl.minimum(b_min, tl.min(tl.where(m_page[:, None], b_k, float("inf")), axis=0))
            b_max = tl.maximum(b_max, tl.max(tl.where(m_page[:, None], b_k, float("-inf")), axis=0))
            b_seen += tl.sum(m_page.to(tl.int32), axis=0)
            i_t0 += BLOCK_T
        p_min = kmin + b_page * s_sp + i_h * s_sh + o_d
        p_max = kmax + b_page * s_sp + i_h * s_sh + o_d
        # a write at offset 0 starts the page afresh: its stale summary is ignored
        if tl.max(b_reset, axis=0) == 0:
            b_min = tl.minimum(b_min, tl.load(p_min, mask=m_d, other=0.0).to(tl.float32))
            b_max = tl.maximum(b_max, tl.load(p_max, mask=m_d, other=0.0).to(tl.float32))
        tl.store(p_min, b_min.to(kmin.dtype.element_ty), mask=m_d)
        tl.store(p_max, b_max.to(kmax.dtype.element_ty), mask=m_d)
