"""The specification: AsyncTLS in plain torch, fp32, one request at a time.

Every batched op (asynctls_sglang.ops) and Triton kernel (asynctls_sglang.kernels) is tested
against these functions. Notation: T tokens, Hq query heads, Hk KV heads (G = Hq // Hk, the
GQA group), D key dim, Dv value dim, B block size, NB = ceil(T / B) blocks, r index channels.
MLA in absorbed form is Hk = 1, D = kv_lora_rank + rope_dim, V = K[..., :kv_lora_rank].
"""
from asynctls_sglang.reference.attention import dense_attention, sparse_attention
from asynctls_sglang.reference.index_keys import (
    calibrate_channels,
    dequantize_index_keys,
    quantize_index_keys,
    token_scores,
)
from asynctls_sglang.reference.scoring import block_scores, quest_bound
from asynctls_sglang.reference.select import Selection, select_tokens
from asynctls_sglang.reference.summaries import block_summaries
from asynctls_sglang.reference.topk import topk_indices

__all__ = [
    "Selection", "block_scores", "block_summaries", "calibrate_channels", "dense_attention",
    "dequantize_index_keys", "quantize_index_keys", "quest_bound", "select_tokens",
    "sparse_attention", "token_scores", "topk_indices",
]
