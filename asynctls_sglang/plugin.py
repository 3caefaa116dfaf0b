"""SGLang plug-in entry point (group ``sglang.srt.plugins``): SGLang calls ``register`` in
every process it starts (launcher, Engine, each scheduler), before it parses arguments or
builds the model, so `--attention-backend asynctls` works with plain SGLang too."""
from __future__ import annotations

import logging

logger = logging.getLogger("asynctls_sglang")
_done = False


def register() -> None:
    global _done
    if _done:
        return
    from asynctls_sglang.patches import apply_all

    apply_all()
    _done = True
    # load_plugins() applies hooks after every plugin ran; a direct call (our launcher, tests)
    # must apply them itself. Idempotent: already-patched targets are skipped.
    from sglang.srt.plugins.hook_registry import HookRegistry

    HookRegistry.apply_hooks()
