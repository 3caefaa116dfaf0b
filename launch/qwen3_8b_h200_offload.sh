#!/usr/bin/env bash
# Qwen3-8B on one H200 with AsyncTLS sparse decode and the offloading engine: the full KV of every
# request in pinned host memory, the GPU holding summaries, index keys, windows and a resident
# block cache, so more long requests run at once than the GPU's KV pool holds (docs/offload.md).
# Host pool: 589824 tokens x 147456 bytes (36 layers x 8 KV heads x 128 x K+V x bf16) = 87 GB of
# page-locked host memory, six 96k requests; it must fit in 90% of the host's available memory
# (start-up error otherwise): lower it on a smaller host. The resident cache takes ~2.45 GB of GPU
# memory per running request (2 x 128 selected blocks + the sink/local blocks, 36 layers), hence 8
# running requests.
# The flags of qwen3_8b_h200.sh (MODEL=path/or/hub-id to override), then these (later flags win).
set -euo pipefail
exec bash "$(dirname "$0")/qwen3_8b_h200.sh" \
  --asynctls-offload true --asynctls-host-pool-tokens 589824 \
  --max-running-requests 8 --cuda-graph-max-bs-decode 8 "$@"
