"""Validate the AsyncTLS configuration where SGLang validates its own arguments, in the
process that parses them (sglang.launch_server, sglang.Engine), before any scheduler starts:
a bad ASYNCTLS_CONFIG or a page size other than the block size stops start-up at once with
the flag named, instead of a scheduler failing later (or, worse, a server computing something
else); offload settings given without offload are named in a warning. SGLang's plug-in loader
swallows exceptions from plug-ins, so this cannot live in register()."""
from __future__ import annotations

from sglang.srt.plugins.hook_registry import HookRegistry, HookType

from asynctls_sglang.patches.kv_pool import uses_asynctls


def _post_init(original, self, *args, **kwargs):
    result = original(self, *args, **kwargs)
    if uses_asynctls(self):
        from asynctls_sglang.config import AsyncTLSConfig, ConfigError, flag_name

        cfg = AsyncTLSConfig.from_env()
        if self.page_size is not None and self.page_size != cfg.block_size:
            raise ConfigError(f"asynctls needs --page-size equal to {flag_name('block_size')} "
                              f"({self.page_size} != {cfg.block_size})")
        if getattr(self, "speculative_algorithm", None):
            raise ConfigError("asynctls does not support speculative decoding")
        if cfg.offload and getattr(self, "enable_mixed_chunk", False):
            raise ConfigError(f"{flag_name('offload')} does not support --enable-mixed-chunk (decode rows "
                              "in a prefill batch would read KV that lives on the host)")
        ignored = cfg.ignored_offload_settings()
        if ignored:
            import logging

            logging.getLogger(__name__).warning(
                "asynctls: %s only act with %s true; offload is off, so they are ignored",
                ", ".join(flag_name(n) for n in ignored), flag_name("offload"))
        device = getattr(self, "device", None)
        if device and cfg.dense_backend != "auto":
            # a named dense_backend against the device (GPU kernels on a CPU, FlashInfer not
            # installed); auto never refuses, so the launcher does not import FlashInfer for it
            from asynctls_sglang.adapter.backend import dense_base_name

            dense_base_name(cfg, str(device), is_mla=False)  # MLA-only refusals: at backend start
    return result


def apply() -> None:
    HookRegistry.register("sglang.srt.server_args.ServerArgs.__post_init__", _post_init, HookType.AROUND)
