"""Whether cuBLAS's time for the GaLore products at an odd width (n = 5461) depends on the
product's extent rather than on the rows' alignment, measured with PyTorch on the GPU (CUDA
events, medians of 50). Each operand of width n lives in a buffer of width n_pad = n rounded up
to 64 (a pitched row, as CubeCL allocates it); the products are timed on views of width n (what
a pitched tensor of n columns is) and on the full width n_pad (the extra columns computed and
discarded): the down product R = PᵀG and the update W ← β·W + α·P·N (addmm_ in place). TF32 (f32)
and bf16. Prints JSON lines. Usage: python3 extent_probe.py OUT_JSONL"""
import json, sys
import torch

from cuda_timing import timed

torch.backends.cuda.matmul.allow_tf32 = True
dev = torch.device("cuda")


out = open(sys.argv[1], "a")
for dtype in (torch.float32, torch.bfloat16):
    for (m, n, r) in ((2048, 5461, 512), (2048, 5461, 128), (2048, 5461, 1024), (4096, 11008, 512)):
        n_pad = (n + 63) // 64 * 64
        p = torch.randn(m, r, device=dev, dtype=dtype)
        g = torch.randn(m, n_pad, device=dev, dtype=dtype)
        w = torch.randn(m, n_pad, device=dev, dtype=dtype)
        nn = torch.randn(r, n_pad, device=dev, dtype=dtype)
        row = {"what": "odd_extent", "dtype": str(dtype), "m": m, "n": n, "n_pad": n_pad, "rank": r,
               "down_view_us": timed(lambda: torch.mm(p.t(), g[:, :n])),
               "down_full_us": timed(lambda: torch.mm(p.t(), g)),
               "update_view_us": timed(lambda: w[:, :n].addmm_(p, nn[:, :n], beta=0.999, alpha=-1e-3)),
               "update_full_us": timed(lambda: w.addmm_(p, nn, beta=0.999, alpha=-1e-3))}
        print(json.dumps(row), flush=True)
        out.write(json.dumps(row) + "\n")
