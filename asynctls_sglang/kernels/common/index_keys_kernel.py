"""INT4 index keys: the r calibrated channels of a key, asymmetric 4-bit per (token, head)."""
import triton
import triton.language as tl

#: fp32(1/15) as reference.index_keys.INV_15 (a constexpr instance: the compiler rejects plain
#: module-level globals).
INV_15 = tl.constexpr(float.fromhex("0x1.111112p-4"))


@triton.jit
def index_key_write_kernel(codes, scale_zero, loc, k, channels,
                           s_kt, s_kh, s_ct, s_ch, s_zt, s_zh, s_wh,
                           R2: tl.constexpr, BLOCK_R: tl.constexpr):
    """Grid (T, Hk). code = floor((x - lo) / scale + 0.5) clamped to 0..15, scale = (hi - lo) * INV_15
    (fp32(1/15), see reference.quantize_index_keys: torch evaluates `/ 15.0` on CUDA as that
    multiplication, on the CPU as a division), byte = code(even channel) | code(odd channel) << 4.
    The division by the scale is IEEE (div_rn: the compiled `/` is the approximate div.full.f32),
    and no step can be fused into an FMA, so codes and (scale, zero) are bit-exact with the
    reference on every device."""
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    write_index_key(codes, scale_zero, loc, k, channels, i_t, i_h, s_kt, s_kh, s_ct, s_ch, s_zt, s_zh, s_wh,
                    R2, BLOCK_R)


@triton.jit
def write_index_key(codes, scale_zero, loc, k, channels, i_t, i_h,
                    s_kt, s_kh, s_ct, s_ch, s_zt, s_zh, s_wh,
                    R2: tl.constexpr, BLOCK_R: tl.constexpr):
    """The index key of token i_t, head i_h (index_key_write_kernel's body; the block summaries'
    fold kernel calls it too, so that one launch keeps both parts of the index)."""
    b_slot = tl.load(loc + i_t).to(tl.int64)
    o_r = tl.arange(0, BLOCK_R)
    m_r = o_r < R2
    # [BLOCK_R] channel ids of the even / odd code of each byte
    b_ce = tl.load(channels + i_h * s_wh + 2 * o_r, mask=m_r, other=0)
    b_co = tl.load(channels + i_h * s_wh + 2 * o_r + 1, mask=m_r, other=0)
    p_k = k + i_t.to(tl.int64) * s_kt + i_h * s_kh
    b_xe = tl.load(p_k + b_ce, mask=m_r, other=0.0).to(tl.float32)
    b_xo = tl.load(p_k + b_co, mask=m_r, other=0.0).to(tl.float32)
    b_lo = tl.minimum(tl.min(tl.where(m_r, b_xe, float("inf")), axis=0),
                      tl.min(tl.where(m_r, b_xo, float("inf")), axis=0))
    b_hi = tl.maximum(tl.max(tl.where(m_r, b_xe, float("-inf")), axis=0),
                      tl.max(tl.where(m_r, b_xo, float("-inf")), axis=0))
    b_scale = (b_hi - b_lo) * INV_15
    b_safe = tl.where(b_scale > 0, b_scale, 1.0)
    b_qe = tl.floor(tl.math.div_rn(b_xe - b_lo, b_safe) + 0.5)
    b_qo = tl.floor(tl.math.div_rn(b_xo - b_lo, b_safe) + 0.5)
    b_qe = tl.minimum(tl.maximum(b_qe, 0.0), 15.0).to(tl.uint8)
    b_qo = tl.minimum(tl.maximum(b_qo, 0.0), 15.0).to(tl.uint8)
    # [BLOCK_R] packed bytes, low nibble = even channel
    b_byte = b_qe | (b_qo << 4)
    tl.store(codes + b_slot * s_ct + i_h * s_ch + o_r, b_byte, mask=m_r)
    p_z = scale_zero + b_slot * s_zt + i_h * s_zh
    tl.store(p_z, b_scale.to(scale_zero.dtype.element_ty))
    tl.store(p_z + 1, b_lo.to(scale_zero.dtype.element_ty))
