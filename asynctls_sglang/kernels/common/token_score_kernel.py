"""Level 2: approximate q.k of candidate tokens from their INT4 index keys (Double Sparsity)."""
import triton
import triton.language as tl

from asynctls_sglang.kernels.common.topk_kernel import _resident_slots, _resident_threshold


@triton.jit
def token_score_kernel(q, codes, scale_zero, channels, req_to_token, req_pool_indices, pos, ok,
                       scores, N,
                       s_qb, s_qh, s_ct, s_ch, s_zt, s_zh, s_wh, s_rr, s_pb, s_ph, s_kb, s_kh,
                       s_ob, s_oh,
                       blocks, seq_lens, s_bb, s_bh, s_bk, sink, local,
                       G: tl.constexpr, R2: tl.constexpr, HEAD_MAX: tl.constexpr, HEADS_DOT: tl.constexpr,
                       PRECISION: tl.constexpr,
                       BLOCK_G: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
                       FROM_BLOCKS: tl.constexpr = False, B: tl.constexpr = 1):
    """Grid (cdiv(N, BLOCK_N), Hk, bs). Per query head g of the group, score_g = scale * (codes . q_g)
    + zero * sum(q_g) with q_g at the head's r channels; the token's score is the max over g
    (HEAD_MAX) or the score of the group-mean query (= the mean over g); -inf where not ok.

    HEAD_MAX by one reduction per head (a static loop over G) or, with HEADS_DOT, all heads at once:
    two tl.dot of the code tiles with the group's [BLOCK_R, BLOCK_G] query tiles (tensor cores;
    BLOCK_G and BLOCK_R >= 16, padding masked), PRECISION "ieee" (fp32 q) or "tf32" (16-bit q:
    its values and the 0..15 codes are exact in tf32, only the summation order differs).

    FROM_BLOCKS: the candidates come from the chosen blocks [bs, Hk, N / B] (candidates_kernel's
    rule, in the same program: pos = max(block, 0) * B + i % B, ok = block >= 0 and neither sink
    nor local); pos is written (the token top-k maps its choice back through it), ok is not read."""
    i_n, i_h, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    b_s, b_pos = _candidate_scores(q, codes, scale_zero, channels, req_to_token, req_pool_indices, pos, ok, o_n, m_n,
                                   i_h, i_b, s_qb, s_qh, s_ct, s_ch, s_zt, s_zh, s_wh, s_rr, s_pb, s_ph, s_kb, s_kh,
                                   blocks, seq_lens, s_bb, s_bh, s_bk, sink, local,
                                   G, R2, HEAD_MAX, HEADS_DOT, PRECISION, BLOCK_G, BLOCK_R, FROM_BLOCKS, B,
                                   STORE_POS=True)
    tl.store(scores + i_b.to(tl.int64) * s_ob + i_h * s_oh + o_n, b_s, mask=m_n)


