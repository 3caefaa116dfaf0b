"""MLA prefill in the MHA form for the asynctls backend.

DeepSeek-family attention can prefill in two forms. The absorbed form attends over the 576-dim
latent rows as MQA (what decode does); the MHA form expands them per head with ``kv_b_proj``
(192-dim keys, 128-dim values) and costs about 3.4x fewer FLOPs at long prompts. SGLang's Triton
handler takes the MHA form only for extends without a prefix, so every chunk after the first of a
chunked prompt, and every radix-cache hit, ran in the absorbed form: 16 s per 16k chunk of a 96k
prompt on the H200, against 3.9 s for FlashInfer's whole prompt (docs/results.md, session 9).

Here (``mla_prefill="mha"``) every non-speculative extend takes the MHA form, prefix or not:
- SGLang's ``forward_normal_prepare`` writes the latent rows through the pool's
  ``set_mla_kv_buffer`` (so block summaries and index keys stay those of the latent keys) and
  calls the backend with per-head q/k/v and ``save_kv_cache=False``.
- The backend (``AsyncTLSBackendMixin.forward_extend``) expands the prefix's latent rows itself,
  read from the device pages (with offload, the prefix was loaded back to them), and attends
  over prefix and extend: FlashInfer's ragged prefill on a GPU (torch's
  scaled_dot_product_attention where flashinfer is not installed), a plain torch loop on the CPU.
  Env ASYNCTLS_MLA_PREFILL_KERNEL picks another: on the H200, one 16k chunk of DeepSeek-V2-Lite
  over an 80k prefix took 19.7 ms on FlashInfer (0.78 of the bf16 peak), 58.3 ms on SDPA and
  195 ms on SGLang's Triton extend kernel (benchmarks/mla_prefill_bench.py, session 13).
- The index's calibration and the offload seeds want latent queries: they are computed from the
  per-head ones, ``q_nope @ w_kc`` beside the rotated ``q_pe``, exactly the absorbed form's query.

A batch whose prefixes add up to more than ``SGLANG_MAX_KV_CHUNK_CAPACITY`` (128k tokens, the
bound SGLang puts on its own one-shot MHA) keeps the absorbed form, and so do MIXED batches, decode
and SGLang's prefill-graph captures.
"""
from __future__ import annotations

import itertools
import logging

import torch

from asynctls_sglang import env

logger = logging.getLogger(__name__)

#: Query rows per slice when latent queries are formed for calibration statistics.
_SLICE = 4096
_WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def resolve_mode(setting: str, dense_base: str) -> str:
    """config.mla_prefill resolved for a dense base: auto is mha on a GPU's (triton, flashinfer),
    absorbed on torch_native (the CPU, where the absorbed form is what the tests and RULER runs
    measured)."""
    if setting != "auto":
        return setting
    return "absorbed" if dense_base == "torch_native" else "mha"


