"""adapter.mla_prefill's latent-space helpers: the latent query formed from a per-head one scores
a latent row exactly as the per-head query scores that row's expansion (so calibration and the
offload seeds of an MHA-form prefill see the absorbed form's queries), and the expansion is
kv_b_proj's, laid out as SGLang's MHA prefill lays out its own K/V."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from asynctls_sglang.adapter.mla_prefill import MLAPrefill, resolve_mode


def fake_attn(heads: int, nope: int, rope: int, v_dim: int, rank: int = 512, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(heads * (nope + v_dim), rank, generator=gen) / rank ** 0.5  # kv_b_proj's weight
    w_kc, _ = w.unflatten(0, (-1, nope + v_dim)).split([nope, v_dim], dim=1)  # [H, nope, rank]
    return SimpleNamespace(kv_b_proj=lambda x: (x @ w.T, None), w_kc=w_kc, kv_lora_rank=rank,
                           num_local_heads=heads, qk_nope_head_dim=nope, v_head_dim=v_dim)


@pytest.mark.parametrize("heads, nope, v_dim", [(16, 128, 128), (20, 192, 256)], ids=["dsv2", "glm47"])
def test_latent_query_scores_as_the_expanded_key(heads, nope, v_dim):
    attn = fake_attn(heads, nope, 64, v_dim)
    gen = torch.Generator().manual_seed(1)
    latent = torch.randn(50, 1, 512 + 64, generator=gen, dtype=torch.float64).float()
    q = torch.randn(7, heads, nope + 64, generator=gen)
    k, v = MLAPrefill.expand(attn, latent)
    assert k.shape == (50, heads, nope + 64) and v.shape == (50, heads, v_dim)
    torch.testing.assert_close(k[..., nope:], latent[:, :, 512:].expand(-1, heads, -1))
    per_head = torch.einsum("thd,phd->thp", q, k)
    absorbed = torch.einsum("thd,pd->thp", MLAPrefill.latent_q(attn, q), latent[:, 0])
    torch.testing.assert_close(absorbed, per_head, atol=1e-4, rtol=1e-4)
    # the calibration statistic, in slices: the sum over rows of the head-mean of |latent q|
    prefill = MLAPrefill(None, "mha")
    want = MLAPrefill.latent_q(attn, q).abs().mean(1).sum(0)[None]
    torch.testing.assert_close(prefill.latent_qmag(attn, q), want)


def test_empty_prefix_expands_to_nothing():
    k, v = MLAPrefill.expand(fake_attn(4, 128, 64, 128), torch.empty(0, 1, 576))
    assert k.shape == (0, 4, 192) and v.shape == (0, 4, 128)


def test_mode_resolution():
    assert resolve_mode("auto", "triton") == "mha"
    assert resolve_mode("auto", "flashinfer") == "mha"  # FlashInfer's MLA backend as the base
    assert resolve_mode("auto", "torch_native") == "absorbed"
    assert resolve_mode("absorbed", "triton") == "absorbed"
    assert resolve_mode("mha", "torch_native") == "mha"


def test_which_batches_take_the_mha_form():
    """Extends take the MHA form; decode, MIXED batches (decode rows would expand their whole
    context), a prefix past SGLang's one-shot capacity, fp8 weights and mode absorbed do not."""
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    from sglang.srt.models.deepseek_common.attention_forward_methods.forward_methods import AttnForwardMethod

    attn = fake_attn(4, 128, 64, 128)

    def batch(mode, prefix=(0, 4096)):
        return SimpleNamespace(forward_mode=mode, extend_prefix_lens_cpu=list(prefix),
                               get_max_chunk_capacity=lambda: 128 * 1024)

    mha = MLAPrefill(None, "mha")
    assert mha.method(attn, batch(ForwardMode.EXTEND)) == AttnForwardMethod.MHA
    assert mha.method(attn, batch(ForwardMode.EXTEND, (100000, 40000))) == AttnForwardMethod.MLA
    assert mha.method(attn, batch(ForwardMode.MIXED)) == AttnForwardMethod.MLA
    assert mha.method(attn, batch(ForwardMode.DECODE)) == AttnForwardMethod.MLA
    assert MLAPrefill(None, "absorbed").method(attn, batch(ForwardMode.EXTEND)) == AttnForwardMethod.MLA
    attn.w_kc = attn.w_kc.to(torch.float8_e4m3fn)
    assert mha.method(attn, batch(ForwardMode.EXTEND)) == AttnForwardMethod.MLA


