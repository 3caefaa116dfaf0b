"""Sparse MLA decode attention (absorbed form), one token-axis split of a head block per program."""
import triton
import triton.language as tl

from asynctls_sglang.kernels.common.merge_kernel import kv_rows, split_columns, split_slots
from asynctls_sglang.kernels.common.softmax import LOG2E, cap_logits, online_softmax_step


@triton.jit
def mla_decode_split_kernel(q, kv_buf, req_to_token, req_pool_indices, positions, counts,
                            mid_o, mid_lse, sm_scale, logit_cap, K, SPLIT, HQ,
                            s_qb, s_qh, s_kt, s_rr, s_pb,
                            s_mb, s_mh, s_ms, s_lb, s_lh, kv_pool, s_Pt,
                            D: tl.constexpr, DV: tl.constexpr,
                            BLOCK_H: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_R: tl.constexpr,
                            BLOCK_N: tl.constexpr, HAS_CAP: tl.constexpr, PRECISION: tl.constexpr,
                            HAS_COUNTS: tl.constexpr, PREFETCH: tl.constexpr = False,
                            HAS_POOL: tl.constexpr = False):
    """Grid (bs, cdiv(Hq, BLOCK_H), S). Each latent row [D] = [DV latent | D - DV rope] is read
    once and serves both products: logits = q_latent . row[:DV] + q_rope . row[DV:], and the
    value is row[:DV]. PREFETCH: the next iteration's positions and slots are loaded after this
    iteration's rows (as in the GQA kernel; same result). HAS_POOL: a negative slot s reads row
    -s - 1 of kv_pool (stride s_Pt) instead of kv_buf."""
    i_b, i_hb, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b_row = tl.load(req_pool_indices + i_b).to(tl.int64)
    o_h = i_hb * BLOCK_H + tl.arange(0, BLOCK_H)
    m_h = o_h < HQ
    o_c = tl.arange(0, BLOCK_DV)
    m_c = o_c < DV
    o_r = DV + tl.arange(0, BLOCK_R)
    m_r = o_r < D
    p_q = q + i_b.to(tl.int64) * s_qb + o_h[:, None] * s_qh
    # [BLOCK_H, BLOCK_DV], [BLOCK_H, BLOCK_R]
    b_qc = tl.load(p_q + o_c[None, :], mask=m_h[:, None] & m_c[None, :], other=0.0)
    b_qr = tl.load(p_q + o_r[None, :], mask=m_h[:, None] & m_r[None, :], other=0.0)
    # [BLOCK_H]
    b_m = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BLOCK_H], dtype=tl.float32)
    # [BLOCK_H, BLOCK_DV]
    b_acc = tl.zeros([BLOCK_H, BLOCK_DV], dtype=tl.float32)
    p_pos = positions + i_b.to(tl.int64) * s_pb
    p_r2t = req_to_token + b_row * s_rr
    n_start, n_end = split_columns(counts, i_b, i_s, K, SPLIT, HAS_COUNTS)
    if PREFETCH:
        # [BLOCK_N] the first iteration's positions and slots
        b_pos, b_slot = split_slots(p_pos, p_r2t, n_start, n_end, BLOCK_N)
    for i_n in range(n_start, n_end, BLOCK_N):
        if not PREFETCH:
            # [BLOCK_N]
            b_pos, b_slot = split_slots(p_pos, p_r2t, i_n, n_end, BLOCK_N)
        m_n = b_pos >= 0
        p_kv = kv_rows(kv_buf, kv_pool, b_slot, s_kt, s_Pt, HAS_POOL)
        # [BLOCK_N, BLOCK_DV], [BLOCK_N, BLOCK_R]
        b_kc = tl.load(p_kv + o_c[None, :], mask=m_n[:, None] & m_c[None, :], other=0.0)
        b_kr = tl.load(p_kv + o_r[None, :], mask=m_n[:, None] & m_r[None, :], other=0.0)
        if PREFETCH:
            # the next iteration's positions and slots (all -1 / 0 past the split)
            b_pos, b_slot = split_slots(p_pos, p_r2t, i_n + BLOCK_N, n_end, BLOCK_N)
        # [BLOCK_H, BLOCK_N]
        b_s = tl.dot(b_qc, tl.trans(b_kc), input_precision=PRECISION)
        b_s += tl.dot(b_qr, tl.trans(b_kr), input_precision=PRECISION)
        b_s = b_s * sm_scale
        if HAS_CAP:
            b_s = cap_logits(b_s, logit_cap)
        b_s = tl.where(m_n[None, :], b_s * LOG2E, float("-inf"))
        b_p, b_alpha, b_m, b_l = online_softmax_step(b_s, b_m, b_l)
        b_acc = b_acc * b_alpha[:, None] + tl.dot(b_p.to(b_kc.dtype), b_kc, input_precision=PRECISION)
    b_lse = tl.where(b_l > 0, b_m + tl.log2(tl.where(b_l > 0, b_l, 1.0)), float("-inf"))
    b_o = b_acc / tl.where(b_l > 0, b_l, 1.0)[:, None]
    p_mo = mid_o + i_b.to(tl.int64) * s_mb + o_h[:, None] * s_mh + i_s * s_ms + o_c[None, :]
    tl.store(p_mo, b_o, mask=m_h[:, None] & m_c[None, :])
    tl.store(mid_lse + i_b.to(tl.int64) * s_lb + o_h * s_lh + i_s, b_lse, mask=m_h)
