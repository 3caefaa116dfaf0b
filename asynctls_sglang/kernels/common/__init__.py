"""Kernels shared by GQA and MLA layers (MLA is Hk = 1, D = kv_lora_rank + rope_dim)."""
