#!/usr/bin/env bash
# GLM-4.7-Flash (MLA) on one H200 with AsyncTLS sparse decode (absorbed MLA: one 576-dim
# latent head; r = 128 index channels by default). MODEL=path/or/hub-id to override.
set -euo pipefail
MODEL=${MODEL:-zai-org/GLM-4.7-Flash}
exec python -m asynctls_sglang.launch_server \
  --model-path "$MODEL" --trust-remote-code \
  --attention-backend asynctls --page-size 64 \
  --asynctls-token-budget 2048 --asynctls-block-budget 128 \
  --context-length 131072 --mem-fraction-static 0.85 \
  --chunked-prefill-size 16384 --max-running-requests 64 --cuda-graph-max-bs-decode 32 \
  --enable-cache-report "$@"
