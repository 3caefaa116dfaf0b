"""The SGLang-facing half: KV-pool subclasses that keep the AsyncTLS index, and the
`asynctls` attention backend. With asynctls_sglang.patches and launch, the only modules
that import sglang."""
