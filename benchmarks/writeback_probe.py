"""Device->host (write-through) and host->device whole-block copies through copy_blocks with
different program counts (gather_host.PROGRAMS): GB/s per direction. Prints one JSON line each."""
import json

import torch

from asynctls_sglang.kernels.common import gather_host

dev = torch.device("cuda")
n, b, hk, d = 1024, 64, 8, 128
host = [torch.zeros(n * b, hk, d, dtype=torch.bfloat16).pin_memory() for _ in range(2)]
devb = [torch.randn(n * b, hk, d, dtype=torch.bfloat16, device=dev) for _ in range(2)]
idx = torch.randperm(n, device=dev)
cnt = torch.tensor([n], device=dev)
for programs in (32, 128, 1024):
    gather_host.PROGRAMS = programs
    for name, (s, t) in (("d2h", (devb, host)), ("h2d", (host, devb))):
        gather_host.copy_blocks(s[0], t[0], idx, idx, cnt, b, pair=(s[1], t[1]))
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(3):
            gather_host.copy_blocks(s[0], t[0], idx, idx, cnt, b, pair=(s[1], t[1]))
        e1.record()
        torch.cuda.synchronize()
        ms = e0.elapsed_time(e1) / 3
        print(json.dumps({"programs": programs, "dir": name, "ms": round(ms, 2),
                          "GB_s": round(2 * n * b * hk * d * 2 / ms / 1e6, 1)}), flush=True)
