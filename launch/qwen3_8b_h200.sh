#!/usr/bin/env bash
# Qwen3-8B on one H200 with AsyncTLS sparse decode. MODEL=path/or/hub-id to override.
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen3-8B}
exec python -m asynctls_sglang.launch_server \
  --model-path "$MODEL" \
  --attention-backend asynctls --page-size 64 \
  --asynctls-token-budget 2048 --asynctls-block-budget 128 --asynctls-block-size 64 \
  --context-length 131072 --mem-fraction-static 0.85 \
  --chunked-prefill-size 16384 --max-running-requests 64 --cuda-graph-max-bs-decode 32 \
  --enable-cache-report "$@"