class MLAPrefill:
    """The MHA-form prefill of one backend: which form each forward takes, and the latent-space
    helpers (queries, expansion) it needs from the model's attention modules."""

    def __init__(self, model_runner, mode: str) -> None:
        self.mode = mode
        self._runner = model_runner
        kernel = asked = env.mla_prefill_kernel()
        if asked == "auto":
            on_gpu = model_runner is not None and str(model_runner.device).startswith("cuda")
            kernel = ("flashinfer" if has_flashinfer() else "sdpa") if on_gpu else "torch"
        self.kernel = kernel
        # auto's FlashInfer falls back to SDPA (with a warning) if its first call fails, e.g. a JIT
        # build without nvcc; once it has run, or when asked for by name, its errors are raised
        self._fi_fallback = kernel == "flashinfer" and asked == "auto"
        self._fi_wrapper = None  # attend_flashinfer's ragged prefill wrapper and its last plan
        self._fi_plan: tuple | None = None
        self._modules: dict[int, torch.nn.Module] | None = None
        self.mha_forwards = 0  # prefill forwards in the MHA form
        self.absorbed_forwards = 0  # ... and in the absorbed form (the setting, or a fallback)

    # which form ----------------------------------------------------------------------------------
    def method(self, attn, fb):
        """The AttnForwardMethod for this layer and batch (patches.mla_dispatch calls it)."""
        from sglang.srt.models.deepseek_common.attention_backend_handler import _dispatch_mla_subtype
        from sglang.srt.models.deepseek_common.attention_forward_methods.forward_methods import AttnForwardMethod

        # NOTE: not a MIXED batch (--enable-mixed-chunk): its decode rows are extends of one token
        # over their whole context, which the MHA form would expand per head at every layer
        if self.mode == "mha" and fb.forward_mode.is_extend_without_speculative() \
                and not fb.forward_mode.is_mixed() and not _in_capture() and self.supported(attn) \
                and sum(fb.extend_prefix_lens_cpu or ()) <= fb.get_max_chunk_capacity():
            return AttnForwardMethod.MHA
        return _dispatch_mla_subtype(attn, fb)

    @staticmethod
    def supported(attn) -> bool:
        """The MHA form needs the absorbed query weight in a float dtype (not fp8 / mxfp4)."""
        w_kc = getattr(attn, "w_kc", None)
        return w_kc is not None and w_kc.dtype in _WEIGHT_DTYPES and hasattr(attn, "kv_b_proj")

    @staticmethod
    def is_mha_call(layer, latent_dim: int) -> bool:
        """Whether a backend call is the MHA form's (per-head q/k, not the latent MQA)."""
        return layer.qk_head_dim != latent_dim

    def module(self, layer_id: int):
        """The DeepseekV2AttentionMLA module whose attn_mha has this layer id."""
        if self._modules is None:
            self._modules = {m.attn_mha.layer_id: m for m in self._runner.model.modules()
                             if hasattr(m, "attn_mha") and hasattr(m, "kv_b_proj")}
        try:
            return self._modules[layer_id]
        except KeyError:
            raise RuntimeError(f"asynctls: no MLA attention module with layer id {layer_id} "
                               "(the MHA-form prefill needs the model's kv_b_proj and w_kc)") from None

    # latent space --------------------------------------------------------------------------------
    @staticmethod
    def latent_q(attn, q: torch.Tensor) -> torch.Tensor:
        """Per-head queries [T, H, nope + rope] -> the absorbed form's [T, H, kv_lora_rank + rope]."""
        nope = attn.qk_nope_head_dim
        w_kc = attn.w_kc  # [H, nope, kv_lora_rank]
        q_nope = torch.bmm(q[..., :nope].transpose(0, 1).to(w_kc.dtype), w_kc).transpose(0, 1)
        return torch.cat([q_nope.to(q.dtype), q[..., nope:]], dim=-1)

    def latent_qmag(self, attn, q: torch.Tensor) -> torch.Tensor:
        """sum over tokens of |latent q| averaged over the heads: [1, kv_lora_rank + rope] fp32
        (what SparseIndexStore.observe_prefill takes from an absorbed q), in slices of rows."""
        total = None
        for start in range(0, q.shape[0], _SLICE):
            part = self.latent_q(attn, q[start:start + _SLICE]).float().abs().mean(1).sum(0)
            total = part if total is None else total + part
        return total[None]

    @staticmethod
    def expand(attn, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent rows [P, 1 or none, kv_lora_rank + rope] -> per-head k [P, H, nope + rope] and
        v [P, H, v_head_dim], as SGLang's forward_normal_prepare forms them for its extend rows."""
        latent = latent.reshape(-1, latent.shape[-1])
        rank, heads, nope = attn.kv_lora_rank, attn.num_local_heads, attn.qk_nope_head_dim
        if latent.shape[0] == 0:
            return (latent.new_empty(0, heads, nope + latent.shape[1] - rank),
                    latent.new_empty(0, heads, attn.v_head_dim))
        kv = attn.kv_b_proj(latent[:, :rank].contiguous())[0].view(-1, heads, nope + attn.v_head_dim)
        k_pe = latent[:, None, rank:].expand(-1, heads, -1)
        return torch.cat([kv[..., :nope], k_pe], dim=-1), kv[..., nope:]

    # attention -----------------------------------------------------------------------------------
    @staticmethod
    def attend_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_pre: torch.Tensor,
                     v_pre: torch.Tensor, prefix: list[int], extend: list[int], scaling: float,
                     cap: float = 0.0, rows: int = 512) -> torch.Tensor:
        """Causal attention of each request's extend rows over its prefix and its own rows (the
        CPU path: SGLang's torch_native backend reads K/V only from the latent pool).
        q [T, H, Dq], k/v [T, H, *] (extend rows), k_pre/v_pre [sum(prefix), H, *] -> [T, H, Dv]."""
        out = q.new_empty(q.shape[0], q.shape[1], v.shape[-1])
        for qs, ps, p, e in _requests(prefix, extend):
            keys = torch.cat([k_pre[ps:ps + p], k[qs:qs + e]]).float()
            vals = torch.cat([v_pre[ps:ps + p], v[qs:qs + e]]).float()
            cols = torch.arange(p + e, device=q.device)
            for r0 in range(0, e, rows):
                r1 = min(e, r0 + rows)
                s = torch.einsum("qhd,khd->hqk", q[qs + r0:qs + r1].float(), keys) * scaling
                if cap > 0:
                    s = cap * torch.tanh(s / cap)
                pos = p + torch.arange(r0, r1, device=q.device)
                s.masked_fill_(cols[None, None, :] > pos[None, :, None], float("-inf"))
                out[qs + r0:qs + r1] = torch.einsum("hqk,khd->qhd", s.softmax(-1), vals).to(out.dtype)
        return out

    @staticmethod
    def attend_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_pre: torch.Tensor,
                    v_pre: torch.Tensor, prefix: list[int], extend: list[int], scaling: float,
                    cap: float = 0.0) -> torch.Tensor:
        """The same through torch's scaled_dot_product_attention, one request at a time, with the
        causal mask aligned to the last key (causal_lower_right): on a GPU, flash attention. Its
        kernels take equal q/k and v head dims, so a narrower V (DeepSeek-V2's 128 beside 192) is
        zero-padded and the padding sliced off the output."""
        from torch.nn.attention.bias import causal_lower_right

        if cap > 0:
            return MLAPrefill.attend_torch(q, k, v, k_pre, v_pre, prefix, extend, scaling, cap)
        dq, dv = q.shape[-1], v.shape[-1]
        out = q.new_empty(q.shape[0], q.shape[1], dv)
        for qs, ps, p, e in _requests(prefix, extend):
            keys = torch.cat([k_pre[ps:ps + p], k[qs:qs + e]])
            vals = torch.cat([v_pre[ps:ps + p], v[qs:qs + e]])
            if dv < dq:
                vals = torch.nn.functional.pad(vals, (0, dq - dv))
            o = torch.nn.functional.scaled_dot_product_attention(
                q[qs:qs + e].transpose(0, 1)[None], keys.transpose(0, 1)[None], vals.transpose(0, 1)[None],
                attn_mask=causal_lower_right(e, p + e), scale=scaling)
            out[qs:qs + e] = o[0, :, :, :dv].transpose(0, 1)
        return out

    @staticmethod
    def attend_triton(backend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_pre: torch.Tensor,
                      v_pre: torch.Tensor, prefix: list[int], extend: list[int], scaling: float,
                      cap: float = 0.0) -> torch.Tensor:
        """The same on SGLang's Triton extend kernel (the dense base's ``extend_attention_fwd``):
        the expanded prefix is its "buffer", read through indices 0..P-1."""
        dev = q.device
        out = q.new_empty(q.shape[0], q.shape[1], v.shape[-1])
        qo_indptr = torch.tensor(_offsets(extend), dtype=torch.int32, device=dev)
        kv_indptr = torch.tensor(_offsets(prefix), dtype=torch.int32, device=dev)
        kv_indices = torch.arange(k_pre.shape[0], dtype=torch.int64, device=dev)
        mask_indptr = torch.zeros(len(extend) + 1, dtype=torch.int64, device=dev)
        backend.extend_attention_fwd(q.contiguous(), k.contiguous(), v.contiguous(), out, k_pre.contiguous(),
                                     v_pre.contiguous(), qo_indptr, kv_indptr, kv_indices, None, True,
                                     mask_indptr, max(extend), 1.0, 1.0, scaling, logit_cap=cap)
        return out

    def attend_flashinfer(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_pre: torch.Tensor,
                          v_pre: torch.Tensor, prefix: list[int], extend: list[int], scaling: float,
                          cap: float = 0.0) -> torch.Tensor:
        """The same on FlashInfer's ragged prefill (what SGLang's FlashInfer MLA backend runs its
        MHA-form prefill on; FA3 on an H100/H200): each request's K/V rows laid out as its prefix
        then its extend rows, causal from the last key. Planned once per batch shape (the layers of
        a forward share it). H200: 0.67-0.78 of the bf16 peak at 16k chunks (session 13)."""
        import flashinfer

        if self._fi_wrapper is None:
            workspace = torch.empty(128 << 20, dtype=torch.uint8, device=q.device)
            self._fi_wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(workspace, "NHD")
        spans = list(_requests(prefix, extend))
        keys = torch.cat([t for qs, ps, p, e in spans for t in (k_pre[ps:ps + p], k[qs:qs + e])])
        vals = torch.cat([t for qs, ps, p, e in spans for t in (v_pre[ps:ps + p], v[qs:qs + e])])
        heads, dq, dv = q.shape[1], q.shape[-1], v.shape[-1]
        plan = (tuple(prefix), tuple(extend), heads, dq, dv, q.dtype, scaling, cap)
        if plan != self._fi_plan:
            dev = q.device
            self._fi_wrapper.plan(
                torch.tensor(_offsets(extend), dtype=torch.int32, device=dev),
                torch.tensor(_offsets([p + e for p, e in zip(prefix, extend)]), dtype=torch.int32, device=dev),
                heads, heads, dq, head_dim_vo=dv, causal=True, sm_scale=scaling,
                logits_soft_cap=cap if cap > 0 else None, q_data_type=q.dtype, kv_data_type=k.dtype)
            self._fi_plan = plan
        return self._fi_wrapper.run(q.contiguous(), keys, vals)

    def attend(self, backend, *args) -> torch.Tensor:
        """attend_<kernel>(q, k, v, k_pre, v_pre, prefix, extend, scaling, cap) for this backend."""
        if self.kernel == "triton":
            return self.attend_triton(backend, *args)
        if self.kernel == "flashinfer":
            try:
                out = self.attend_flashinfer(*args)
            except Exception as exc:  # noqa: BLE001 - any failure of the first build/run
                if not self._fi_fallback:
                    raise
                logger.warning("asynctls: FlashInfer's ragged prefill failed on its first call (%r); the MLA "
                               "prefill in the MHA form runs on torch's SDPA from now on "
                               "(ASYNCTLS_MLA_PREFILL_KERNEL=flashinfer raises instead)", exc)
                self.kernel, self._fi_fallback = "sdpa", False
                return self.attend_sdpa(*args)
            self._fi_fallback = False
            return out
        return (self.attend_sdpa if self.kernel == "sdpa" else self.attend_torch)(*args)

    def snapshot(self) -> dict:
        return {"mode": self.mode, "kernel": self.kernel, "mha_forwards": self.mha_forwards,
                "absorbed_forwards": self.absorbed_forwards}


