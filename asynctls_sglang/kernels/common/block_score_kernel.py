"""Level 1: Quest upper bounds of every block, [sum_g q+ | sum_g q-] . [max | min]."""
import triton
import triton.language as tl


@triton.jit
def block_score_kernel(q, kmin, kmax, pages, seq_lens, scores, MB, sink, local,
                       s_qb, s_qh, s_pb, s_sp, s_sh, s_ob, s_oh, s_op,
                       G: tl.constexpr, D: tl.constexpr, B: tl.constexpr,
                       BLOCK_G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                       HK: tl.constexpr = 1, HEADS: tl.constexpr = 1, SPLIT_D: tl.constexpr = False):
    """Grid (cdiv(MB, BLOCK_M), cdiv(Hk, HEADS), bs). One (request, KV head) row of the product is a
    [2D] x [2D, MB] matrix-vector product (the group is summed into the row first, which is
    exact algebra), so the kernel streams the summaries once; dead blocks (past the length,
    or wholly inside the sink / local ranges) are not read and score -inf. HEADS > 1: each
    program scores HEADS consecutive KV heads (of HK) of its pages, whose summaries are adjacent
    in [pages, Hk, D]: one page's reads are HEADS x D contiguous elements instead of D.
    SPLIT_D: grid axis 0 is cdiv(MB, BLOCK_M) x cdiv(D, BLOCK_D); each program sums one BLOCK_D
    slice of the channels into its partial row (scores + slice * s_op; dead blocks -inf in every
    slice), for the wrapper to add up: more programs for wide keys (MLA's 576)."""
    i_m, i_hg, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if SPLIT_D:
        n_dc = tl.cdiv(D, BLOCK_D)
        i_dc = i_m % n_dc
        i_m = i_m // n_dc
        d_lo = i_dc * BLOCK_D
        p_out = scores + i_dc.to(tl.int64) * s_op
    else:
        d_lo = 0
        p_out = scores
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_m = o_m < MB
    b_len = tl.load(seq_lens + i_b).to(tl.int64)
    # [BLOCK_M]
    b_first = o_m.to(tl.int64) * B
    b_last = tl.minimum(b_first + B, b_len) - 1
    m_dead = (b_first >= b_len) | (b_last < sink) | (b_first >= b_len - local)
    m_live = m_m & (m_dead == 0)
    b_page = tl.load(pages + i_b * s_pb + o_m, mask=m_live, other=0).to(tl.int64)
    for j in tl.static_range(HEADS):
        i_h = i_hg * HEADS + j
        if HEADS > 1:
            m_h = i_h < HK
        else:  # the grid's heads are exactly Hk: no mask
            m_h = True
        o_g = tl.arange(0, BLOCK_G)
        m_g = o_g < G
        p_q = q + i_b.to(tl.int64) * s_qb + (i_h * G + o_g)[:, None] * s_qh
        b_s = tl.zeros([BLOCK_M], dtype=tl.float32)
        for i_d in tl.static_range(0, BLOCK_D if SPLIT_D else D, BLOCK_D):
            o_d = d_lo + i_d + tl.arange(0, BLOCK_D)
            m_d = o_d < D
            # [BLOCK_G, BLOCK_D]
            b_q = tl.load(p_q + o_d[None, :], mask=m_g[:, None] & m_d[None, :] & m_h, other=0.0).to(tl.float32)
            # [BLOCK_D]
            b_qp = tl.sum(tl.maximum(b_q, 0.0), axis=0)
            b_qn = tl.sum(tl.minimum(b_q, 0.0), axis=0)
            # [BLOCK_M, BLOCK_D]
            o_k = b_page[:, None] * s_sp + i_h * s_sh + o_d[None, :]
            m_k = m_live[:, None] & m_d[None, :] & m_h
            b_hi = tl.load(kmax + o_k, mask=m_k, other=0.0).to(tl.float32)
            b_lo = tl.load(kmin + o_k, mask=m_k, other=0.0).to(tl.float32)
            b_s += tl.sum(b_hi * b_qp[None, :] + b_lo * b_qn[None, :], axis=1)
        b_s = tl.where(m_dead, float("-inf"), b_s)
        tl.store(p_out + i_b.to(tl.int64) * s_ob + i_h * s_oh + o_m, b_s, mask=m_m & m_h)
