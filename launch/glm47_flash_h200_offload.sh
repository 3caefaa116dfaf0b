#!/usr/bin/env bash
# GLM-4.7-Flash (MLA) on one H200 with AsyncTLS sparse decode and the offloading engine (see
# qwen3_8b_h200_offload.sh and docs/offload.md). Host pool: 1474560 tokens x 54144 bytes (47 layers
# x one 576-dim latent x bf16) = 80 GB of page-locked host memory, fifteen 96k requests; lower it
# on a host with less memory (start-up error otherwise). The flags of glm47_flash_h200.sh
# (MODEL=path/or/hub-id to override), then these (later flags win).
set -euo pipefail
exec bash "$(dirname "$0")/glm47_flash_h200.sh" \
  --asynctls-offload true --asynctls-host-pool-tokens 1474560 \
  --max-running-requests 16 --cuda-graph-max-bs-decode 16 "$@"
