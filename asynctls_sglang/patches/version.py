"""The patches read SGLang internals of one release; refuse to run against another."""
from __future__ import annotations

from asynctls_sglang import SGLANG_VERSION


class SGLangVersionError(ImportError):
    pass


def check_sglang_version() -> None:
    import sglang

    found = getattr(sglang, "__version__", "unknown")
    if found != SGLANG_VERSION:
        raise SGLangVersionError(
            f"asynctls_sglang supports sglang=={SGLANG_VERSION} only; sglang {found} is installed "
            f"(pip install sglang=={SGLANG_VERSION})")
