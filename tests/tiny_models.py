"""Tiny models with real-scale random weights, written as HF folders for SGLang to load.

Shapes are small (fast on 2 CPU cores) but the attention geometry is the real one: GQA
(Qwen3, 8 query / 2 KV heads, head dim 64) and MLA (DeepSeek-V2 and GLM-4.7-Flash: latent
kv_lora_rank 512 + rope 64, the real latent width, so the 576-dim path is exercised).
Weights are drawn with std 0.1 (HF's 0.02 init makes attention nearly uniform) so that which
tokens are attended changes the output.
"""
from __future__ import annotations

import json
import os

import torch

VOCAB = 512


def _common(layers: int) -> dict:
    return {"vocab_size": VOCAB, "num_hidden_layers": layers, "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "torch_dtype": "float32",
            "bos_token_id": 1, "eos_token_id": 2, "initializer_range": 0.1}


def qwen3_config() -> dict:
    return {**_common(2), "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
            "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 8,
            "num_key_value_heads": 2, "head_dim": 64, "hidden_act": "silu", "rope_theta": 10000.0,
            "attention_bias": False, "use_sliding_window": False, "sliding_window": None,
            "max_window_layers": 2, "rope_scaling": None}


def _mla(arch: str, model_type: str) -> dict:
    return {**_common(2), "architectures": [arch], "model_type": model_type, "hidden_size": 256,
            "intermediate_size": 512, "moe_intermediate_size": 128, "num_attention_heads": 4,
            "num_key_value_heads": 4, "kv_lora_rank": 512, "q_lora_rank": None,
            "qk_nope_head_dim": 64, "qk_rope_head_dim": 64, "v_head_dim": 64, "hidden_act": "silu",
            "rope_theta": 10000.0, "attention_bias": False, "first_k_dense_replace": 1,
            "n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1,
            "n_group": 1, "topk_group": 1, "norm_topk_prob": True, "routed_scaling_factor": 1.0,
            "moe_layer_freq": 1, "scoring_func": "softmax", "topk_method": "greedy",
            "aux_loss_alpha": 0.0, "seq_aux": False}


def deepseek_v2_config() -> dict:
    cfg = _mla("DeepseekV2ForCausalLM", "deepseek_v2")
    # DeepseekV2 on SGLang's CPU path needs yarn rope; factor 1.0 is plain RoPE.
    cfg["rope_scaling"] = {"type": "yarn", "factor": 1.0, "original_max_position_embeddings": 8192,
                           "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
    return cfg


def glm4_moe_lite_config() -> dict:
    cfg = _mla("Glm4MoeLiteForCausalLM", "glm4_moe_lite")
    # q_lora_rank must be set, as in the real GLM-4.7-Flash (768): SGLang 0.5.17's
    # Glm4MoeLiteForCausalLM.load_weights keeps Glm4Moe's GQA mapping ("qkv_proj", "q_proj"),
    # which renames an MLA checkpoint's self_attn.q_proj.weight (q_lora_rank None) to a name
    # the model does not have and drops it without a word: q_proj then stays uninitialised
    # torch.empty memory (zeros or garbage), and two loads of the same folder differ.
    # With a q LoRA the keys are q_a_proj / q_b_proj, which that mapping does not touch.
    cfg.update({"rope_scaling": None, "topk_method": "noaux_tc", "scoring_func": "sigmoid",
                "partial_rotary_factor": 1.0, "q_lora_rank": 128})
    return cfg


CONFIGS = {"qwen3": qwen3_config, "deepseek_v2": deepseek_v2_config, "glm4_moe_lite": glm4_moe_lite_config}

# GPU tests: head dims whose FlashInfer kernels (bf16, 128/128: decode, paged and ragged prefill)
# the device carry's JIT cache holds, so a fresh H200 does not build them (head dim 64 took more
# than 170 s of a device call in session 14). MLA: the MHA-form prefill runs FlashInfer's ragged
# prefill at qk_nope + rope = 128 for Q/K and v_head_dim for V.
GPU_SHAPES = {"qwen3": {"head_dim": 128}, "deepseek_v2": {"v_head_dim": 128},
              "glm4_moe_lite": {"v_head_dim": 128}}


def write_tiny_model(kind: str, path: str, seed: int = 0, **overrides) -> str:
    """Write (once) an HF folder for a tiny model of the given kind; returns the path.
    overrides replace config fields (GPU tests: GPU_SHAPES)."""
    if os.path.exists(os.path.join(path, "model.safetensors")):
        return path
    import transformers
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    cfg_dict = CONFIGS[kind]()
    unknown = sorted(set(overrides) - set(cfg_dict))
    if unknown:
        raise KeyError(f"not fields of the {kind} config: {unknown}")
    cfg_dict.update(overrides)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=1)
    config = transformers.AutoConfig.from_pretrained(path)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for name, tensor in state.items():
            if tensor.dim() >= 2 and "norm" not in name:
                tensor.normal_(0.0, 0.1)
            elif "norm" in name:
                tensor.fill_(1.0)
            else:  # biases, e.g. GLM's e_score_correction_bias (left uninitialised by from_config)
                tensor.zero_()
    save_file(_per_expert(state), os.path.join(path, "model.safetensors"))
    return path


def _per_expert(state: dict) -> dict:
    """transformers 5 saves MoE experts fused (experts.gate_up_proj [E, 2I, H], experts.down_proj
    [E, H, I]); SGLang's loaders read one tensor per expert and would silently leave the fused
    ones unloaded (uninitialised memory: non-deterministic outputs). Write them per expert."""
    out = {}
    for name, tensor in state.items():
        if name.endswith("experts.gate_up_proj"):
            stem = name[: -len("gate_up_proj")]
            half = tensor.shape[1] // 2
            for e in range(tensor.shape[0]):
                out[f"{stem}{e}.gate_proj.weight"] = tensor[e, :half].contiguous()
                out[f"{stem}{e}.up_proj.weight"] = tensor[e, half:].contiguous()
        elif name.endswith("experts.down_proj"):
            stem = name[: -len("down_proj")]
            for e in range(tensor.shape[0]):
                out[f"{stem}{e}.down_proj.weight"] = tensor[e].contiguous()
        else:
            out[name] = tensor
    return out