class FakeRaggedPrefill:
    """flashinfer.BatchPrefillWithRaggedKVCacheWrapper as its documentation specifies it: plan()
    takes the query and key/value row offsets of each request, run() attends each request's query
    rows over its key rows, causal aligned to the last key (a mask tril(diagonal=kv_len - qo_len))."""

    plans = 0

    def __init__(self, workspace, layout):
        assert layout == "NHD" and workspace.dtype == torch.uint8

    def plan(self, qo_indptr, kv_indptr, num_qo_heads, num_kv_heads, head_dim_qk, head_dim_vo=None, causal=False,
             sm_scale=None, logits_soft_cap=None, q_data_type=None, kv_data_type=None):
        assert qo_indptr.dtype == kv_indptr.dtype == torch.int32 and causal and num_qo_heads == num_kv_heads
        FakeRaggedPrefill.plans += 1
        self.qo, self.kv, self.scale, self.dv = qo_indptr.tolist(), kv_indptr.tolist(), sm_scale, head_dim_vo

    def run(self, q, k, v):
        assert v.shape[-1] == self.dv and k.shape[0] == self.kv[-1] and q.shape[0] == self.qo[-1]
        out = q.new_empty(q.shape[0], q.shape[1], v.shape[-1])
        for i in range(len(self.qo) - 1):
            qi, ki, vi = q[self.qo[i]:self.qo[i + 1]], k[self.kv[i]:self.kv[i + 1]], v[self.kv[i]:self.kv[i + 1]]
            s = torch.einsum("qhd,khd->hqk", qi, ki) * self.scale
            mask = torch.ones(qi.shape[0], ki.shape[0], dtype=torch.bool).tril(ki.shape[0] - qi.shape[0])
            out[self.qo[i]:self.qo[i + 1]] = torch.einsum("hqk,khd->qhd", s.masked_fill(~mask, float("-inf")).softmax(-1), vi)
        return out


def test_flashinfer_path_lays_out_each_request_as_prefix_then_extend(monkeypatch):
    """attend_flashinfer's own part (the GPU kernel is FlashInfer's, run on the H200 only): each
    request's keys are its prefix rows then its extend rows, the indptrs match, the plan is made
    once per batch shape, and the result is the torch loop's."""
    monkeypatch.setitem(__import__("sys").modules, "flashinfer",
                        SimpleNamespace(BatchPrefillWithRaggedKVCacheWrapper=FakeRaggedPrefill))
    gen = torch.Generator().manual_seed(2)
    prefix, extend = [0, 37, 70], [20, 13, 33]
    q, k = torch.randn(66, 4, 192, generator=gen), torch.randn(66, 4, 192, generator=gen)
    v, k_pre, v_pre = torch.randn(66, 4, 128, generator=gen), torch.randn(107, 4, 192, generator=gen), \
        torch.randn(107, 4, 128, generator=gen)
    prefill = MLAPrefill(None, "mha")
    FakeRaggedPrefill.plans = 0
    for _ in range(2):  # two layers of one forward: one plan
        out = prefill.attend_flashinfer(q, k, v, k_pre, v_pre, prefix, extend, 0.07)
    assert FakeRaggedPrefill.plans == 1
    want = MLAPrefill.attend_torch(q, k, v, k_pre, v_pre, prefix, extend, 0.07)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    prefill.attend_flashinfer(q[:20], k[:20], v[:20], k_pre[:0], v_pre[:0], [0], [20], 0.07)
    assert FakeRaggedPrefill.plans == 2


@pytest.mark.parametrize("asked", ["auto", "flashinfer"])
def test_flashinfer_first_failure_falls_back_to_sdpa_only_under_auto(monkeypatch, caplog, asked):
    """auto's FlashInfer (the GPU default) that fails on its first call, e.g. a JIT build on a
    machine without nvcc, hands the prefill to SDPA with a warning; asked for by name, or after it
    has run once, its errors are raised."""
    monkeypatch.setenv("ASYNCTLS_MLA_PREFILL_KERNEL", asked)
    gen = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(9, 2, 64, generator=gen), torch.randn(9, 2, 64, generator=gen), torch.randn(9, 2, 32, generator=gen)
    k_pre, v_pre = torch.randn(5, 2, 64, generator=gen), torch.randn(5, 2, 32, generator=gen)
    args = (q, k, v, k_pre, v_pre, [5], [9], 0.125)
    gpu_runner = SimpleNamespace(device="cuda:0")
    monkeypatch.setattr("asynctls_sglang.adapter.mla_prefill.has_flashinfer", lambda: True)
    prefill = MLAPrefill(gpu_runner, "mha")
    assert prefill.kernel == "flashinfer"

    def broken(*a):
        raise RuntimeError("ninja: build stopped: nvcc not found")

    monkeypatch.setattr(prefill, "attend_flashinfer", broken)
    if asked == "flashinfer":
        with pytest.raises(RuntimeError, match="nvcc"):
            prefill.attend(None, *args)
        return
    with caplog.at_level("WARNING"):
        out = prefill.attend(None, *args)
    assert "runs on torch's SDPA" in caplog.text and prefill.kernel == "sdpa"
    torch.testing.assert_close(out, MLAPrefill.attend_torch(*args), atol=1e-5, rtol=1e-5)
    # once FlashInfer has run, a later failure is an error, not a silent switch
    ok = MLAPrefill(gpu_runner, "mha")
    monkeypatch.setattr(ok, "attend_flashinfer", lambda *a: MLAPrefill.attend_torch(*a))
    ok.attend(None, *args)
    monkeypatch.setattr(ok, "attend_flashinfer", broken)
    with pytest.raises(RuntimeError, match="nvcc"):
        ok.attend(None, *args)
