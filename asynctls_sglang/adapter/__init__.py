"""The SGLang-facing half: KV-pool subclasses that keep the AsyncTLS index, and the
`asynctls` attention backend. With asynctls_sglang.patches and launch, the only modules
that import sglang. Importing it checks the installed SGLang release (the pools and the
backend subclass SGLang internals of exactly one release)."""
from asynctls_sglang.patches.version import check_sglang_version

check_sglang_version()
