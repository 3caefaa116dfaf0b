"""Device-side state kept next to the KV cache: block summaries and INT4 index keys
(index_store); the host tier and the offloading engine build on it."""
