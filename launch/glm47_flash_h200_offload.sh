#!/usr/bin/env bash
# GLM-4.7-Flash (MLA) on one H200 with AsyncTLS sparse decode and the offloading engine (see
# qwen3_8b_h200_offload.sh and docs/offload.md). Host pool: 1474560 tokens x 54144 bytes (47 layers
# x one 576-dim latent x bf16) = 80 GB of page-locked host memory, fifteen 96k requests; lower it
# on a host with less memory (start-up error otherwise). MODEL=path/or/hub-id to override.
set -euo pipefail
MODEL=${MODEL:-zai-org/GLM-4.7-Flash}
exec python -m asynctls_sglang.launch_server \
  --model-path "$MODEL" --trust-remote-code \
  --attention-backend asynctls --page-size 64 \
  --asynctls-token-budget 2048 --asynctls-block-budget 128 \
  --asynctls-offload true --asynctls-host-pool-tokens 1474560 \
  --context-length 131072 --mem-fraction-static 0.85 \
  --chunked-prefill-size 16384 --max-running-requests 16 --cuda-graph-max-bs-decode 16 \
  --enable-cache-report "$@"
