"""Batched AsyncTLS decode ops over SGLang's paged KV pool, with fixed shapes.

``torch_ops`` is the plain-torch implementation (the CPU path, and the specification the
Triton kernels in asynctls_sglang.kernels are tested against besides the reference);
``dispatch`` picks the Triton kernels when the tensors live on a GPU.

Notation (all ops): bs requests; Hq/Hk query/KV heads, G = Hq // Hk; D key dim, Dv value dim;
B block size = SGLang page size; MB = blocks per request in the block table; k_b block budget;
K token budget. ``req_to_token`` [rows, max_context] int32 maps (request row, position) to a
KV slot; a slot's page (block) is slot // B. Logical positions/blocks are per request.
"""
