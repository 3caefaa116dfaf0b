"""Sparse GQA decode attention, one token-axis split of one (request, KV head) per program."""
import triton
import triton.language as tl

from asynctls_sglang.kernels.common.merge_kernel import kv_rows, split_columns, split_slots
from asynctls_sglang.kernels.common.softmax import LOG2E, cap_logits, online_softmax_step


@triton.jit
def gqa_decode_split_kernel(q, k_buf, v_buf, req_to_token, req_pool_indices, positions, counts,
                            mid_o, mid_lse, sm_scale, logit_cap, K, SPLIT,
                            s_qb, s_qh, s_kt, s_kh, s_vt, s_vh, s_rr, s_pb, s_ph,
                            s_mb, s_mh, s_ms, s_lb, s_lh, k_pool, v_pool, s_Kt, s_Kh, s_Vt, s_Vh,
                            G: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
                            BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                            BLOCK_N: tl.constexpr, HAS_CAP: tl.constexpr, PRECISION: tl.constexpr,
                            HAS_COUNTS: tl.constexpr, PREFETCH: tl.constexpr = False,
                            HAS_POOL: tl.constexpr = False):
    """Grid (bs, Hk, S). Positions [SPLIT * i_s, SPLIT * (i_s + 1)) of the head's list; the G
    query heads of the group are the rows of one tensor-core product, so each K/V row is read
    once per group. Writes the split's normalised output and base-2 log-sum-exp.
    PREFETCH: the next iteration's positions and slots are loaded after this iteration's K and V
    (both issued before the products), so the position -> slot -> row chain of one iteration
    overlaps the loads and math of the one before (same result).
    HAS_POOL: a negative slot s reads row -s - 1 of k_pool / v_pool (strides s_Kt, s_Kh, s_Vt,
    s_Vh) instead of the buffers."""
    i_b, i_h, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b_row = tl.load(req_pool_indices + i_b).to(tl.int64)
    o_g = tl.arange(0, BLOCK_G)
    m_g = o_g < G
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    o_v = tl.arange(0, BLOCK_DV)
    m_v = o_v < DV
    # [BLOCK_G, BLOCK_D]
    p_q = q + i_b.to(tl.int64) * s_qb + (i_h * G + o_g)[:, None] * s_qh + o_d[None, :]
    b_q = tl.load(p_q, mask=m_g[:, None] & m_d[None, :], other=0.0)
    # [BLOCK_G]
    b_m = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BLOCK_G], dtype=tl.float32)
    # [BLOCK_G, BLOCK_DV]
    b_acc = tl.zeros([BLOCK_G, BLOCK_DV], dtype=tl.float32)
    p_kh, p_vh = k_buf + i_h * s_kh, v_buf + i_h * s_vh
    p_Kh, p_Vh = k_pool + i_h * s_Kh, v_pool + i_h * s_Vh
    p_pos = positions + i_b.to(tl.int64) * s_pb + i_h * s_ph
    p_r2t = req_to_token + b_row * s_rr
    n_start, n_end = split_columns(counts, i_b, i_s, K, SPLIT, HAS_COUNTS)
    if PREFETCH:
        # [BLOCK_N] the first iteration's positions and slots
        b_pos, b_slot = split_slots(p_pos, p_r2t, n_start, n_end, BLOCK_N)
    for i_n in range(n_start, n_end, BLOCK_N):
        if PREFETCH:
            m_n = b_pos >= 0
            # [BLOCK_N, BLOCK_D], [BLOCK_N, BLOCK_DV]
            b_k = tl.load(kv_rows(p_kh, p_Kh, b_slot, s_kt, s_Kt, HAS_POOL) + o_d[None, :],
                          mask=m_n[:, None] & m_d[None, :], other=0.0)
            b_v = tl.load(kv_rows(p_vh, p_Vh, b_slot, s_vt, s_Vt, HAS_POOL) + o_v[None, :],
                          mask=m_n[:, None] & m_v[None, :], other=0.0)
            # the next iteration's positions and slots (all -1 / 0 past the split)
            b_pos, b_slot = split_slots(p_pos, p_r2t, i_n + BLOCK_N, n_end, BLOCK_N)
        else:
            # [BLOCK_N]
            b_pos, b_slot = split_slots(p_pos, p_r2t, i_n, n_end, BLOCK_N)
            m_n = b_pos >= 0
            # [BLOCK_N, BLOCK_D]
            b_k = tl.load(kv_rows(p_kh, p_Kh, b_slot, s_kt, s_Kt, HAS_POOL) + o_d[None, :],
                          mask=m_n[:, None] & m_d[None, :], other=0.0)
        # [BLOCK_G, BLOCK_N]
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION) * sm_scale
        if HAS_CAP:
            b_s = cap_logits(b_s, logit_cap)
        b_s = tl.where(m_n[None, :], b_s * LOG2E, float("-inf"))
        b_p, b_alpha, b_m, b_l = online_softmax_step(b_s, b_m, b_l)
        if not PREFETCH:
            # [BLOCK_N, BLOCK_DV]
            b_v = tl.load(kv_rows(p_vh, p_Vh, b_slot, s_vt, s_Vt, HAS_POOL) + o_v[None, :],
                          mask=m_n[:, None] & m_v[None, :], other=0.0)
        b_acc = b_acc * b_alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v, input_precision=PRECISION)
    b_lse = tl.where(b_l > 0, b_m + tl.log2(tl.where(b_l > 0, b_l, 1.0)), float("-inf"))
    b_o = b_acc / tl.where(b_l > 0, b_l, 1.0)[:, None]
    o_q = i_h * G + o_g
    p_mo = mid_o + i_b.to(tl.int64) * s_mb + o_q[:, None] * s_mh + i_s * s_ms + o_v[None, :]
    tl.store(p_mo, b_o, mask=m_g[:, None] & m_v[None, :])
    tl.store(mid_lse + i_b.to(tl.int64) * s_lb + o_q * s_lh + i_s, b_lse, mask=m_g)