def _offsets(lengths: list[int]) -> list[int]:
    """[0, l0, l0 + l1, ...]: row offsets (indptr) of consecutive runs of these lengths."""
    return list(itertools.accumulate(lengths, initial=0))


def _requests(prefix: list[int], extend: list[int]):
    """Per request: (its first extend row, its first prefix row, prefix length, extend length)."""
    return zip(_offsets(extend), _offsets(prefix), prefix, extend)


def has_flashinfer() -> bool:
    """Whether FlashInfer imports (SGLang's own dependency on CUDA; a build without it gets
    torch's SDPA here and Triton's kernels as the dense base)."""
    try:
        import flashinfer  # noqa: F401
    except ImportError:
        return False
    return True


def _in_capture() -> bool:
    """SGLang's prefill-graph captures pin the absorbed form (their shapes must not vary)."""
    from sglang.srt.model_executor.runner_backend_utils.breakable_cuda_graph import is_in_breakable_cuda_graph
    from sglang.srt.model_executor.runner_backend_utils.tc_piecewise_cuda_graph import is_in_tc_piecewise_cuda_graph

    from asynctls_sglang.patches.capture_guard import capturing_graphs

    return is_in_breakable_cuda_graph() or is_in_tc_piecewise_cuda_graph() or capturing_graphs()
