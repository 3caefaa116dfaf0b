"""Make `asynctls` a valid --attention-backend (CLI choices) and register its factory.

Both must happen in every process: argparse checks the choices in the launcher, and each
spawned scheduler looks the factory up in ATTENTION_BACKENDS.
"""
from __future__ import annotations

from asynctls_sglang import BACKEND_NAME


def apply() -> None:
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS, register_attention_backend
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES, add_attention_backend_choices

    if BACKEND_NAME not in ATTENTION_BACKEND_CHOICES:
        add_attention_backend_choices([BACKEND_NAME])
    if BACKEND_NAME not in ATTENTION_BACKENDS:
        def create(runner):
            from asynctls_sglang.adapter.backend import create_backend

            return create_backend(runner)

        register_attention_backend(BACKEND_NAME)(create)
