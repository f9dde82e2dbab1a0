"""PyTorch's side of the projection matmuls (issue 18, item 1): GaLore's down(G) = PᵀG and
up(N) = P·N for an m×n gradient at rank r, in bf16 and in f32 with TF32 on, median of 20 after 5
(CUDA events). One JSON line per (shape, rank, dtype) on stdout.

Usage: python3 scripts/anchors/matmul_anchor.py 4096x11008,4096x4096 512,1024
"""
import json
import sys

import torch


def median_ms(f, iters=20, warmup=5):
    for _ in range(warmup):
        f()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        f()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def main():
    shapes = [tuple(int(x) for x in s.split("x")) for s in sys.argv[1].split(",")]
    ranks = [int(r) for r in sys.argv[2].split(",")]
    torch.backends.cuda.matmul.allow_tf32 = True
    for m, n in shapes:
        for r in ranks:
            for name, dtype in [("bf16", torch.bfloat16), ("tf32", torch.float32)]:
                g = torch.randn(m, n, device="cuda", dtype=dtype)
                p = torch.randn(m, r, device="cuda", dtype=dtype)
                low = torch.randn(r, n, device="cuda", dtype=dtype)
                down = median_ms(lambda: p.t() @ g)
                up = median_ms(lambda: p @ low)
                flop = 2 * m * n * r
                print(json.dumps({"m": m, "n": n, "rank": r, "precision": name,
                                  "down_ms": down, "up_ms": up,
                                  "down_tflops": flop / down / 1e9, "up_tflops": flop / up / 1e9}))


if __name__ == "__main__":
    main()