@triton.jit
def token_select_kernel(q, codes, scale_zero, channels, req_to_token, req_pool_indices, blocks, seq_lens,
                        scores, out, N, K, sink, local,
                        s_qb, s_qh, s_ct, s_ch, s_zt, s_zh, s_wh, s_rr, s_bb, s_bh, s_bk, s_sb, s_sh, s_ob, s_oh,
                        G: tl.constexpr, R2: tl.constexpr, HEAD_MAX: tl.constexpr, HEADS_DOT: tl.constexpr,
                        PRECISION: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_R: tl.constexpr, B: tl.constexpr,
                        BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BITS: tl.constexpr,
                        SUM_BITS: tl.constexpr, COMPACT: tl.constexpr):
    """Grid (Hk, bs). token_score_kernel (FROM_BLOCKS) and topk_resident_kernel (unsorted, pos) in
    one program per request and KV head: the N = k_b * B candidates of the chosen blocks are
    scored BLOCK_C at a time into the row of `scores` (scratch, read back from L2 by the same
    program after a barrier), then the top K of the row is selected in registers and each taken
    candidate's position (max(block, 0) * B + i % B, recomputed: no position tensor) written to
    out's row in candidate order; -1 past the finite scores. N <= BLOCK_N <= 16384."""
    i_h, i_b = tl.program_id(0), tl.program_id(1)
    p_s = scores + i_b.to(tl.int64) * s_sb + i_h * s_sh
    for i_c in range(0, N, BLOCK_C):
        o_c = i_c + tl.arange(0, BLOCK_C)
        m_c = o_c < N
        b_s, _ = _candidate_scores(q, codes, scale_zero, channels, req_to_token, req_pool_indices, scores, scores,
                                   o_c, m_c, i_h, i_b, s_qb, s_qh, s_ct, s_ch, s_zt, s_zh, s_wh, s_rr, 0, 0, 0, 0,
                                   blocks, seq_lens, s_bb, s_bh, s_bk, sink, local,
                                   G, R2, HEAD_MAX, HEADS_DOT, PRECISION, BLOCK_G, BLOCK_R, True, B)
        tl.store(p_s + o_c, b_s, mask=m_c)
    # the row's scores were written by other threads of this program
    tl.debug_barrier()
    o_n = tl.arange(0, BLOCK_N)
    m_n = o_n < N
    # [BLOCK_N]
    b_x = tl.load(p_s + o_n, mask=m_n, other=float("-inf"))
    p_o = out + i_b.to(tl.int64) * s_ob + i_h * s_oh
    b_v, b_taken, b_prefix, b_hmask, b_need = _resident_threshold(b_x, K, BITS, SUM_BITS, p_o, COMPACT)
    m_take, o_slot = _resident_slots(b_v, b_prefix, b_hmask, b_need)
    # a taken candidate is finite: its block is >= 0
    b_blk = tl.load(blocks + i_b.to(tl.int64) * s_bb + i_h * s_bh + (o_n // B) * s_bk, mask=m_take, other=0)
    tl.store(p_o + o_slot, b_blk.to(tl.int64) * B + o_n % B, mask=m_take)
    o_k = tl.arange(0, BLOCK_K)
    tl.store(p_o + o_k, tl.full([BLOCK_K], -1, dtype=tl.int64), mask=(o_k >= b_taken) & (o_k < K))


@triton.jit
def _candidate_scores(q, codes, scale_zero, channels, req_to_token, req_pool_indices, pos, ok, o_n, m_n, i_h, i_b,
                      s_qb, s_qh, s_ct, s_ch, s_zt, s_zh, s_wh, s_rr, s_pb, s_ph, s_kb, s_kh,
                      blocks, seq_lens, s_bb, s_bh, s_bk, sink, local,
                      G: tl.constexpr, R2: tl.constexpr, HEAD_MAX: tl.constexpr, HEADS_DOT: tl.constexpr,
                      PRECISION: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_R: tl.constexpr,
                      FROM_BLOCKS: tl.constexpr, B: tl.constexpr, STORE_POS: tl.constexpr = False):
    """token_score_kernel's scores of the candidates o_n (m_n: inside the row) of request i_b, KV
    head i_h -> (scores fp32, -inf where not ok; positions, int64: the candidates' own with
    FROM_BLOCKS, else read from pos). FROM_BLOCKS and STORE_POS: the positions are also written
    to pos (before the gathers)."""
    o_r = tl.arange(0, BLOCK_R)
    m_r = o_r < R2
    # [BLOCK_R] channels of the low / high nibble
    b_ce = tl.load(channels + i_h * s_wh + 2 * o_r, mask=m_r, other=0)
    b_co = tl.load(channels + i_h * s_wh + 2 * o_r + 1, mask=m_r, other=0)
    p_qg = q + i_b.to(tl.int64) * s_qb + (i_h * G) * s_qh  # the group's first query head
    # [BLOCK_N]
    if FROM_BLOCKS:
        b_len = tl.load(seq_lens + i_b).to(tl.int64)
        b_blk = tl.load(blocks + i_b.to(tl.int64) * s_bb + i_h * s_bh + (o_n // B) * s_bk, mask=m_n,
                        other=-1).to(tl.int64)
        b_pos = tl.maximum(b_blk, 0) * B + o_n % B
        m_ok = m_n & (b_blk >= 0) & (b_pos >= sink) & (b_pos < b_len - local)
        if STORE_POS:
            tl.store(pos + i_b.to(tl.int64) * s_pb + i_h * s_ph + o_n, b_pos, mask=m_n)
    else:
        m_ok = tl.load(ok + i_b.to(tl.int64) * s_kb + i_h * s_kh + o_n, mask=m_n, other=0) != 0
        # pos is read beside ok, not under it: one dependent load fewer before the two gathers
        b_pos = tl.load(pos + i_b.to(tl.int64) * s_pb + i_h * s_ph + o_n, mask=m_n, other=0)
    b_row = tl.load(req_pool_indices + i_b).to(tl.int64)
    b_slot = tl.load(req_to_token + b_row * s_rr + b_pos, mask=m_ok, other=0).to(tl.int64)
    # [BLOCK_N, BLOCK_R]
    b_c = tl.load(codes + b_slot[:, None] * s_ct + i_h * s_ch + o_r[None, :],
                  mask=m_ok[:, None] & m_r[None, :], other=0)
    b_lo = (b_c & 15).to(tl.float32)
    b_hi = (b_c >> 4).to(tl.float32)
    p_z = scale_zero + b_slot * s_zt + i_h * s_zh
    b_scale = tl.load(p_z, mask=m_ok, other=0.0).to(tl.float32)
    b_zero = tl.load(p_z + 1, mask=m_ok, other=0.0).to(tl.float32)
    if HEAD_MAX and HEADS_DOT:
        o_g = tl.arange(0, BLOCK_G)
        m_g = o_g < G
        # [BLOCK_R, BLOCK_G] the group's heads at the index channels, loaded transposed for the dot
        p_q = p_qg + o_g[None, :] * s_qh
        m_q = m_r[:, None] & m_g[None, :]
        b_qe = tl.load(p_q + b_ce[:, None], mask=m_q, other=0.0).to(tl.float32)
        b_qo = tl.load(p_q + b_co[:, None], mask=m_q, other=0.0).to(tl.float32)
        # [BLOCK_G]
        b_qsum = tl.sum(b_qe, axis=0) + tl.sum(b_qo, axis=0)
        # [BLOCK_N, BLOCK_G] codes . q_g of every head
        b_dot = tl.dot(b_lo, b_qe, input_precision=PRECISION)
        b_dot = tl.dot(b_hi, b_qo, b_dot, input_precision=PRECISION)
        b_sg = b_dot * b_scale[:, None] + b_zero[:, None] * b_qsum[None, :]
        b_s = tl.max(tl.where(m_g[None, :], b_sg, float("-inf")), axis=1)
    elif HEAD_MAX:
        b_s = tl.full(o_n.shape, float("-inf"), dtype=tl.float32)
        for g in tl.static_range(G):
            # [BLOCK_R] head g at the index channels
            b_qe = tl.load(p_qg + g * s_qh + b_ce, mask=m_r, other=0.0).to(tl.float32)
            b_qo = tl.load(p_qg + g * s_qh + b_co, mask=m_r, other=0.0).to(tl.float32)
            b_s = tl.maximum(b_s, _dequant_dot(b_lo, b_hi, b_qe, b_qo, b_scale, b_zero))
    else:
        # [BLOCK_R] group mean at the index channels
        o_g = tl.arange(0, BLOCK_G)
        p_q = p_qg + o_g[:, None] * s_qh
        m_q = (o_g < G)[:, None] & m_r[None, :]
        b_qe = tl.sum(tl.load(p_q + b_ce[None, :], mask=m_q, other=0.0).to(tl.float32), axis=0) / G
        b_qo = tl.sum(tl.load(p_q + b_co[None, :], mask=m_q, other=0.0).to(tl.float32), axis=0) / G
        b_s = _dequant_dot(b_lo, b_hi, b_qe, b_qo, b_scale, b_zero)
    return tl.where(m_ok, b_s, float("-inf")), b_pos


@triton.jit
def _dequant_dot(b_lo, b_hi, b_qe, b_qo, b_scale, b_zero):
    """[BLOCK_N] q . k of INT4 keys (low / high nibble codes [BLOCK_N, BLOCK_R]) with a query at
    their channels (b_qe / b_qo [BLOCK_R]): scale * (codes . q) + zero * sum(q)."""
    b_qsum = tl.sum(b_qe, axis=0) + tl.sum(b_qo, axis=0)
    b_dot = tl.sum(b_lo * b_qe[None, :] + b_hi * b_qo[None, :], axis=1)
    return b_dot * b_scale + b_zero * b_qsum
