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
