#!/usr/bin/env bash
# Qwen3-8B on one H200 with AsyncTLS sparse decode and the offloading engine: the full KV of every
# request in pinned host memory, the GPU holding summaries, index keys, windows and a resident
# block cache, so more long requests run at once than the GPU's KV pool holds (docs/offload.md).
# Host pool: 589824 tokens x 147456 bytes (36 layers x 8 KV heads x 128 x K+V x bf16) = 87 GB of
# page-locked host memory, six 96k requests; it must fit in 90% of the host's available memory
# (start-up error otherwise): lower it on a smaller host. The resident cache takes ~2.6 GB of GPU
# memory per running request (128 selected + window blocks, 36 layers), hence 8 running requests.
# MODEL=path/or/hub-id to override.
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen3-8B}
exec python -m asynctls_sglang.launch_server \
  --model-path "$MODEL" \
  --attention-backend asynctls --page-size 64 \
  --asynctls-token-budget 2048 --asynctls-block-budget 128 --asynctls-block-size 64 \
  --asynctls-offload true --asynctls-host-pool-tokens 589824 \
  --context-length 131072 --mem-fraction-static 0.85 \
  --chunked-prefill-size 16384 --max-running-requests 8 --cuda-graph-max-bs-decode 8 \
  --enable-cache-report "$@"
