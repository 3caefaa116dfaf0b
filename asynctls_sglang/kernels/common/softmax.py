"""@triton.jit helpers shared by the decode attention kernels (online softmax, logit cap)."""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def cap_logits(b_s, logit_cap):
    """cap * tanh(s / cap), tanh written with exp so that the interpreter runs it too."""
    b_t = tl.exp(-2.0 * tl.abs(b_s) / logit_cap)
    b_th = (1.0 - b_t) / (1.0 + b_t)
    return logit_cap * tl.where(b_s < 0, -b_th, b_th)


@triton.jit
def online_softmax_step(b_s, b_m, b_l):
    """One block of base-2 logits b_s [H, N] (-inf = masked) into the running max b_m and sum
    b_l [H]. Returns (p [H, N], alpha [H], new max, new sum); safe when all are -inf."""
    b_mn = tl.maximum(b_m, tl.max(b_s, axis=1))
    b_ref = tl.where(b_mn == float("-inf"), 0.0, b_mn)
    b_p = tl.exp2(b_s - b_ref[:, None])
    b_alpha = tl.exp2(b_m - b_ref)
    return b_p, b_alpha, b_mn, b_l * b_alpha + tl.sum(b_p, axis=1)
