"""AsyncTLS for SGLang: two-level sparse decode attention and asynchronous KV offloading."""
from __future__ import annotations

__version__ = "0.1.0"
SGLANG_VERSION = "0.5.17"
BACKEND_NAME = "asynctls"
